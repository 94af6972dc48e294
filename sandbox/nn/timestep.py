"""Time conditioning for the shared core: ``t -> embedding`` and the per-block scale-shift it drives.

    t (B,) in (0, 1] ──sinusoids (fp32, autocast off)──> Linear ─ SiLU ─ Linear ──> emb (B, E)
    each conv block:  norm(conv(x)) * (1 + s) + b,   (s, b) = Linear(SiLU(emb)) -> (B, 2C)

The scale-shift's Linear starts at zero weights and bias, so a freshly built time-conditioned net
computes exactly what the same net without time conditioning computes, for every ``t``
(Peebles & Xie 2023 call this "adaLN-Zero"; Dhariwal & Nichol 2021 the scale-shift norm).

Every block has its own Linear (``film.proj``), but a forward pass evaluates them all at once: a
:class:`Modulation` stacks their weights and computes every block's ``(1 + s, b)`` with one SiLU, one
matrix product and one add (the core's Encoder and Decoder, and the ddpm/flow TimeUNet, build it once
and pass it down in place of ``emb``). One Linear per block cost ~5 % of the 32 px training step in
small ops and autograd nodes (bench/denoising.py).
"""
from __future__ import annotations

import math

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

TIME_SCALE = 1000.0  # t in (0, 1] is spread over the frequencies as t * 1000, as for integer DDPM steps


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``t: (B,) -> (B, dim)`` float32 sinusoids ``[cos(w_k t'), sin(w_k t')]``, ``t' = 1000 t``,
    ``w_k = max_period ** (-k / (dim / 2))`` (Vaswani et al. 2017; Ho et al. 2020). Computed in
    float32 with autocast off: in bf16 ``1000 t`` has 3 significant digits and nearby steps collide."""
    with torch.autocast(device_type=t.device.type, enabled=False):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t.float().reshape(-1) * TIME_SCALE)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class TimeEmbedding(nn.Module):
    """``t: (B,) or scalar -> (B, dim)``: sinusoids of width ``freq_dim`` then Linear-SiLU-Linear."""

    def __init__(self, dim: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.mlp[0].weight.device)
        if t.ndim == 0 and batch is not None:
            t = t.expand(batch)
        freq = timestep_embedding(t, self.freq_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class ScaleShift(nn.Module):
    """``(x: (B, C, H, W), emb: (B, E)) -> x * (1 + s) + b`` with ``(s, b) = Linear(SiLU(emb))``,
    the Linear zero-initialised: the identity at init. ``emb`` may also be the :class:`Modulation` of
    the whole net, which holds this block's ``(1 + s, b)`` already."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.act = nn.SiLU()
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | Modulation) -> torch.Tensor:
        scale, shift = modulation(self, emb).of(self, x.dtype)
        return x * scale + shift


class Modulation:
    """Every :class:`ScaleShift`'s ``(1 + s, b)`` for one forward pass, from one matrix product.

    ``films``' Linears are stacked into one ``(sum 2C, E)`` weight and bias (a copy of ~0.1 M numbers
    for the default UNet, which autograd splits back into each block's gradient): ``SiLU(emb) @ W.T + b``
    gives every block's ``[s, b]`` side by side, the same numbers as each block's own Linear up to
    float rounding. ``of(film, dtype)`` returns that block's ``(1 + s, b)`` as ``(B, C, 1, 1)`` views,
    cast once to the dtype of the activations (bf16 or fp32 under autocast)."""

    def __init__(self, films: Sequence[ScaleShift], emb: torch.Tensor):
        self.index = {film: i for i, film in enumerate(films)}
        self.sizes = [n for film in films for n in (film.proj.out_features // 2,) * 2]  # s, b of each block
        weight = torch.cat([film.proj.weight for film in films])
        bias = torch.cat([film.proj.bias for film in films])
        self.out = F.linear(F.silu(emb), weight, bias)  # (B, sum 2C)
        self.parts: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}

    def of(self, film: ScaleShift, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if dtype not in self.parts:  # 1 + s for every block at once: + 1 on the s halves, + 0 on the b halves
            one = torch.tensor([1.0, 0.0] * (len(self.sizes) // 2), dtype=dtype, device=self.out.device)
            one = one.repeat_interleave(torch.tensor(self.sizes, device=self.out.device))
            self.parts[dtype] = (self.out.to(dtype) + one)[:, :, None, None].split(self.sizes, dim=1)
        i = 2 * self.index[film]
        return self.parts[dtype][i], self.parts[dtype][i + 1]


def modulation(module: nn.Module, emb: torch.Tensor | Modulation) -> Modulation:
    """``emb`` (a time embedding ``(B, E)``) as the :class:`Modulation` of every ScaleShift in ``module``
    (itself included); a Modulation passes through, so the outermost module builds the one of the pass."""
    if isinstance(emb, Modulation):
        return emb
    return Modulation([m for m in module.modules() if isinstance(m, ScaleShift)], emb)
