"""Read back what an offline W&B run wrote: ``<run>/wandb/offline-run-*/run-<id>.wandb``.

wandb >= 0.20 no longer ships a Python reader (``wandb.sdk.internal.datastore`` is gone), so this is the
file format itself: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then LevelDB-log blocks of
32 KiB; each chunk has a 7-byte header (CRC-32C, length uint16 LE, type 1 full / 2 first / 3 middle /
4 last) and a block tail under 7 bytes is padding. Each assembled record is a ``wandb.proto`` Record.
Offline, every ``wandb.init`` (a training run, evaluate.py, a resume) writes its own offline-run-*
folder; ``wandb sync`` uploads them in order into the one run of that id.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list:
    """The ``Record``s of one ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, buf, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block tail: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if pos + HEADER + n > len(data):  # still being written
            break
        chunk = data[pos + HEADER:pos + HEADER + n]
        pos += HEADER + n
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def segments(run_dir: Path) -> list[Path]:
    """The offline-run folders of a run directory, oldest first (the name holds the start time)."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def segment_records(segment: Path, timeout: float = 60.0) -> list:
    """The records of one offline-run folder, once complete: wandb-core writes the file on its own
    schedule (it flushes every ~15 s) and may still be writing after ``run.finish()`` returned, so
    this waits for the ``exit`` record, which ends every finished run."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        files = list(segment.glob("run-*.wandb"))
        recs = records(files[0]) if len(files) == 1 else []
        if recs and recs[-1].WhichOneof("record_type") == "exit" or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def kinds(recs: list, kind: str) -> list:
    return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


def _items(items) -> dict:
    """Items by key; a nested key (a media value is written as its fields) is rebuilt as a dict."""
    out: dict = {}
    for i in items:
        path = [i.key] if i.key else list(i.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(i.value_json)
    return out


def history(recs: list) -> list[dict]:
    """The history rows (what ``run.log`` committed)."""
    return [_items(h.item) for h in kinds(recs, "history")]


def summary(recs: list) -> dict:
    """The summary as the run ends (later updates win; keys starting with ``_`` dropped)."""
    out: dict = {}
    for s in kinds(recs, "summary"):
        out.update(_items(s.update))
    return {k: v for k, v in out.items() if not k.startswith("_")}


def metric_definitions(recs: list) -> dict[str, object]:
    """``define_metric`` records by name (a glob under its pattern)."""
    return {m.name or m.glob_name: m for m in kinds(recs, "metric")}
