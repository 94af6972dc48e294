"""A run directory that is already there: resume it, or start it afresh in place.

    clear_failed_start(path)                     # removes what a failed start left behind
    existing_run(path, restart, restart_command) # why not, and the way on that applies
    check_resumable(path)                        # a resume with nothing to resume names --restart

A directory with a complete checkpoint holds a run to resume (``--resume``); one without (a start
that failed or was killed before its first save) holds nothing worth keeping, and ``--restart``
clears it for a new start under the same name.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import STATE_FILE, resumed_run
from sandbox.runs.lock import RunLock
from sandbox.runs.rundir import (RunDir, complete_checkpoint, existing_run, restart_line,  # noqa: F401 (re-exported)
                                 resume_line)
from sandbox.runs.stages import is_staged

#: what a start writes (runs/rundir.py, the trainer, the loop); wandb/ and files of the user stay
LEFTOVERS = ("config.yaml", "metrics.jsonl", "checkpoints", "plots", "images", "splits", ".shared_check")


def clear_failed_start(path: str | Path) -> list[str] | None:
    """Remove what a failed start left in ``path`` (the names in :data:`LEFTOVERS`) and return them;
    None, removing nothing, where the directory holds a complete checkpoint (a run to resume)."""
    path = Path(path)
    if complete_checkpoint(path) is not None:
        return None
    lock = RunLock(path)
    if lock.holder() is not None:  # a live run before its first save must not be cleared under it
        lock.acquire()  # refuses, naming the holder, unless that process is gone (then taken over)
        lock.release()
    removed = []
    for name in LEFTOVERS:
        p = path / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def check_resumable(path: str | Path) -> Path:
    """:func:`resumed_run`, and where a run directory holds no complete checkpoint, the way on: --restart.
    A staged run's directory is returned as it is (its stages resume by themselves: sandbox/trainers/stages.py)."""
    if is_staged(path):
        return Path(path)
    try:
        return resumed_run(path)
    except SandboxError as exc:
        path = Path(path)
        if (path / STATE_FILE).exists() or not RunDir(path).exists():
            raise
        raise SandboxError(f"{exc}; nothing to resume: start it afresh in place with {restart_line(path)}") from None
