"""The run's own metrics file: ``metrics.jsonl``, one JSON object per log event, appended on the main
process and mirrored to the Accelerate trackers (W&B, TensorBoard); read back and truncated on resume.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from sandbox.data.textfile import open_regular
from sandbox.errors import SandboxError, short
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
    rewritten from 1, so that the resumed run appends alike). Atomic; returns records dropped.
    A line that is not a record (but a torn last one) stops the resume, naming it: the file is rewritten
    here, and dropping the line would lose it for good (read-only readers skip it with a warning)."""
    path = Path(path)
    if not path.exists():
        return 0
    records, bad, lines = scan_metrics(path)
    if bad:
        n, why = bad[0]
        more = f" ({len(bad) - 1} more such line(s))" if len(bad) > 1 else ""
        raise SandboxError(f"{short(str(path))}: line {n} is not a metrics record ({why}){more}; expected "
                           f"{RECORD_HINT}: fix or delete the line, then resume (a resume rewrites the file)")
    renumbered = from_one(records)
    keep = [r for r in renumbered if r["step"] <= step and (r["split"] != "val" or r["epoch"] <= epoch)]
    if len(keep) != lines or renumbered is not records:
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))
    return lines - len(keep)


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


#: the fields every reader of a record keys on (truncate, reports, plots): (accepts, what the message says is
#: expected). Required; ``time`` (MetricsLog.log writes it too) is checked where present, as other values are not:
#: readers take the numbers among them and pass over the rest.
RECORD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "split": (lambda v: isinstance(v, str) and v != "", "a split name (train, val)"),
    "epoch": (lambda v: _count(v), "an integer >= 0"),
    "step": (lambda v: _count(v), "an integer >= 0"),
}
OPTIONAL_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "time": (lambda v: _number(v), "a number of seconds"),
}
RECORD_HINT = "one JSON object per line with split, epoch and step, as train.py writes"
MAX_LINE = 1 << 20  # a record is well under 10 KiB: a longer line is not one (a binary file without newlines)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _lines(f) -> Iterator[bytes | None]:
    """The lines of a binary file, ``None`` for one over :data:`MAX_LINE` (skipped, never held whole)."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = f.readline(MAX_LINE)
            yield None
        else:
            yield line


def _record(raw: bytes | None) -> dict:
    """One line as a record; else ``ValueError`` saying why in a few words."""
    if raw is None:
        raise ValueError(f"over {MAX_LINE >> 20} MiB long")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:
        raise ValueError(f"not readable as JSON ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    for field, (accepts, expected) in {**RECORD_FIELDS, **OPTIONAL_FIELDS}.items():
        if field not in record and field in RECORD_FIELDS:
            raise ValueError(f"no field {field!r}")
        if field in record and not accepts(record[field]):
            raise ValueError(f"field {field!r} is {short(record[field], 60)}, expected {expected}")
    return record


def scan_metrics(path: Path) -> tuple[list[dict], list[tuple[int, str]], int]:
    """``(records, bad lines as (line number, why), lines in the file)`` of a metrics.jsonl, read line by
    line (a file of any size). Blank lines are skipped; a last line without its newline that does not
    parse is one torn by a kill, which is normal: it is dropped, not bad."""
    records, bad, n = [], [], 0
    with open_regular(path, RECORD_HINT) as f:  # a FIFO in its place would block the read forever
        for n, raw in enumerate(_lines(f), start=1):
            if raw is not None and not raw.strip():
                continue
            try:
                records.append(_record(raw))
            except ValueError as exc:
                bad.append((n, str(exc)))
        # a kill mid-write tears the last line: it lacks its newline and is not JSON (a prefix of a record
        # never is); normal, dropped, the rest is still good
        if bad and bad[-1][0] == n and raw is not None and not raw.endswith(b"\n") \
                and bad[-1][1].startswith("not JSON"):
            bad.pop()
    return records, bad, n


def read_metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (epochs from 1, :func:`from_one`), for the readers that only
    look (compare, reports, plots): a line that is not a record is skipped with one warning naming it,
    so the rest of a run's history stays readable; a resume refuses it (:func:`truncate_metrics`)."""
    path = Path(path)
    if not path.exists():
        return []
    records, bad, _ = scan_metrics(path)
    if bad:
        log.warning("%s: skipped %d line(s) that are not metrics records (line %d: %s); expected %s",
                    short(str(path)), len(bad), bad[0][0], bad[0][1], RECORD_HINT)
    return from_one(records)
