"""How a training run stops, and what it says then.

* :class:`SignalStop`: while ``fit`` runs, the first SIGTERM (what Slurm and most schedulers send)
  or SIGINT (Ctrl-C) is only recorded; the loop finishes the optimizer step, saves
  ``checkpoints/last`` there and raises :class:`RunStopped` (exit status 128 + signal). A second
  signal stops at once (the handler that was there before, or the default action), unless it
  comes within :data:`ECHO_S` of the first: launchers pass on the signal their job got (torchrun,
  ``srun``), so under ``scancel`` or Ctrl-C each process sees it twice in a row.
* :func:`checkpoints_held`: what ``checkpoints/last`` and ``best`` hold, read from their files, so
  that a stop message never claims a checkpoint that is not there (or holds NaN weights).
* :func:`early_stop`: ``train.early_stop`` after each epoch; its counter lives in the trainer state,
  so it is saved with every checkpoint and a resumed run stops where an uninterrupted one would.
* :func:`stop_at`: ``train.stop_at`` after each epoch: the first epoch whose metric reaches the target ends
  the run (kept as ``state["stopped_early"]``, so a resumed run has nothing left to train).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from sandbox.errors import SandboxError
from sandbox.metrics.selection import improved
from sandbox.runs.checkpoints import WEIGHTS_FILE, check_complete, read_state, read_weights, weights_file
from sandbox.runs.restart import resume_line
from sandbox.runs.rundir import RunDir

SIGNALS = (signal.SIGTERM, signal.SIGINT)
ECHO_S = 1.0  # a signal this soon after the first is the same request, passed on by a launcher


class RunStopped(KeyboardInterrupt):
    """``fit`` stopped on a signal after saving ``checkpoints/last`` (and printed the resume command on
    the main process); ``exit_code`` is 128 + the signal. A KeyboardInterrupt, so that no
    ``except Exception`` (a sweep's per-run handler) carries on after a stop that was asked for."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class SignalStop:
    """Records the first SIGTERM/SIGINT while active (``signum``); restores the handlers on exit.
    Handlers can only be set from the main thread: elsewhere (a notebook's worker) nothing changes.
    A signal its process ignores (``nohup``, a launcher) stays ignored."""

    def __init__(self):
        self.signum = 0
        self._first = 0.0
        self._previous: dict = {}

    def __enter__(self) -> "SignalStop":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if not self.signum:
            self.signum, self._first = signum, time.monotonic()
            return
        if time.monotonic() - self._first < ECHO_S:
            return
        previous = self._previous.get(signum)
        self._restore()
        if callable(previous):  # Python's SIGINT handler: KeyboardInterrupt, here and now
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)  # the default action: the process ends

    def agreed(self, acc) -> int:
        """The signal to stop for, the same on every process (0: go on). With several processes they
        must stop after the same step (each saves its part of the checkpoint; one that went on would
        wait forever in the next all-reduce), and a signal reaches them at different moments: one
        small all-reduce per step, only then."""
        if acc.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=acc.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def stop_message(signum: int, state: dict, run: Path, processes: int) -> str:
    name = signal.Signals(signum).name
    return (f"stopped by {name}: checkpoints/last holds {_position(state)}; resume with: "
            f"{resume_line(run, processes)}")


def _position(state: dict) -> str:
    if state.get("batch"):
        return f"step {state['step']} (mid-epoch {state['epoch'] + 1})"
    return f"epoch {state['epoch']} (step {state['step']})"


def _held(ckpt: Path) -> tuple[str, bool] | None:
    """(``epoch 3 (step 120)``, whether its weights are finite) for a complete checkpoint, else None."""
    try:
        check_complete(ckpt)  # raises unless complete
        at = _position(read_state(ckpt))
    except (SandboxError, OSError, ValueError):
        return None
    try:
        weights = read_weights(weights_file(ckpt))
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


def early_stop(state, value: float | None, loss: float | None, monitor: str, mode: str, patience: int,
               min_delta: float) -> str | None:
    """Count an epoch for ``train.early_stop``, BEFORE ``state``'s best is updated with it (``state``: a
    :class:`~sandbox.engine.state.TrainerState`): an epoch that improves on the best so far by ``min_delta``
    (:func:`~sandbox.metrics.selection.improved`) resets ``state.early_stop_wait``, any other adds one. Returns
    why the run stops (also kept as ``state.stopped_early``) once ``patience`` epochs in a row did not improve,
    else None. A monitor that is not logged (None) counts nothing: the run trains its epochs (the loop warns
    about it)."""
    if value is None:
        return None
    if improved(value, loss, state.best, state.best_loss, mode, min_delta):
        state.early_stop_wait = 0
        return None
    state.early_stop_wait = (state.early_stop_wait or 0) + 1
    if state.early_stop_wait < patience:
        return None
    by = f" by more than {min_delta:g}" if min_delta else ""
    state.stopped_early = (f"stopped early after epoch {state.epoch}: {monitor} has not improved{by} for "
                           f"{patience} epoch{'s' if patience > 1 else ''} (train.early_stop)")
    return state.stopped_early


def reached(value: float | None, target: float, mode: str) -> bool:
    """``value`` has reached ``target``: ``>=`` in ``max`` mode, ``<=`` in ``min``; never when ``value`` is
    missing or not finite (a NaN reaches nothing)."""
    if value is None or not math.isfinite(value):
        return False
    return value >= target if mode == "max" else value <= target


def stop_at(state, value: float | None, metric: str, target: float, mode: str) -> str | None:
    """``train.stop_at`` for the epoch ``state.epoch`` (just completed): why the run stops (also kept as
    ``state.stopped_early``) when ``value`` of ``metric`` has :func:`reached` ``target``, else None."""
    if not reached(value, target, mode):
        return None
    sign = ">=" if mode == "max" else "<="
    state.stopped_early = (f"stopped after epoch {state.epoch}: {metric} {value:.6g} reached the target "
                           f"{sign} {target:g} (train.stop_at)")
    return state.stopped_early


def stop_at_target(state, values: dict[str, float], train, first_epoch: bool, main: bool) -> str | None:
    """``train.stop_at`` after an epoch (``values``: its train and val means): why the run stops once the
    metric has :func:`reached` the target (:func:`stop_at`), else None; a metric the trainer does not log warns
    after the first epoch (main process) and the run trains all its epochs."""
    target = train.stop_at
    if target is None:
        return None
    if target.metric not in values and first_epoch and main:
        logging.getLogger("sandbox").warning(
            "train.stop_at.metric=%s is not logged by this trainer (logged: %s): the run trains all its epochs",
            target.metric, ", ".join(sorted(values)))
    return stop_at(state, values.get(target.metric), target.metric, target.value, target.mode or train.monitor_mode)
