"""Conditions for the shared core: known factors -> an embedding added to the time embedding.

    condition (B, F) float32, one column per factor (continuous: the raw value; classes: the id as a float)
    continuous columns ──standardise (mean, std: buffers)──> Linear ─ SiLU ─ Linear ──┐
    class column j ──nn.Embedding(classes_j + 1) (row classes_j: null)─────────────────┼─ sum ──> (B, E)
    emb = time_embedding(t) + condition_embedding(c)   (then the blocks' Modulation, :mod:`sandbox.nn.timestep`)

Classifier-free guidance (Ho & Salimans 2022) needs one network that predicts with and without the
condition: a row is the **null condition** when it is all NaN (:func:`null_condition`; what the samplers'
guidance batches beside the condition, :func:`sandbox.diffusion.samplers.guided`) or when ``drop`` marks
it. A null row takes the learned null vector for the continuous part and each class embedding's extra
null row. In training mode ``p_drop`` drops each row to null with probability ``p`` (condition
dropout, drawn by :meth:`ConditionEmbedding.draw_drop` on the CPU from ``generator`` or the global RNG,
so equal generators drop equal rows; a trainer that shards a global batch passes its own ``drop``).

Standardisation: ``mean``/``std`` of the continuous columns are buffers (saved in checkpoints), set
once from the training split's conditions by :meth:`ConditionEmbedding.set_statistics`; until then
0 and 1.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from sandbox.errors import SandboxError


class Factor(NamedTuple):
    """One column of a condition: ``classes`` 0 for a continuous value, else the number of classes."""

    name: str
    classes: int = 0


def as_factors(factors: Sequence[Factor | tuple | str]) -> tuple[Factor, ...]:
    """``["a", ("gender", 2)]`` -> ``(Factor("a", 0), Factor("gender", 2))``; at least one, names unique."""
    out = tuple(Factor(f) if isinstance(f, str) else Factor(*f) for f in factors)
    if not out or len({f.name for f in out}) != len(out):
        raise SandboxError(f"condition factors: got {[f.name for f in out]}, expected one or more unique names")
    for f in out:
        if isinstance(f.classes, bool) or not isinstance(f.classes, int) or f.classes < 0 or f.classes == 1:
            raise SandboxError(f"condition factor {f.name}: classes {f.classes!r}; expected 0 (continuous) or >= 2")
    return out


def null_condition(n: int, factors: int, device=None) -> torch.Tensor:
    """``(n, factors)`` rows of NaN: the null condition (the unconditional prediction)."""
    return torch.full((n, factors), float("nan"), dtype=torch.float32, device=device)


class ConditionEmbedding(nn.Module):
    """``(condition: (B, F), drop: (B,) bool | None) -> (B, dim)``, to be added to the time embedding.

    ``factors``: the columns (:class:`Factor`, or ``(name, classes)``, or a name for a continuous one);
    ``p_drop``: condition dropout in training mode (0 in eval mode unless ``drop`` is given)."""

    def __init__(self, factors: Sequence[Factor | tuple | str], dim: int, p_drop: float = 0.0):
        super().__init__()
        if isinstance(p_drop, bool) or not isinstance(p_drop, (int, float)) or not 0 <= p_drop < 1:
            raise SandboxError(f"condition dropout: got {p_drop!r}, expected a probability in [0, 1)")
        self.factors, self.dim, self.p_drop = as_factors(factors), dim, float(p_drop)
        self.continuous = [i for i, f in enumerate(self.factors) if not f.classes]
        self.categorical = [i for i, f in enumerate(self.factors) if f.classes]
        k = len(self.continuous)
        self.register_buffer("mean", torch.zeros(k))
        self.register_buffer("std", torch.ones(k))
        if k:
            self.mlp = nn.Sequential(nn.Linear(k, dim), nn.SiLU(), nn.Linear(dim, dim))
            self.null = nn.Parameter(torch.zeros(dim))  # the continuous part of the null condition, learned
        self.classes = nn.ModuleList(nn.Embedding(self.factors[i].classes + 1, dim) for i in self.categorical)

    @torch.no_grad()
    def set_statistics(self, conditions: torch.Tensor) -> None:
        """Standardise the continuous columns by the mean and std of ``conditions`` ``(N, F)`` (the
        training split's); a column with one row or no spread keeps std 1."""
        c = self._checked(conditions)[:, self.continuous].double()
        if not len(self.continuous) or not len(c):
            return
        std = c.std(0) if len(c) > 1 else torch.ones(c.shape[1], dtype=c.dtype)
        self.mean.copy_(c.mean(0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def draw_drop(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n,)`` bool on the CPU: True with probability ``p_drop`` each (the rows condition dropout nulls)."""
        return torch.rand(n, generator=generator) < self.p_drop

    def _checked(self, condition: torch.Tensor) -> torch.Tensor:
        c = torch.as_tensor(condition)
        if c.ndim != 2 or c.shape[1] != len(self.factors):
            raise SandboxError(f"condition of shape {tuple(c.shape)}; expected (batch, {len(self.factors)}) for "
                               f"the factors {', '.join(f.name for f in self.factors)}")
        return c.float()

    def forward(self, condition: torch.Tensor, drop: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        dev = next(self.parameters()).device
        c = self._checked(condition).to(dev)
        nan = torch.isnan(c)
        null = nan.all(dim=1)
        if bool((nan.any(dim=1) & ~null).any()):
            raise SandboxError("condition: a row is partly NaN; expected finite values, or all NaN for the null "
                               "condition")
        if drop is None and self.training and self.p_drop > 0:
            drop = self.draw_drop(c.shape[0], generator)
        if drop is not None:
            null = null | drop.to(device=dev, dtype=torch.bool)
        keep = ~null[:, None]
        emb: torch.Tensor | float = 0.0  # at least one factor adds to it
        if self.continuous:
            v = torch.where(keep, (c[:, self.continuous] - self.mean) / self.std, 0.0)  # NaN never enters the MLP
            emb = torch.where(keep, self.mlp(v.to(self.null.dtype)), self.null)
        for i, table in zip(self.categorical, self.classes):
            n = self.factors[i].classes
            raw = c[:, i]
            bad = ~null & ((raw < 0) | (raw >= n) | (raw != raw.round()))
            if bool(bad.any()):
                raise SandboxError(f"condition factor {self.factors[i].name}: got class {raw[bad][0].item():g}; "
                                   f"expected an integer in [0, {n - 1}]")
            ids = torch.where(null, float(n), raw)
            emb = emb + table(ids.long())
        return emb
