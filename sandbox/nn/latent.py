"""The core Encoder and Decoder around a flat latent vector: what every generative model is built of.

    x ──core Encoder──> f_d (C, h, w) ──flatten──> Linear ──> code
    z ──Linear──> (C, h, w) ──core Decoder (skip="none")──> 1x1 conv ──> logits

The flatten size ``C * h * w`` is measured by running the encoder once on a zero image of the
model's side at construction, never hard-coded.
"""
from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from sandbox.errors import SandboxError
from sandbox.nn.core import Decoder, Encoder


class ImageEncoder(nn.Module):
    """Core Encoder + flatten + Linear: ``x: (B, C, S, S) in [0, 1] -> (B, out_dim)``.

    ``bottleneck``: the ``(C, h, w)`` shape measured on a zero image of side ``size``.
    """

    def __init__(self, in_channels: int, size: int, out_dim: int, widths: Sequence[int], blocks: int = 2,
                 downsample: str = "maxpool", block: str = "plain", dilation: int = 1, norm: str = "batch",
                 dropout: float = 0.0):
        super().__init__()
        self.core = Encoder(in_channels, widths, blocks, downsample, block, dilation, norm, dropout)
        self.size = size
        with torch.no_grad():
            was = self.core.training
            self.core.eval()  # a dry run must not touch BatchNorm statistics
            self.bottleneck = tuple(self.core(torch.zeros(1, in_channels, size, size))[-1].shape[1:])
            self.core.train(was)
        self.flat = int(torch.tensor(self.bottleneck).prod())
        self.head = nn.Linear(self.flat, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise SandboxError(f"input of {x.shape[-2]}x{x.shape[-1]} px; this model was built for "
                               f"{self.size}x{self.size} (model.size / data.size)")
        f = self.core((x - 0.5) / 0.25)[-1]  # standardised inside, as the segmentation models do
        return self.head(rearrange(f, "b c h w -> b (c h w)"))


class ImageDecoder(nn.Module):
    """Linear + reshape + core Decoder without skips + 1x1 conv: ``z: (B, latent_dim) -> logits (B, C, S, S)``."""

    def __init__(self, latent_dim: int, bottleneck: tuple[int, int, int], out_channels: int, widths: Sequence[int],
                 upsample: str = "transpose", blocks: int = 2, block: str = "plain", norm: str = "batch",
                 dilation: int = 1):
        super().__init__()
        self.latent_dim, self.bottleneck = latent_dim, tuple(bottleneck)
        c, h, w = self.bottleneck
        self.project = nn.Sequential(nn.Linear(latent_dim, c * h * w), nn.ReLU(inplace=True))
        self.core = Decoder(widths, widths, "none", upsample, blocks, block, norm, dilation)
        self.depth = len(widths) - 1
        self.out = nn.Conv2d(self.core.out_channels, out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise SandboxError(f"latent codes of shape {tuple(z.shape)} do not fit this decoder; expected "
                               f"(N, {self.latent_dim}) (model.latent_dim={self.latent_dim})")
        c, h, w = self.bottleneck
        f = rearrange(self.project(z), "b (c h w) -> b c h w", c=c, h=h, w=w)
        # skip="none": the Decoder reads only the last feature; the finer levels are placeholders
        return self.out(self.core([None] * self.depth + [f]))
