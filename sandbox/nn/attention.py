"""Self-attention over the pixels of a feature map: the one attention block of the shared core.

    x (B, C, H, W) ──GroupNorm──(scale-shift by emb)──> 1x1 qkv ──heads: softmax(q k^T / sqrt(d)) v──> 1x1 out ──(+ x)

The H * W pixels are the tokens (16 at a 4 x 4 bottleneck, 64 at 8 x 8), so its cost is small where the
core puts it: after the Encoder's last stage (``Encoder(attention=True)``), as the middle block of the
diffusion UNets of Ho et al. 2020 and lucidrains' denoising-diffusion-pytorch. It lets every pixel of the
coarsest map see every other one, which convolutions there reach only through a few 3 x 3 taps.

The output projection starts at zero weights and bias, so a freshly built block is the identity for every
input and time: adding it to a network changes nothing until training moves it (as the time
conditioning's zero-initialised scale-shift, :mod:`sandbox.nn.timestep`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.errors import SandboxError
from sandbox.nn.blocks import make_norm
from sandbox.nn.timestep import Modulation, ScaleShift


class SelfAttention2d(nn.Module):
    """``forward(x: (B, C, H, W), emb=None) -> (B, C, H, W)``: ``x`` plus multi-head self-attention over its
    ``H * W`` pixels. ``heads`` must divide ``channels``; ``emb_dim``: the time embedding's width, which
    scale-shifts the normalised input as in every conv block of a time-conditioned core."""

    def __init__(self, channels: int, heads: int = 4, norm: str = "group", emb_dim: int | None = None):
        super().__init__()
        heads = min(heads, channels)
        if channels % heads:
            raise SandboxError(f"attention over {channels} channels cannot split into {heads} heads; "
                               "use a bottleneck width divisible by 4 (model.width or model.widths)")
        self.heads = heads
        self.norm = make_norm(norm, channels)
        self.film = ScaleShift(emb_dim, channels) if emb_dim else None
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)  # identity at init: the residual alone
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | Modulation | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if self.film is not None and emb is not None:
            y = self.film(y, emb)
        # (B, 3C, H, W) -> three (B, heads, H*W, C/heads): the pixels are the tokens
        q, k, v = self.qkv(y).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))
