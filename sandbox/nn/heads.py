"""Heads: map decoder features to named targets, ``{"mask": 1, "depth": 1, "parts": 5}`` (K logits for K
classes) -> dict of outputs."""
from __future__ import annotations

import torch
from torch import nn


class Heads(nn.Module):
    """One 1x1 conv per named target. ``x: (B, C, H, W) -> {name: (B, K_name, H, W)}`` (logits)."""

    def __init__(self, in_channels: int, targets: dict[str, int]):
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Conv2d(in_channels, k, 1) for name, k in targets.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(x) for name, head in self.heads.items()}
