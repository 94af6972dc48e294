"""Time conditioning for the shared core: ``t -> embedding`` and the per-block scale-shift it drives.

    t (B,) in (0, 1] ──sinusoids (fp32, autocast off)──> Linear ─ SiLU ─ Linear ──> emb (B, E)
    each conv block:  norm(conv(x)) * (1 + s) + b,   (s, b) = Linear(SiLU(emb)) -> (B, 2C)

The scale-shift's Linear starts at zero weights and bias, so a freshly built time-conditioned net
computes exactly what the same net without time conditioning computes, for every ``t``
(Peebles & Xie 2023 call this "adaLN-Zero"; Dhariwal & Nichol 2021 the scale-shift norm).
"""
from __future__ import annotations

import math

import torch
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
    the Linear zero-initialised: the identity at init."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.act = nn.SiLU()
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        s, b = self.proj(self.act(emb)).to(x.dtype)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + s) + b
