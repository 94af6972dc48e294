"""The run's own metrics file: ``metrics.jsonl``, one JSON object per log event, appended on the main
process and mirrored to the Accelerate trackers (W&B, TensorBoard); read back and truncated on resume.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from sandbox.runs.rundir import inside, write_atomic
from sandbox.tracking.trackers import log_masks, log_picture

log = logging.getLogger("sandbox")

#: the fields that are wall-clock timings: everything else a resumed run reproduces bit for bit
WALL_CLOCK = ("time", "epoch_time", "images_per_s", "train_time")


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
    """Append-only ``metrics.jsonl`` on the main process, mirrored to the Accelerate trackers (W&B,
    TensorBoard) at the same step, with ``epoch`` and the record's other numbers (``epoch_time``)."""

    def __init__(self, path: Path, accelerator, start_time: float | None = None):
        self.path = Path(path)
        self.accelerator = accelerator
        self.start = start_time if start_time is not None else time.time()
        self.trackers_failed = False

    def log(self, split: str, epoch: int, step: int, values: dict[str, float], **extra: Any) -> dict:
        record = {"split": split, "epoch": epoch, "step": step, "time": round(time.time() - self.start, 3),
                  **extra, **{k: _clean(v) for k, v in values.items()}}
        if self.accelerator.is_main_process:
            with open(inside(self.path.parent, self.path), "a") as f:  # never appended through a planted link
                f.write(json.dumps(record) + "\n")
            numbers = {"epoch": epoch, **extra, **values}
            self._to_trackers({k: v for k, v in numbers.items() if _number(v)}, step)
        return record

    def _to_trackers(self, values: dict, step: int) -> None:
        if self.trackers_failed or not self.accelerator.trackers:
            return
        try:
            self.accelerator.log(values, step=step)
        except Exception as exc:  # W&B / TensorBoard must never stop training
            self.trackers_failed = True
            log.warning("tracker logging failed (%s); metrics still go to %s", exc, self.path)

    def _tracking(self) -> bool:
        return self.accelerator.is_main_process and not self.trackers_failed and bool(self.accelerator.trackers)

    def log_image(self, key: str, path: Path, step: int, caption: str = "") -> None:
        if self._tracking():
            log_picture(self.accelerator, key, path, step, caption)

    def log_masks(self, key: str, images, truths, preds, captions: list[str], class_labels: dict[int, str],
                  step: int) -> None:
        """Images with ground-truth and predicted masks as W&B overlays (``(H, W, 3)`` in [0, 1], ``(H, W)`` 0/1)."""
        if self._tracking():
            log_masks(self.accelerator, key, images, truths, preds, captions, class_labels, step)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
