"""Pluggable losses: ``LOSSES[name](**opts) -> nn.Module`` with ``(pred, target) -> scalar``.

A loss spec is per target and weighted, straight from YAML::

    loss: {mask: {dice: 1.0, bce: 0.5}}                 # weights
    loss: {mask: {bce: {weight: 1.0, pos_weight: 2.0}}}  # weight + options

:func:`build_loss` turns it into a :class:`CompositeLoss` whose ``forward(outputs, batch)``
returns ``(total, parts)`` with parts named ``<target>/<loss>`` (logged as
``train/loss/<target>/<loss>``). Losses are computed in float32 whatever the autocast
dtype, so bf16/fp16 runs stay numerically safe.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.errors import ConfigError
from sandbox.registry import Registry

LOSSES: Registry = Registry("loss")


@LOSSES.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy on logits (``from_logits=True``) or probabilities.

    ``pred, target: (B, 1, H, W)``, target in {0, 1} -> mean over pixels. Uses the
    log-sum-exp form, safe under autocast (never Sigmoid + BCELoss).
    """

    def __init__(self, from_logits: bool = True, pos_weight: float | None = None):
        super().__init__()
        self.from_logits = from_logits
        self.pos_weight = pos_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        if self.from_logits:
            pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=pred.device)
            return F.binary_cross_entropy_with_logits(pred, target, pos_weight=pw)
        if self.pos_weight is not None:
            raise ConfigError("loss bce: pos_weight needs from_logits: true")
        return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """Soft Dice loss, averaged over images: ``1 - mean_b (2·Σ p·t + s) / (Σ p + Σ t + s)``.

    ``pred, target: (B, 1, H, W)``; ``p = sigmoid(pred)`` when ``from_logits``. The sums
    run over each image's pixels, so every image weighs the same whatever its mask area.

    Convention for empty targets (``Σ t = 0``): with the additive smoothing ``s`` (default
    1, in pixels) the image's Dice is ``s / (Σ p + s)``, so predicting nothing scores 1
    (loss 0) and any predicted foreground is penalised, approaching loss 1 as ``Σ p``
    grows. An empty target is never ignored.
    """

    def __init__(self, from_logits: bool = True, smooth: float = 1.0):
        super().__init__()
        self.from_logits = from_logits
        self.smooth = smooth

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(pred.float()) if self.from_logits else pred.float()
        t = target.float()
        dims = tuple(range(1, p.ndim))
        inter = (p * t).sum(dims)
        dice = (2 * inter + self.smooth) / (p.sum(dims) + t.sum(dims) + self.smooth)
        return 1 - dice.mean()


def _split_spec(name: str, spec: Any, where: str) -> tuple[float, dict]:
    if isinstance(spec, dict):
        opts = dict(spec)
        weight = float(opts.pop("weight", 1.0))
        return weight, opts
    return float(spec), {}


class CompositeLoss(nn.Module):
    """Weighted sum of losses per target.

    ``forward(outputs: {target: (B, K, H, W)}, batch: {target: (B, K, H, W)}) -> (total, parts)``
    with ``parts = {"mask/dice": unweighted value, ...}`` (detached).
    """

    def __init__(self, terms: dict[str, dict[str, tuple[float, nn.Module]]]):
        super().__init__()
        self.weights = {t: {n: w for n, (w, _) in losses.items()} for t, losses in terms.items()}
        self.losses = nn.ModuleDict(
            {t: nn.ModuleDict({n: m for n, (_, m) in losses.items()}) for t, losses in terms.items()})

    @property
    def targets(self) -> list[str]:
        return list(self.weights)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]):
        total = None
        parts: dict[str, torch.Tensor] = {}
        for target, losses in self.losses.items():
            for name, fn in losses.items():
                value = fn(outputs[target], batch[target])
                parts[f"{target}/{name}"] = value.detach()
                term = self.weights[target][name] * value
                total = term if total is None else total + term
        return total, parts


def build_loss(spec: dict[str, dict[str, Any]]) -> CompositeLoss:
    """``{"mask": {"dice": 1.0, "bce": {"weight": 0.5, "pos_weight": 2}}}`` -> CompositeLoss."""
    terms: dict[str, dict[str, tuple[float, nn.Module]]] = {}
    for target, losses in spec.items():
        terms[target] = {}
        for name, s in losses.items():
            where = f"loss.{target}.{name}"
            weight, opts = _split_spec(name, s, where)
            cls = LOSSES[name]
            try:
                module = cls(**opts)
            except TypeError as exc:
                raise ConfigError(f"{where}: bad option(s) {sorted(opts)} ({exc})") from None
            terms[target][name] = (weight, module)
    return CompositeLoss(terms)
