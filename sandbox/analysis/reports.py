"""Runs read back from disk and their statistics; shared by compare (one line per run) and sweeps
(one line per cell, mean ± std over its seeds).

    run = open_run("runs/unet_dice")                 # config, one row per validated epoch
    stats = run_stats(run, "val/dice")               # best val/dice and its epoch, final val/*, epoch time

Every number is read back from the runs' own files (``metrics.jsonl``, ``config.yaml``);
nothing is re-trained. Statistics over seeds: sample standard deviation (n - 1) and
coefficient of variation ``std / |mean|``.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sandbox.config import Config
from sandbox.config.loading import load_config
from sandbox.errors import SandboxError
from sandbox.metrics.selection import best_index
from sandbox.models import MODELS
from sandbox.runs.stages import final_run, is_staged
from sandbox.tracking.metrics_log import read_metrics

LOWER_IS_BETTER = ("loss", "l1", "rmse", "mse", "fid", "kid", "bpd", "time", "w1", "c2st")  # in the last name part
RUN_HINT = "expected a run directory (runs/<name>) with config.yaml and metrics.jsonl, written by sandbox/train.py"


@dataclass
class Run:
    """One finished or partial run as read from disk; ``epochs``: one dict per validated epoch
    (``epoch`` from 1, ``time`` s since start, ``epoch_time``, ``train/loss`` mean of its log
    lines, every numeric ``val/*``)."""
    path: Path
    cfg: Config
    label: str
    epochs: list[dict[str, float]] = field(default_factory=list)


def run_kind(cfg: Config) -> str:
    """The task of the run's model: ``segmentation`` or ``generative``."""
    return MODELS[cfg.model.name].task


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("nan", "inf", "-inf"):  # MetricsLog writes non-finite values as text
        return float(v)
    return None


def epoch_table(records: list[dict]) -> list[dict[str, float]]:
    """metrics.jsonl records -> one row per validated epoch (see :class:`Run`)."""
    train = defaultdict(list)
    for r in records:
        if r.get("split") == "train" and _number(r.get("train/loss")) is not None:
            train[r["epoch"]].append(_number(r["train/loss"]))
    rows = []
    for r in records:
        if r.get("split") != "val":
            continue
        seconds = _number(r.get("time"))  # NaN for a record without it (read_metrics requires split, epoch, step)
        row = {"epoch": r["epoch"], "time": math.nan if seconds is None else seconds,
               "epoch_time": _number(r.get("epoch_time")),
               "train_time": _number(r.get("train_time"))}
        if train[r["epoch"]]:
            row["train/loss"] = float(np.mean(train[r["epoch"]]))
        row.update({k: _number(v) for k, v in r.items() if k.startswith("val/") and _number(v) is not None})
        rows.append(row)
    return rows


def open_run(path: str | Path, label: str | None = None) -> Run:
    """Read a run directory (a finished staged run: its final stage, labelled by the staged run's name);
    anything else is one clear :class:`SandboxError` line."""
    path = Path(path)
    if is_staged(path):
        label, path = label or path.name, final_run(path)
    if not path.is_dir():
        raise SandboxError(f"{str(path)!r} is not a run: no such directory; {RUN_HINT}")
    for f in ("config.yaml", "metrics.jsonl"):
        if not (path / f).is_file():
            raise SandboxError(f"{str(path)!r} is not a run: no {f}; {RUN_HINT}")
    cfg = load_config(path / "config.yaml")
    epochs = epoch_table(read_metrics(path / "metrics.jsonl"))
    if not epochs:
        raise SandboxError(f"{str(path)!r} has no validated epoch in metrics.jsonl yet (stopped in its first epoch?)")
    return Run(path, cfg, label or cfg.name, epochs)


def check_same_kind(runs: list[Run]) -> str:
    kinds = {r.label: run_kind(r.cfg) for r in runs}
    if len(set(kinds.values())) > 1:
        raise SandboxError("cannot compare runs of different kinds: " + ", ".join(f"{k} is {v}" for k, v in kinds.items())
                           + "; compare segmentation runs with segmentation runs and generative with generative")
    return next(iter(kinds.values()))


def lower_is_better(metric: str) -> bool:
    return any(w in metric.rsplit("/", 1)[-1] for w in LOWER_IS_BETTER)


def metric_mode(run: Run, metric: str) -> str:
    """``max`` or ``min`` for ``metric`` in ``run``: the run's ``train.monitor_mode`` for its own monitor
    (the direction its ``checkpoints/best`` was chosen by), else by name (:func:`lower_is_better`)."""
    if metric == run.cfg.train.monitor:
        return run.cfg.train.monitor_mode
    return "min" if lower_is_better(metric) else "max"


def run_stats(run: Run, metric: str) -> dict[str, float]:
    """``best <metric>``, ``best epoch``, the final epoch's ``val/*`` (loss parts left out), mean ``epoch_time``,
    ``total_time`` (s since start at the last evaluation, resumes included) and ``train_time`` (s in training
    steps, summed over epochs; NaN for runs older than that field). The best epoch is the
    trainer's (:func:`sandbox.metrics.selection.best_index`): ties go to the lower ``val/loss``, an epoch
    with a NaN ``val/loss`` is never best."""
    out: dict[str, float] = {}
    i = best_index(run.epochs, metric, metric_mode(run, metric), monitor=metric == run.cfg.train.monitor)
    if i is not None:
        best = run.epochs[i]  # without the metric: a monitor the run never logged (checkpoints/best = last)
        out.update({f"best {metric}": best.get(metric, math.nan), "best epoch": best["epoch"]})
    last = run.epochs[-1]
    out.update({k: v for k, v in last.items() if k.startswith("val/") and not k.startswith("val/loss/")})
    times = [e["epoch_time"] for e in run.epochs if e.get("epoch_time") is not None]
    train = [e["train_time"] for e in run.epochs if e.get("train_time") is not None]
    out.update({"epoch_time": float(np.mean(times)) if times else float("nan"), "total_time": last["time"],
                "train_time": float(sum(train)) if len(train) == len(run.epochs) else float("nan")})
    return out


def mean_std_cv(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std (n - 1; NaN for one value) and ``std / |mean|``."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean()) if a.size else float("nan")
    std = float(a.std(ddof=1)) if a.size > 1 else float("nan")
    return mean, std, std / abs(mean) if mean else float("nan")


def pm(mean: float, std: float, cv: float | None = None) -> str:
    """``0.812 ± 0.011 (1.4 %)``; a lone value prints alone."""
    if not math.isfinite(std):
        return f"{mean:.4g}"
    s = f"{mean:.4g} ± {std:.2g}"
    return s + (f" ({100 * cv:.1f} %)" if cv is not None and math.isfinite(cv) else "")


# ----------------------------------------------------------------------------- files

def write_csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path
