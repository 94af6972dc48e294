"""The written summary of a sweep or study: summary.md / report.md, summary.csv, runs.csv, plots/ and
compare/ (the best seed of each cell)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from sandbox.analysis.compare import compare_runs
from sandbox.analysis.measure import summarize
from sandbox.analysis.reports import lower_is_better, mean_std_cv, open_run, pm, run_stats, write_csv
from sandbox.analysis.study_report import protocol_report
from sandbox.analysis.tables import format_table
from sandbox.errors import SandboxError
from sandbox.viz.curves import plot_metric_vs


def write_summary(specs: list, sweep_dir: Path, metric: str, study: dict, command: str, wall_s: float) -> Path:
    """summary.md, summary.csv (per cell: ``<stat>_mean/_std/_cv``), runs.csv, plots/, compare/ for a
    sweep's finished runs (``specs``: :class:`sandbox.analysis.sweep.Spec`); a study also gets report.md.
    (A little over 60 lines: it writes one report top to bottom.)"""
    sweep_dir = Path(sweep_dir)
    cells, by_cell, per_run, finished = {}, defaultdict(list), [], []
    for s in specs:
        cells.setdefault(s.cell.name, s.cell)
        try:
            run = open_run(s.path, s.cell.name)
        except SandboxError:
            continue
        if len(run.epochs) >= s.epochs:  # unfinished runs are not averaged
            by_cell[s.cell.name].append(run)
            finished.append((s, run))
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
    compare = compare_runs(best_runs, sweep_dir / "compare", metric, groups=dict(by_cell))
    plots = _metric_vs_plots(cells, by_cell, metric, sweep_dir / "plots")
    n_runs = sum(len(r) for r in by_cell.values())
    train_min = sum(r["total_time"] for r in per_run) / 60
    lines = [f"Command: `{command}`", "",
             f"{n_runs} of {len(specs)} runs finished; training time summed over runs {train_min:.1f} min; "
             f"this invocation's wall time {wall_s / 60:.1f} min (finished runs are skipped on a rerun).", "",
             f"Per cell: mean ± sample std (coefficient of variation) over seeds. `best {metric}`: each run's best "
             "epoch; val/* columns: the final epoch; epoch_time: seconds per epoch (training + validation); "
             "train_time: seconds in training steps, summed over epochs.", "",
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
    if study.get("protocol"):  # the study's answer first; the sweep's val summary below it
        head += protocol_report(finished, study["protocol"], sweep_dir, cells, sorted({s.seed for s in specs}),
                                wall_s) + ["## Training on val (the sweep's summary)", ""]
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
