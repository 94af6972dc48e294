"""The run's own metrics file: ``metrics.jsonl``, one JSON object per log event, appended on the main
process and mirrored to the Accelerate trackers (W&B); read back and truncated on resume.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from sandbox.runs.rundir import write_atomic

log = logging.getLogger("sandbox")


def from_one(records: list[dict]) -> list[dict]:
    """Records with epochs counted from 1. Files written before that convention counted from 0 (a
    record of epoch 0 exists only there): their epochs are shifted by one, so old runs read alike."""
    if any(r.get("epoch") == 0 for r in records):
        return [{**r, "epoch": r["epoch"] + 1} if isinstance(r.get("epoch"), int) else r for r in records]
    return records


def truncate_metrics(path: Path, epoch: int, step: int) -> int:
    """Drop records written after the checkpoint being resumed (``epoch`` epochs done, ``step``
    steps), so the file reads as if the run had never stopped (an old file counting epochs from 0 is
    rewritten from 1, so that the resumed run appends alike). Atomic; returns records dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by the kill
            continue
    renumbered = from_one(records)
    keep = [r for r in renumbered if r.get("step", 0) <= step and (r.get("split") != "val" or r.get("epoch", 0) <= epoch)]
    if len(keep) != len(lines) or renumbered is not records:
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(lines) - len(keep)


class MetricsLog:
    """Append-only ``metrics.jsonl`` on the main process, mirrored to the Accelerate trackers."""

    def __init__(self, path: Path, accelerator, start_time: float | None = None):
        self.path = Path(path)
        self.accelerator = accelerator
        self.start = start_time if start_time is not None else time.time()
        self.wandb_failed = False

    def log(self, split: str, epoch: int, step: int, values: dict[str, float], **extra: Any) -> dict:
        record = {"split": split, "epoch": epoch, "step": step, "time": round(time.time() - self.start, 3),
                  **extra, **{k: _clean(v) for k, v in values.items()}}
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self._to_trackers({k: v for k, v in values.items() if isinstance(v, (int, float))}, step)
        return record

    def _to_trackers(self, values: dict, step: int) -> None:
        if self.wandb_failed or not self.accelerator.trackers:
            return
        try:
            self.accelerator.log(values, step=step)
        except Exception as exc:  # W&B must never stop training
            self.wandb_failed = True
            log.warning("W&B logging failed (%s); metrics still go to %s", exc, self.path)

    def log_image(self, key: str, path: Path, step: int, caption: str = "") -> None:
        if not self.accelerator.is_main_process or self.wandb_failed or not self.accelerator.trackers:
            return
        try:
            import wandb

            tracker = self.accelerator.get_tracker("wandb", unwrap=True)
            tracker.log({key: wandb.Image(str(path), caption=caption)}, step=step)
        except Exception as exc:  # W&B must never stop training
            log.warning("W&B image logging failed (%s)", exc)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep the fact as text
    return v


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: the rest is still good
    return from_one(records)
