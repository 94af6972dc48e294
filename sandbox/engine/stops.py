"""What a training run says when it stops on a bad step.

:func:`checkpoints_held`: what ``checkpoints/last`` and ``best`` hold, read from their files, so
that a stop message never claims a checkpoint that is not there (or holds NaN weights).
"""
from __future__ import annotations

from pathlib import Path

import torch

from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import WEIGHTS_FILE, checkpoint_candidates, read_state
from sandbox.runs.restart import resume_line
from sandbox.runs.rundir import RunDir

def _position(state: dict) -> str:
    if state.get("batch"):
        return f"step {state['step']} (mid-epoch {state['epoch'] + 1})"
    return f"epoch {state['epoch']} (step {state['step']})"


def _held(ckpt: Path) -> tuple[str, bool] | None:
    """(``epoch 3 (step 120)``, whether its weights are finite) for a complete checkpoint, else None."""
    try:
        checkpoint_candidates(ckpt)  # raises unless complete
        at = _position(read_state(ckpt))
    except (SandboxError, OSError, ValueError):
        return None
    try:
        weights = torch.load(ckpt / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file: say so, do not guess
        return f"{at} (its {WEIGHTS_FILE} does not load)", False
    finite = all(torch.isfinite(v).all() for v in weights.values() if torch.is_tensor(v) and v.is_floating_point())
    return (at, True) if finite else (f"{at} with non-finite weights", False)


def checkpoints_held(run: RunDir) -> tuple[str | None, bool]:
    """(``checkpoints/last holds epoch 3 (step 120), best epoch 2 (step 80)``, whether last holds finite
    weights); (None, False) when neither exists."""
    last, best = _held(run.checkpoints / "last"), _held(run.checkpoints / "best")
    if last is None:
        return (None if best is None else f"checkpoints/best holds {best[0]}, no last"), False
    return f"checkpoints/last holds {last[0]}, " + (f"best {best[0]}" if best else "no best"), last[1]


def stopped_at(run: RunDir, processes: int, what: str, advice: str, setting: str | None = None) -> str:
    """One line for a run that stops on a bad step: ``what``; what the checkpoints hold; the way on:
    ``advice`` and --restart where nothing was saved, else ``advice`` in another run or, where last
    holds finite weights, going on from it with ``setting`` (e.g. ``train.nonfinite=skip``)."""
    held, last_finite = checkpoints_held(run)
    if held is None:
        return (f"{what}; no checkpoint was written yet; {advice}" + (f" or set {setting}" if setting else "")
                + ", and rerun with --restart (it starts afresh in place)")
    way = f"{what}; {held}; nothing was saved at or after that step; {advice} in another run (name=<new name>)"
    if setting and last_finite:
        way += f", or go on from last with {setting}: {resume_line(run.path, processes)} {setting}"
    return way
