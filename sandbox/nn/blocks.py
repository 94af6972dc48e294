"""Building blocks: conv/norm/act, plain and residual stages, down- and upsampling."""
from __future__ import annotations

from torch import nn

from sandbox.errors import SandboxError


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 8 groups where the width allows it; GroupNorm(1) (layer norm) for tiny widths.
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise SandboxError(f"unknown norm {kind!r}; accepted: batch, group, none")


class ConvNormAct(nn.Sequential):
    """3x3 conv -> norm -> ReLU. ``x: (B, Cin, H, W) -> (B, Cout, H, W)``."""

    def __init__(self, cin: int, cout: int, norm: str = "batch", dilation: int = 1, kernel: int = 3):
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=norm == "none"),
            make_norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class Stage(nn.Module):
    """``blocks`` convolutions at one resolution, plain or residual.

    ``x: (B, Cin, H, W) -> (B, Cout, H, W)``. The residual form adds a 1x1 projection of
    the input when the channel count changes (He et al. 2016, "pre-addition" variant).
    """

    def __init__(self, cin: int, cout: int, blocks: int = 2, block: str = "plain", norm: str = "batch",
                 dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        if block not in ("plain", "residual"):
            raise SandboxError(f"unknown block {block!r}; accepted: plain, residual")
        layers = [ConvNormAct(cin if i == 0 else cout, cout, norm, dilation) for i in range(blocks)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        self.body = nn.Sequential(*layers)
        self.residual = block == "residual"
        if self.residual:
            self.proj = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        y = self.body(x)
        return y + self.proj(x) if self.residual else y


def make_downsample(kind: str, channels: int) -> nn.Module:
    """Halve H and W (or not, for ``none``). ``(B, C, H, W) -> (B, C, H/2, W/2)``."""
    if kind == "maxpool":
        return nn.MaxPool2d(2)
    if kind == "stride":
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    if kind == "none":
        return nn.Identity()
    raise SandboxError(f"unknown downsample {kind!r}; accepted: maxpool, stride, none")


def make_upsample(kind: str, cin: int, cout: int) -> nn.Module:
    """Double H and W while mapping ``cin -> cout`` channels.

    ``transpose``: ConvTranspose2d(k=2, s=2) (the seed's choice; prone to checkerboards);
    ``pixel_shuffle``: 1x1 conv to 4*cout then PixelShuffle(2) (Shi et al. 2016);
    ``bilinear``: bilinear x2 then 3x3 conv; ``none``: a 1x1 conv, no resizing.
    """
    if kind == "transpose":
        return nn.ConvTranspose2d(cin, cout, 2, stride=2)
    if kind == "pixel_shuffle":
        return nn.Sequential(nn.Conv2d(cin, 4 * cout, 1), nn.PixelShuffle(2))
    if kind == "bilinear":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                             nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "none":
        return nn.Conv2d(cin, cout, 1)
    raise SandboxError(f"unknown upsample {kind!r}; accepted: transpose, pixel_shuffle, bilinear, none")
