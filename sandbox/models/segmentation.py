"""Segmentation models on the shared core: SimpleConv, HourGlass and UNet.

All three are ``SegmentationModel(Encoder, Decoder, Heads)``; they differ only in the
core's options, which is the point of the comparison:

    simpleconv  no down/upsampling: full resolution, small receptive field (naive baseline)
    hourglass   pooling encoder, transposed-conv decoder, NO skips (the seed's bottleneck net)
    unet        the same, with concatenated skips (Ronneberger et al. 2015)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sandbox.errors import SandboxError
from sandbox.models import MODELS
from sandbox.nn.core import Decoder, Encoder
from sandbox.nn.heads import Heads


class SegmentationModel(nn.Module):
    """``forward(x: (B, C, H, W) in [0, 1]) -> {target: logits (B, K, H, W)}``.

    The input is standardised inside the model (``(x - mean) / std``) so that data, plots
    and predictions all stay in [0, 1] image space.
    """

    kind = "segmentation"

    def __init__(self, encoder: Encoder, decoder: Decoder, targets: dict[str, int],
                 mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.heads = Heads(decoder.out_channels, targets)
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    @property
    def targets(self) -> list[str]:
        return list(self.heads.heads.keys())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder((x - self.mean) / self.std)
        return self.heads(self.decoder(feats))


def _widths(width: int, widths: Sequence[int] | None, depth: int, grow: bool = True) -> list[int]:
    if widths is not None:
        if len(widths) != depth + 1:
            raise SandboxError(f"widths {list(widths)} must have depth + 1 = {depth + 1} entries")
        return list(widths)
    return [width * 2**i if grow else width for i in range(depth + 1)]


def _build(targets: dict[str, int] | None, in_channels: int, widths: list[int], skip: str, upsample: str,
           downsample: str, blocks: int, block: str, norm: str, dilation: int, dropout: float) -> SegmentationModel:
    enc = Encoder(in_channels, widths, blocks, downsample, block, dilation, norm, dropout)
    dec = Decoder(enc.out_channels, widths, skip, upsample, blocks, block, norm, dilation)
    return SegmentationModel(enc, dec, targets or {"mask": 1})


@MODELS.register("unet")
def unet(targets: dict[str, int] | None = None, in_channels: int = 3, width: int = 16,
         widths: Sequence[int] | None = None, depth: int = 3, blocks: int = 2, block: str = "plain",
         norm: str = "batch", upsample: str | None = None, skip: str | None = None,
         downsample: str | None = None, dilation: int = 1, dropout: float = 0.0) -> SegmentationModel:
    """UNet: pooling encoder, transposed-conv decoder, concatenated skips."""
    return _build(targets, in_channels, _widths(width, widths, depth), skip or "concat", upsample or "transpose",
                  downsample or "maxpool", blocks, block, norm, dilation, dropout)


@MODELS.register("hourglass")
def hourglass(targets: dict[str, int] | None = None, in_channels: int = 3, width: int = 16,
              widths: Sequence[int] | None = None, depth: int = 3, blocks: int = 2, block: str = "plain",
              norm: str = "batch", upsample: str | None = None, skip: str | None = None,
              downsample: str | None = None, dilation: int = 1, dropout: float = 0.0) -> SegmentationModel:
    """HourGlass: the UNet without skips; everything passes through the bottleneck."""
    return _build(targets, in_channels, _widths(width, widths, depth), skip or "none", upsample or "transpose",
                  downsample or "maxpool", blocks, block, norm, dilation, dropout)


@MODELS.register("simpleconv")
def simpleconv(targets: dict[str, int] | None = None, in_channels: int = 3, width: int = 16,
               widths: Sequence[int] | None = None, depth: int = 3, blocks: int = 2, block: str = "plain",
               norm: str = "batch", upsample: str | None = None, skip: str | None = None,
               downsample: str | None = None, dilation: int = 1, dropout: float = 0.0) -> SegmentationModel:
    """SimpleConv: ``2 * (depth + 1)`` stages at full resolution and constant width; no resizing."""
    if upsample not in (None, "none") or downsample not in (None, "none"):
        raise SandboxError("simpleconv never resizes: leave model.upsample and model.downsample unset")
    return _build(targets, in_channels, _widths(width, widths, depth, grow=False), skip or "none", "none",
                  "none", blocks, block, norm, dilation, dropout)


simpleconv.downsamples = False  # read by config validation: any data.size works
