"""Runs read back from disk, their statistics, curves and the sweep summary; shared by ``compare.py``
(one line per run) and ``sweep.py`` (one line per cell, mean ± std over its seeds).

    run = open_run("runs/unet_dice")                 # config, one row per validated epoch
    stats = run_stats(run, "val/dice")               # best val/dice and its epoch, final val/*, epoch time
    plot_curves({"unet": [run]}, Path("curves.png"), x="time")

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

from sandbox.config import Config, load_config
from sandbox.errors import SandboxError
from sandbox.tracking import plt, read_metrics  # plt: matplotlib with the headless Agg backend
from matplotlib.ticker import MaxNLocator  # noqa: E402  (after the backend is chosen)

LOWER_IS_BETTER = ("loss", "l1", "rmse", "mse", "fid", "bpd", "time")  # in the last name part
RUN_HINT = "expected a run directory (runs/<name>) with config.yaml and metrics.jsonl, written by sandbox/train.py"


@dataclass
class Run:
    """One finished or partial run as read from disk; ``epochs``: one dict per validated epoch
    (``epoch`` 1-based, ``time`` s since start, ``epoch_time``, ``train/loss`` mean of its log
    lines, every numeric ``val/*``)."""
    path: Path
    cfg: Config
    label: str
    epochs: list[dict[str, float]] = field(default_factory=list)


def run_kind(cfg: Config) -> str:
    """``segmentation`` when the model is driven by the supervised trainer (MODELS registry), else ``generative``."""
    from sandbox.models import MODELS

    return "segmentation" if getattr(MODELS[cfg.model.name], "trainer", "supervised") == "supervised" else "generative"


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
        row = {"epoch": r["epoch"] + 1, "time": float(r["time"]), "epoch_time": _number(r.get("epoch_time"))}
        if train[r["epoch"]]:
            row["train/loss"] = float(np.mean(train[r["epoch"]]))
        row.update({k: _number(v) for k, v in r.items() if k.startswith("val/") and _number(v) is not None})
        rows.append(row)
    return rows


def open_run(path: str | Path, label: str | None = None) -> Run:
    """Read a run directory; anything else is one clear :class:`SandboxError` line."""
    path = Path(path)
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


def run_stats(run: Run, metric: str) -> dict[str, float]:
    """``best <metric>``, ``best epoch``, the final epoch's ``val/*`` (loss parts left out), mean ``epoch_time``
    and ``total_time`` (s since start at the last evaluation, resumes included)."""
    have = [e for e in run.epochs if metric in e and math.isfinite(e[metric])]
    out: dict[str, float] = {}
    if have:
        sign = -1 if lower_is_better(metric) else 1
        best = max(have, key=lambda e: (sign * e[metric], -e["epoch"]))  # ties: the earliest epoch
        out.update({f"best {metric}": best[metric], "best epoch": best["epoch"]})
    last = run.epochs[-1]
    out.update({k: v for k, v in last.items() if k.startswith("val/") and not k.startswith("val/loss/")})
    times = [e["epoch_time"] for e in run.epochs if e.get("epoch_time") is not None]
    out.update({"epoch_time": float(np.mean(times)) if times else float("nan"), "total_time": last["time"]})
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


# ----------------------------------------------------------------------------- plots

def curve_keys(groups: dict[str, list[Run]]) -> list[str]:
    keys = {k for runs in groups.values() for r in runs for e in r.epochs for k in e}
    vals = sorted(k for k in keys if k.startswith("val/") and not k.startswith("val/loss"))
    return [k for k in ("train/loss", "val/loss") if k in keys] + vals


def plot_curves(groups: dict[str, list[Run]], path: Path, x: str = "epoch") -> Path:
    """One panel per metric, one line per group vs ``x`` (``epoch`` or ``time``); a group of several
    runs (seeds) shows its mean with a ±1 std band over the epochs all of them reached."""
    keys = curve_keys(groups)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for i, key in enumerate(keys):
        ax = axes[i // cols, i % cols]
        for label, runs in groups.items():
            n = min(len(r.epochs) for r in runs)
            ys = np.array([[e.get(key, np.nan) for e in r.epochs[:n]] for r in runs])
            xs = np.array([[e[x] for e in r.epochs[:n]] for r in runs]).mean(0)
            mean = ys.mean(0)
            line, = ax.plot(xs / (60 if x == "time" else 1), mean, "o-", ms=3, label=label)
            if len(runs) > 1:
                std = ys.std(0, ddof=1)
                ax.fill_between(xs / (60 if x == "time" else 1), mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(title=key, xlabel="epoch" if x == "epoch" else "wall time (min)")
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for j in range(len(keys), rows * cols):
        axes[j // cols, j % cols].axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_metric_vs(lines: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str, path: Path) -> Path:
    """``{line label: [(x, mean, std), ...]}`` -> error-bar lines; log x when x spans 20x or more."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs_all = []
    for label, pts in lines.items():
        pts = sorted(pts)
        xs, ms, ss = (np.array(v, dtype=float) for v in zip(*pts))
        xs_all += list(xs)
        ax.errorbar(xs, ms, yerr=np.nan_to_num(ss), fmt="o-", capsize=3, label=label)
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 20:
        ax.set_xscale("log")
    elif all(float(x).is_integer() for x in xs_all):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} vs {xlabel} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

# ----------------------------------------------------------------------------- files

def write_csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path

# ----------------------------------------------------------------------------- the sweep summary

def write_summary(specs: list, sweep_dir: Path, metric: str, study: dict, command: str, wall_s: float) -> Path:
    """summary.md, summary.csv (per cell: ``<stat>_mean/_std/_cv``), runs.csv, plots/, compare/ for a
    sweep's finished runs (``specs``: :class:`sandbox.sweep.Spec`); a study also gets report.md."""
    from sandbox.nn.measure import format_table, summarize

    sweep_dir = Path(sweep_dir)
    cells, by_cell, per_run = {}, defaultdict(list), []
    for s in specs:
        cells.setdefault(s.cell.name, s.cell)
        try:
            run = open_run(s.path, s.cell.name)
        except SandboxError:
            continue
        if len(run.epochs) >= s.epochs:  # unfinished runs are not averaged
            by_cell[s.cell.name].append(run)
            per_run.append({"run": s.name, "seed": s.seed, **run_stats(run, metric)})
    if not per_run:
        raise SandboxError(f"no finished run under {sweep_dir} to summarise")
    rows, table, measures, best_runs = [], [], [], []
    for name, runs in by_cell.items():
        stats = [run_stats(r, metric) for r in runs]
        row, md = {"cell": name, **cells[name].labels, "runs": len(runs)}, {"cell": name, "runs": len(runs)}
        for key in dict.fromkeys(k for st in stats for k in st):
            m, s, c = mean_std_cv([st[key] for st in stats if key in st])
            row.update({f"{key}_mean": m, f"{key}_std": s, f"{key}_cv": c})
            if key not in ("best epoch", "total_time"):
                md[key] = pm(m, s, c)
        rows.append(row)
        table.append(md)
        sign = -1 if lower_is_better(metric) else 1
        score = [sign * st[f"best {metric}"] if f"best {metric}" in st else -math.inf for st in stats]
        best_runs.append(runs[int(np.argmax(score))])
        try:  # measured, not assumed: params, FLOPs, bottleneck (predicted vs measured), receptive field
            got = summarize(runs[0].cfg)
            measures.append({"cell": name, **{k: got[k] for k in ("params", "gflops", "bottleneck_predicted",
                                                                   "bottleneck", "rf", "activation_mb")}})
        except (SandboxError, AttributeError, TypeError, RuntimeError) as exc:  # e.g. no .encoder
            measures.append({"cell": name, "note": f"not measured: {exc}"})
    write_csv(rows, sweep_dir / "summary.csv")
    write_csv(per_run, sweep_dir / "runs.csv")
    from sandbox.compare import compare_runs

    compare = compare_runs(best_runs, sweep_dir / "compare", metric, groups=dict(by_cell))
    plots = _metric_vs_plots(cells, by_cell, metric, sweep_dir / "plots")
    n_runs = sum(len(r) for r in by_cell.values())
    train_min = sum(r["total_time"] for r in per_run) / 60
    lines = [f"Command: `{command}`", "",
             f"{n_runs} of {len(specs)} runs finished; training time summed over runs {train_min:.1f} min; "
             f"this invocation's wall time {wall_s / 60:.1f} min (finished runs are skipped on a rerun).", "",
             f"Per cell: mean ± sample std (coefficient of variation) over seeds. `best {metric}`: each run's best "
             "epoch; val/* columns: the final epoch; epoch_time: seconds per epoch (training + validation).", "",
             format_table(table), "", "Measured per cell (forward GFLOPs per image, bottleneck side predicted as "
             "size / 2**depth vs the encoder's measured output, receptive field in px):", "",
             format_table(measures), "",
             f"Curves: mean ± std over seeds per cell; predictions and the table in [compare/report.md]"
             f"({compare.relative_to(sweep_dir)}) use the best seed of each cell.", "",
             "![curves vs epoch](compare/curves_epoch.png)", "![curves vs time](compare/curves_time.png)",
             "![predictions](compare/predictions.png)"]
    lines += ["![depth predictions](compare/depth.png)"] if (sweep_dir / "compare" / "depth.png").is_file() else []
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    (sweep_dir / "summary.md").write_text(f"# Sweep {sweep_dir.name}\n\n" + "\n".join(lines) + "\n")
    if not study:
        return sweep_dir / "summary.md"
    head = [f"# {study.get('title', sweep_dir.name)}", "", str(study.get("description", "")).strip(), ""]
    if study.get("expected_minutes"):
        head += [f"Expected time on 2 idle CPU cores (the study file's estimate): about {study['expected_minutes']} min.", ""]
    (sweep_dir / "report.md").write_text("\n".join(head + lines) + "\n")
    return sweep_dir / "report.md"


def _metric_vs_plots(cells: dict, by_cell: dict, metric: str, out: Path) -> list[Path]:
    """``best <metric>`` vs every swept numeric key (e.g. model.depth, data.num_train), one line per
    combination of the other axes."""
    paths = []
    keys = dict.fromkeys(k for c in cells.values() for k, v in c.overrides.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
    for key in keys:
        xs = {c.overrides.get(key) for c in cells.values()}
        if len(xs) < 2 or not all(isinstance(x, (int, float)) for x in xs):
            continue
        lines = defaultdict(list)
        for name, runs in by_cell.items():
            c = cells[name]
            axis = c.axis_of[key]
            label = "_".join(f"{a}-{lab}" for a, lab in c.labels.items() if a != axis) or metric
            m, s, _ = mean_std_cv([run_stats(r, metric).get(f"best {metric}", math.nan) for r in runs])
            lines[label].append((c.overrides[key], m, s))
        paths.append(plot_metric_vs(dict(lines), key, f"best {metric}", out / f"{slugify(metric)}_vs_{key}.png"))
    return paths


def slugify(s: str) -> str:
    return s.replace("/", "_").replace(" ", "_")
