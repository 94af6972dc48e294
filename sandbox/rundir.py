"""The run directory and its checkpoints.

    runs/<name>/
      config.yaml          the resolved config
      metrics.jsonl        one JSON object per log event (split, epoch, step, time, metrics)
      checkpoints/last/    Accelerate state (exact resume) + model.pt + trainer_state.json
      checkpoints/best/    the same, for the best monitored metric
      plots/ images/ splits/ wandb/

Checkpoints are written to a temporary directory and renamed into place, so a kill
during a save leaves the previous checkpoint intact (``last.old`` is the fallback while
the swap is in flight).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from sandbox.errors import SandboxError

log = logging.getLogger("sandbox")

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.pt"


class RunDir:
    """Paths of one run; ``create()`` refuses to overwrite an existing run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")
    images = property(lambda self: self.path / "images")
    splits = property(lambda self: self.path / "splits")

    def exists(self) -> bool:
        return self.config.exists() or self.metrics.exists() or self.checkpoints.exists()

    def create(self, resume: bool) -> None:
        if self.exists() and not resume:
            raise SandboxError(
                f"run directory {str(self.path)!r} already holds a run; continue it with train.resume={self.path}, "
                f"or start another with name=<new name>")
        try:
            for p in (self.path, self.checkpoints, self.plots, self.images):
                p.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise SandboxError(f"cannot write the run directory {str(self.path)!r}: {exc.strerror}; "
                               "choose another out_dir= or fix its permissions") from None

    def discard_if_empty(self) -> None:
        """Undo :meth:`create` for a run that never started: the directories go only if still empty."""
        for p in (self.checkpoints, self.plots, self.images, self.path):
            try:
                p.rmdir()
            except OSError:  # not empty (or already gone): keep it
                pass


def write_atomic(path: str | Path, text: str) -> Path:
    """``path`` holds ``text`` or its previous content, never a torn mix (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def checkpoint_candidates(path: str | Path) -> list[Path]:
    """Checkpoints to resume from, newest first.

    A checkpoint directory -> just it. A run directory -> every complete checkpoint under
    ``checkpoints/`` (``last``, ``last.old`` left by a save killed mid-swap, ``epoch_NNN``,
    ``best``) ordered by step, so a torn or corrupt ``last`` falls back to the newest good one.
    """
    path = Path(path)
    if not path.exists():
        raise SandboxError(f"resume: {str(path)!r} does not exist; expected a run directory (runs/<name>) "
                           "or a checkpoint directory (runs/<name>/checkpoints/last)")
    if (path / STATE_FILE).exists():
        return [_check_complete(path)]
    ckpts = path / "checkpoints"
    if not ckpts.is_dir():
        raise SandboxError(f"resume: {str(path)!r} is neither a run directory (with checkpoints/) "
                           f"nor a checkpoint directory (with {STATE_FILE})")
    found, problems = [], []
    for cand in sorted(p for p in ckpts.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append((read_state(_check_complete(cand)).get("step", 0), cand.name == "last", cand))
        except SandboxError as exc:
            problems.append(str(exc))
    if not found:
        why = f" ({'; '.join(problems)})" if problems else " (the run may have been stopped before its first save)"
        raise SandboxError(f"resume: {str(path)!r} has no complete checkpoint under checkpoints/{why}")
    for p in problems:
        log.warning("%s; falling back to an older checkpoint", p)
    return [c for _, _, c in sorted(found, key=lambda f: (f[0], f[1]), reverse=True)]


def find_checkpoint(path: str | Path) -> Path:
    """The newest complete checkpoint of a run directory, or the given checkpoint directory."""
    return checkpoint_candidates(path)[0]


def resumed_run(path: str | Path) -> Path:
    """The run directory that ``train.resume`` (a run or one of its checkpoints) continues."""
    return find_checkpoint(path).parent.parent


def _check_complete(ckpt: Path) -> Path:
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SandboxError(f"checkpoint {str(ckpt)!r} is corrupt: {STATE_FILE} unreadable ({exc})") from None
    missing = [f for f in state.get("files", []) if not (ckpt / f).exists()]
    if missing:
        raise SandboxError(f"checkpoint {str(ckpt)!r} is incomplete: missing {', '.join(missing[:5])}")
    return ckpt


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def commit_checkpoint(tmp: Path, final: Path, state: dict) -> None:
    """Write the state file last (it marks the directory complete), then swap ``tmp`` into ``final``."""
    state = dict(state, files=sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))
    state_tmp = tmp / (STATE_FILE + ".tmp")
    state_tmp.write_text(json.dumps(state, indent=2))
    with open(state_tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(state_tmp, tmp / STATE_FILE)
    old = final.with_name(final.name + ".old")
    if old.exists():  # left by a save that was killed mid-swap: keep whichever copy is the good one
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
