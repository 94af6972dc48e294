"""A run directory that is already there: resume it, or start it afresh in place.

    clear_failed_start(path)                     # removes what a failed start left behind
    existing_run(path, restart, restart_command) # why not, and the way on that applies
    check_resumable(path)                        # a resume with nothing to resume names --restart

A directory with a complete checkpoint holds a run to resume (``--resume``); one without (a start
that failed or was killed before its first save) holds nothing worth keeping, and ``--restart``
clears it for a new start under the same name.
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import STATE_FILE, checkpoint_candidates, read_state, resumed_run
from sandbox.runs.lock import RunLock
from sandbox.runs.rundir import RunDir

#: what a start writes (runs/rundir.py, the trainer, the loop); wandb/ and files of the user stay
LEFTOVERS = ("config.yaml", "metrics.jsonl", "checkpoints", "plots", "images", "splits", ".shared_check")


def complete_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint under ``path/checkpoints`` (what a resume would load), or None."""
    ckpts = Path(path) / "checkpoints"
    found = []
    for cand in sorted(ckpts.iterdir()) if ckpts.is_dir() else []:
        if cand.is_dir() and not cand.name.startswith("."):
            try:
                found.append((read_state(checkpoint_candidates(cand)[0]).get("step", 0), cand))
            except (SandboxError, OSError, ValueError):
                continue
    return max(found)[1] if found else None


def resume_line(path: str | Path, processes: int = 1) -> str:
    """The command that continues the run in ``path`` (with as many processes as it was planned for)."""
    launcher = "python" if processes == 1 else f"accelerate launch --num_processes {processes}"
    return f"{launcher} sandbox/train.py --resume {shlex.quote(str(path))}"


def existing_run(path: str | Path, restart: bool, restart_command: str) -> str:
    """Why a new run may not start in ``path`` (it holds one) and the way on that applies: with a
    complete checkpoint a resume, without one (a start that failed before its first save) ``restart_command``."""
    ckpt = complete_checkpoint(path)
    if ckpt is not None:
        step = read_state(ckpt).get("step", 0)
        head = (f"--restart: {str(path)!r} holds a complete checkpoint" if restart
                else f"run directory {str(path)!r} already holds a run")
        return (f"{head} (checkpoints/{ckpt.name} at step {step}); continue it with: {resume_line(path)}, "
                f"or start another with name=<new name>")
    return (f"run directory {str(path)!r} already holds a run that stopped before its first checkpoint "
            f"(nothing to resume); start it afresh in place with: {restart_command}, or start another "
            f"with name=<new name>")


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
    """:func:`resumed_run`, and where a run directory holds no complete checkpoint, the way on: --restart."""
    try:
        return resumed_run(path)
    except SandboxError as exc:
        path = Path(path)
        if (path / STATE_FILE).exists() or not RunDir(path).exists():
            raise
        config = path / "config.yaml"
        how = (f"python sandbox/train.py --config {shlex.quote(str(config))} --restart" if config.is_file()
               else "your train.py command plus --restart")
        raise SandboxError(f"{exc}; nothing to resume: start it afresh in place with {how}") from None
