"""The shared core: one Encoder and one Decoder reused by every model in the sandbox.

    x ──Stage──> f0 ──down,Stage──> f1 ── ... ──> f_d   (Encoder: fine to coarse)
                  ╰──────── skip ─────╮                (Decoder: coarse to fine)
    out <──Stage── up(f_d) (+ f_{d-1}) <── ...

``skip="none"`` is the HourGlass (the seed's bottleneck network), ``"concat"`` the UNet,
``"add"`` a LinkNet-style sum; ``downsample="none"`` with ``upsample="none"`` is SimpleConv.
``emb_dim`` makes every conv block time-conditioned (:mod:`sandbox.nn.timestep`, the ``ddpm`` and
``flow`` models); left unset, the modules, keys and outputs are those of the unconditioned core.
Any encoder that returns such a list (``.out_channels``, ``.depth``, ``.reduction``) plugs
into the Decoder: see :mod:`sandbox.nn.resnet` for the torchvision ResNet-18.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sandbox.errors import SandboxError
from sandbox.nn.attention import SelfAttention2d
from sandbox.nn.blocks import Stage, make_downsample, make_upsample
from sandbox.nn.timestep import Modulation, modulation


def stage_widths(width: int, widths: Sequence[int] | None, depth: int, grow: bool = True) -> list[int]:
    """Per-stage widths, ``depth + 1`` of them: explicit ``widths``, else ``width * 2**i`` (or
    ``width`` at every stage with ``grow=False``, as SimpleConv keeps it)."""
    if widths is not None:
        return list(widths)
    return [width * 2**i if grow else width for i in range(depth + 1)]


class Encoder(nn.Module):
    """``forward(x: (B, C, H, W)) -> [f0, ..., f_depth]``, fine to coarse.

    ``f_i: (B, widths[i], H / 2**i, W / 2**i)`` with pooling (``H`` for ``downsample="none"``);
    the last element is the bottleneck. ``len(widths) = depth + 1``. ``attention=True`` ends the
    bottleneck with self-attention over its pixels (:mod:`sandbox.nn.attention`; the identity at init).
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128), blocks: int = 2,
                 downsample: str = "maxpool", block: str = "plain", dilation: int = 1, norm: str = "batch",
                 dropout: float = 0.0, emb_dim: int | None = None, attention: bool = False):
        super().__init__()
        widths = list(widths)
        if not widths:
            raise SandboxError("Encoder needs at least one width")
        self.in_channels, self.downsample = in_channels, downsample
        self.down = nn.ModuleList(
            [nn.Identity()] + [make_downsample(downsample, widths[i - 1]) for i in range(1, len(widths))])
        self.stages = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            # dropout only in the two coarsest stages, where it regularises without erasing detail
            drop = dropout if i >= len(widths) - 2 else 0.0
            self.stages.append(Stage(cin, w, blocks, block, norm, dilation, drop, emb_dim))
            cin = w
        self.out_channels = widths
        if attention:  # set only when asked, so the keys of a net without it are what they always were
            self.attention = SelfAttention2d(widths[-1], norm=norm, emb_dim=emb_dim)

    @property
    def depth(self) -> int:
        return len(self.out_channels) - 1

    @property
    def reduction(self) -> int:
        """Side of the input divided by side of the bottleneck."""
        return 1 if self.downsample == "none" else 2**self.depth

    def forward(self, x: torch.Tensor, emb: torch.Tensor | Modulation | None = None) -> list[torch.Tensor]:
        """``emb``: a time embedding ``(B, emb_dim)`` when built with ``emb_dim`` (see :mod:`sandbox.nn.timestep`),
        or the :class:`~sandbox.nn.timestep.Modulation` of an enclosing net."""
        emb = None if emb is None else modulation(self, emb)  # every block's scale-shift in one matmul
        feats = []
        for down, stage in zip(self.down, self.stages):
            x = stage(down(x), emb)
            feats.append(x)
        if hasattr(self, "attention"):  # the bottleneck's pixels attend to each other
            feats[-1] = self.attention(feats[-1], emb)
        return feats


class Decoder(nn.Module):
    """``forward(features: [f0, ..., f_d]) -> (B, widths[0], H, W)`` at the finest resolution.

    ``encoder_channels``: the Encoder's ``out_channels``; ``widths``: decoder widths per level
    (default: the encoder's; ``widths[-1]`` is unused, the bottleneck keeps the encoder's width);
    ``skip``: none | concat | add (``add`` sums a 1x1 projection of the skip where its width
    differs from the decoder's); ``upsample``: transpose | pixel_shuffle | bilinear | none
    (``none`` keeps the resolution, for SimpleConv).
    """

    def __init__(self, encoder_channels: Sequence[int], widths: Sequence[int] | None = None, skip: str = "concat",
                 upsample: str = "transpose", blocks: int = 2, block: str = "plain", norm: str = "batch",
                 dilation: int = 1, emb_dim: int | None = None):
        super().__init__()
        enc = list(encoder_channels)
        widths = list(widths) if widths is not None else enc
        if len(widths) != len(enc):
            raise SandboxError(f"Decoder widths {widths} must have one entry per encoder level ({len(enc)})")
        if skip not in ("none", "concat", "add"):
            raise SandboxError(f"unknown skip {skip!r}; accepted: none, concat, add")
        self.skip = skip
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.projs = nn.ModuleList()  # add-skips only: encoder width -> decoder width
        cin = enc[-1]
        for i in range(len(enc) - 2, -1, -1):  # coarse to fine
            self.ups.append(make_upsample(upsample, cin, widths[i]))
            stage_in = widths[i] + enc[i] if skip == "concat" else widths[i]
            if skip == "add":
                self.projs.append(nn.Identity() if enc[i] == widths[i] else nn.Conv2d(enc[i], widths[i], 1, bias=False))
            self.stages.append(Stage(stage_in, widths[i], blocks, block, norm, dilation, emb_dim=emb_dim))
            cin = widths[i]
        self.out_channels = cin

    def forward(self, features: list[torch.Tensor], emb: torch.Tensor | Modulation | None = None) -> torch.Tensor:
        """``features: [f0 (B, C0, H, W), ..., f_d (B, C_d, H / 2**d, W / 2**d)] -> (B, widths[0], H, W)``;
        ``emb``: the time embedding of a time-conditioned decoder (built with ``emb_dim``), or the
        :class:`~sandbox.nn.timestep.Modulation` of an enclosing net."""
        emb = None if emb is None else modulation(self, emb)
        x = features[-1]
        for j, (up, stage) in enumerate(zip(self.ups, self.stages)):
            x = up(x)
            skip = features[-2 - j]
            if self.skip == "concat":
                x = torch.cat([x, skip], dim=1)
            elif self.skip == "add":
                x = x + self.projs[j](skip)
            x = stage(x, emb)
        return x
