"""Where a training run stands: :class:`TrainerState`, every field declared, and what changes it at an
epoch's end (the best epoch, the divergence watch).

Checkpoints save it as ``trainer_state.json`` (:meth:`TrainerState.to_dict`; the file's format is
:data:`sandbox.runs.checkpoints.STATE_SCHEMA`) and a resumed run reads it back (:meth:`TrainerState.from_dict`).
The fields after ``steps_per_epoch`` are written only once they have a value, as the state files of every
earlier version did; fields of a later version are carried over unread (``extra``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sandbox")

#: what a checkpoint adds to the state it saves (its file list; best's "weights only"): not the run's state
CHECKPOINT_KEYS = ("files", "weights_only")


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps done (per process)
    batch: int = 0  # batches done in the epoch under way (a mid-epoch checkpoint)
    best: float | None = None  # the best monitored value so far
    best_epoch: int | None = None
    best_loss: float | None = None  # val/loss of the best epoch (breaks a tie)
    wandb_id: str | None = None
    elapsed: float = 0.0  # seconds of training so far, over every (re)start
    skipped: int = 0  # batches skipped with a non-finite loss (train.nonfinite: skip)
    # the running sums of a mid-epoch checkpoint: the epoch's means finish exactly as if never stopped
    sums: dict[str, float] = field(default_factory=dict)  # since the last train log line
    count: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)  # since the epoch's start
    epoch_count: int = 0
    steps_per_epoch: int | None = None  # the LR schedule's plan (a resume must keep it)
    # written once set
    loss_min: float | None = None  # the lowest logged training loss (train.diverge_factor)
    loss_min_step: int | None = None
    diverged_at: int | None = None  # the step the divergence warning was given at
    early_stop_wait: int | None = None  # epochs in a row without an improvement (train.early_stop)
    stopped_early: str | None = None  # why the run stopped early
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a later version, carried over unread

    def to_dict(self) -> dict[str, Any]:
        """The state file's object (the same keys and values as every earlier version wrote)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in ("loss_min", "loss_min_step", "diverged_at", "early_stop_wait", "stopped_early"):
            if out[key] is None:
                del out[key]
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "TrainerState":
        """The state of a checkpoint's ``trainer_state.json`` (read and checked by ``read_state``)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        extra = {k: v for k, v in saved.items() if k not in known and k not in CHECKPOINT_KEYS}
        return cls(**{k: v for k, v in saved.items() if k in known}, extra=extra)


def update_best(state: TrainerState, values: dict[str, float], epoch: int, monitor: str, mode: str) -> bool:
    """Whether epoch ``epoch`` (from 0) with ``values`` becomes the best one (then ``state`` records it):
    higher (max) / lower (min) wins; a tie goes to the lower val/loss; a NaN loss never wins; an epoch
    without the value is taken while no epoch has had one (never logged: best = last)."""
    from sandbox.metrics.selection import takes_best  # the one rule, shared with the reports (run_stats)

    value = values.get(monitor)
    if value is None and epoch == 0:
        log.warning("train.monitor=%s is not logged by this trainer (logged: %s); best = last",
                    monitor, ", ".join(sorted(values)))
    loss = values.get("val/loss", math.inf)
    if not takes_best(value, loss, state.best, state.best_loss, mode):
        return False
    if value is not None:
        state.best, state.best_epoch, state.best_loss = value, epoch + 1, loss
    return True


def watch_divergence(state: TrainerState, loss: float | None, factor: float | None) -> str | None:
    """A logged training ``loss`` above ``factor`` x its running minimum: what to say, the first time
    (``state.diverged_at`` then records the step); the minimum is kept in ``state`` (it travels with the
    checkpoints). On the logged means (already on the host, the same on every process): no sync."""
    if loss is None or not math.isfinite(loss) or factor is None:
        return None
    low, said = state.loss_min, None
    if low is not None and low > 0 and loss > factor * low and not state.diverged_at:
        said = (f"training loss {loss:.4g} at step {state.step} is more than {factor:g}x its minimum "
                f"{low:.4g} (step {state.loss_min_step}): the run is diverging")
    if low is None or loss < low:
        state.loss_min, state.loss_min_step = loss, state.step
    return said
