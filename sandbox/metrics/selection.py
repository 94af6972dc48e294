"""The best-epoch rule: one for the trainer's ``checkpoints/best`` and for the reports read back
from ``metrics.jsonl`` (compare, sweeps), so both name the same epoch.

    better(value, loss, best, best_loss, mode)   does this epoch beat the best so far?
    takes_best(value, loss, best, best_loss, mode)   does checkpoints/best take this epoch (its monitor)?
    best_index(rows, metric, mode)               the best of rows in epoch order (None: none qualifies)
    improved(value, loss, best, best_loss, mode, min_delta)   early stopping's "better by min_delta"

An epoch beats the best so far when its monitored value is better (higher in ``max`` mode, lower
in ``min``); at an equal value, when its ``val/loss`` is lower (a missing loss counts as +inf, so
of two equal epochs without a loss the earlier stays best). A non-finite value, or a NaN loss (a
diverged model), never becomes best.

checkpoints/best follows the run's monitor (``train.monitor``) with one addition (:func:`takes_best`):
while no epoch has logged the monitored value, an epoch without it is taken. A trainer that never logs
its monitor (a GAN has no ``val/loss``: its validation is the sample metrics, or nothing with
``train.fid_samples: 0``) so keeps its last epoch as best; a report reading such a run back
(``best_index(..., monitor=True)``) names that same epoch instead of none. Picking the GAN's epoch by a
sample metric instead would pick the luckiest of its noisy epochs on the very samples a study then
scores, flattering the noisiest family; the last epoch is what its training budget produced.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

MODES = ("max", "min")


def _loss(loss: float | None) -> float:
    return math.inf if loss is None else float(loss)


def better(value: float | None, loss: float | None, best: float | None, best_loss: float | None,
           mode: str = "max") -> bool:
    """True when an epoch with ``value`` (the monitored metric) and ``loss`` (its ``val/loss``,
    None when not logged) beats the best so far (``best``, ``best_loss``; ``best`` None: none yet)."""
    if mode not in MODES:
        raise ValueError(f"mode: got {mode!r}, expected one of {', '.join(MODES)}")
    if value is None or not math.isfinite(value) or (loss is not None and math.isnan(loss)):
        return False
    if best is None:
        return True
    if value != best:
        return value > best if mode == "max" else value < best
    return _loss(loss) < _loss(best_loss)


def takes_best(value: float | None, loss: float | None, best: float | None, best_loss: float | None,
               mode: str = "max") -> bool:
    """checkpoints/best's rule for one epoch: :func:`better`, except that an epoch without the monitored
    value (``value`` None) is taken while no epoch has had one (``best`` None): a monitor the trainer
    never logs selects the last epoch."""
    if value is None and best is None:
        return True
    return better(value, loss, best, best_loss, mode)


def best_index(rows: Sequence[Mapping[str, float]], metric: str, mode: str = "max",
               loss_key: str = "val/loss", monitor: bool = False) -> int | None:
    """Index of the best of ``rows`` (one dict per epoch, in order) by :func:`better`, the way the
    trainer meets them epoch by epoch; None when no row has a finite ``metric`` and a loss not NaN.
    ``monitor``: ``metric`` is the run's ``train.monitor``, so the index is the epoch checkpoints/best
    holds (:func:`takes_best`: the last row when no row logs it)."""
    rule = takes_best if monitor else better
    best = None
    for i, row in enumerate(rows):
        held = rows[best] if best is not None else {}
        if rule(row.get(metric), row.get(loss_key), held.get(metric), held.get(loss_key), mode):
            best = i
    return best


def improved(value: float | None, loss: float | None, best: float | None, best_loss: float | None,
             mode: str = "max", min_delta: float = 0.0) -> bool:
    """Early stopping's improvement: the epoch, made worse by ``min_delta`` (in the metric's units),
    still beats the best so far by :func:`better`; with ``min_delta = 0`` exactly :func:`better`."""
    if value is None or min_delta == 0:
        return better(value, loss, best, best_loss, mode)
    return better(value - min_delta if mode == "max" else value + min_delta, loss, best, best_loss, mode)
