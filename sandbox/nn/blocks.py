"""Building blocks: conv/norm/act, plain and residual stages, down- and upsampling."""
from __future__ import annotations

import torch
from torch import nn

from sandbox.errors import SandboxError
from sandbox.nn.timestep import Modulation, ScaleShift


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
    """3x3 conv -> norm -> ReLU. ``x: (B, Cin, H, W) -> (B, Cout, H, W)``.

    ``emb_dim``: a time embedding of this width conditions the block through a zero-initialised
    scale-shift after the norm (``forward(x, emb)``, :class:`~sandbox.nn.timestep.ScaleShift`);
    without it the block has exactly the modules and keys it always had (``0``, ``1``, ``2``).
    """

    def __init__(self, cin: int, cout: int, norm: str = "batch", dilation: int = 1, kernel: int = 3,
                 emb_dim: int | None = None):
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=norm == "none"),
            make_norm(norm, cout),
            nn.ReLU(inplace=True),
        )
        if emb_dim:  # set after the Sequential's layers, so forward (not iteration) is the one way in
            self.film = ScaleShift(emb_dim, cout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | Modulation | None = None) -> torch.Tensor:
        x = self[1](self[0](x))
        if emb is not None:
            x = self.film(x, emb)
        return self[2](x)


class Stage(nn.Module):
    """``blocks`` convolutions at one resolution, plain or residual.

    ``x: (B, Cin, H, W) -> (B, Cout, H, W)``. The residual form adds a 1x1 projection of
    the input when the channel count changes (He et al. 2016, "pre-addition" variant).
    """

    def __init__(self, cin: int, cout: int, blocks: int = 2, block: str = "plain", norm: str = "batch",
                 dilation: int = 1, dropout: float = 0.0, emb_dim: int | None = None):
        super().__init__()
        if block not in ("plain", "residual"):
            raise SandboxError(f"unknown block {block!r}; accepted: plain, residual")
        layers = [ConvNormAct(cin if i == 0 else cout, cout, norm, dilation, emb_dim=emb_dim) for i in range(blocks)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        self.body = nn.Sequential(*layers)
        self.residual = block == "residual"
        if self.residual:
            self.proj = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | Modulation | None = None) -> torch.Tensor:
        """``emb``: the time embedding ``(B, E)`` of a time-conditioned stage (``emb_dim`` set), or the
        :class:`~sandbox.nn.timestep.Modulation` of an enclosing net, else None."""
        if emb is None:
            y = self.body(x)
        else:
            y = x
            for layer in self.body:
                y = layer(y, emb) if isinstance(layer, ConvNormAct) else layer(y)
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


def icnr_(conv: nn.Conv2d, scale: int = 2) -> nn.Conv2d:
    """ICNR init (Aitken et al. 2017) for a conv that feeds ``PixelShuffle(scale)``.

    PixelShuffle builds output channel ``c`` from input channels ``c*s*s .. c*s*s + s*s - 1``;
    giving those ``s*s`` sub-kernels the same values makes conv + shuffle equal to
    conv + nearest upsampling at init, so the output starts without a checkerboard.
    """
    cout = conv.out_channels // scale**2
    ref = nn.Conv2d(conv.in_channels, cout, conv.kernel_size, padding=conv.padding, bias=conv.bias is not None)
    with torch.no_grad():  # same fan-in as ``conv``, so the default init keeps its scale
        conv.weight.copy_(ref.weight.repeat_interleave(scale**2, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(ref.bias.repeat_interleave(scale**2, dim=0))
    return conv


def make_upsample(kind: str, cin: int, cout: int, icnr: bool = True) -> nn.Module:
    """Double H and W while mapping ``cin -> cout`` channels: ``(B, cin, H, W) -> (B, cout, 2H, 2W)``.

    ``transpose``: ConvTranspose2d(k=2, s=2) (the seed's choice; prone to checkerboards);
    ``transpose_k4``: k=4, s=2, padding 1 (DCGAN's generator layer: every output pixel sums 2 x 2 taps);
    ``transpose_k3``: k=3, s=2, padding 1, output_padding 1 (the kernel does not divide by the stride, so
    an even output row or column gets 1 tap and an odd one 2: the checkerboard of Odena et al. 2016);
    ``pixel_shuffle``: 3x3 conv to 4*cout then PixelShuffle(2) (Shi et al. 2016), ICNR-initialised
    unless ``icnr=False``; ``bilinear``: bilinear x2 then 3x3 conv; ``none``: a 1x1 conv, no
    resizing (SimpleConv).
    """
    if kind == "transpose":
        return nn.ConvTranspose2d(cin, cout, 2, stride=2)
    if kind == "transpose_k4":  # out = (H - 1) * 2 - 2 * 1 + 4 = 2H
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    if kind == "transpose_k3":  # out = (H - 1) * 2 - 2 * 1 + 3 + 1 = 2H
        return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    if kind == "pixel_shuffle":
        conv = nn.Conv2d(cin, 4 * cout, 3, padding=1)
        return nn.Sequential(icnr_(conv) if icnr else conv, nn.PixelShuffle(2))
    if kind == "bilinear":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                             nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "none":
        return nn.Conv2d(cin, cout, 1)
    raise SandboxError(f"unknown upsample {kind!r}; accepted: transpose, transpose_k4, transpose_k3, "
                       "pixel_shuffle, bilinear, none")
