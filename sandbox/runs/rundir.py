"""The run directory: its layout, its creation (never over another run) and atomic text files.

    runs/<name>/
      config.yaml          the resolved config
      metrics.jsonl        one JSON object per log event (split, epoch, step, time, metrics)
      checkpoints/last/    Accelerate state (exact resume: model.safetensors, optimizer, RNG) + trainer_state.json
      checkpoints/best/    model.safetensors alone (no optimizer state) + trainer_state.json, for the best metric
      plots/ images/ splits/ wandb/

What a checkpoint directory holds and how it is committed: :mod:`sandbox.runs.checkpoints`.
"""
from __future__ import annotations

import os
from pathlib import Path

from sandbox.errors import SandboxError


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
