"""A committed study's report recomputed from its CSVs, without its runs (which are not committed): the
corrections of the statistics (Holm, the resampled t-test) reach reports written before them.

    rebuild_report(Path("results/human_seg"), study["protocol"], {c.name: c for c in make_cells(study["grid"])})

``results/rebuild.py`` does it for every committed study.
"""
from __future__ import annotations

import csv
from pathlib import Path

from sandbox.analysis.study_report import results_section, study_comparisons


def read_records(path: Path) -> list[dict]:
    """report_runs.csv back as :func:`run_record` wrote it: empty -> None, integers and floats as numbers
    (csv writes floats by repr, so they come back exact), the rest as text."""
    def value(x: str):
        if x == "":
            return None
        for kind in (int, float):
            try:
                return kind(x)
            except ValueError:
                pass
        return x

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def rebuild_report(folder: Path, protocol: dict, cells: dict) -> Path:
    """A committed study's report.md, report.csv and comparisons.csv recomputed from its report_runs.csv,
    without its runs: the numbers section of report.md (per-cell table to the wall-time line) is replaced,
    the rest (protocol paragraph, warnings, machine, the sweep's val summary) kept. The per-image bootstrap
    needs the runs' eval/test.csv, which are not committed: its columns are copied from the committed
    comparisons.csv (matched by a, b, metric), and report.md says so."""
    folder = Path(folder)
    records = [{k: v for k, v in r.items() if k != "per_image"} for r in read_records(folder / "report_runs.csv")]
    old = {(r["a"], r["b"], r["metric"]): r for r in read_records(folder / "comparisons.csv")} \
        if (folder / "comparisons.csv").is_file() else {}
    comps = study_comparisons(records, protocol)
    for c in comps:
        kept = old.get((c["a"], c["b"], c["metric"]), {})
        c.update({k: kept[k] for k in ("bootstrap_lo", "bootstrap_hi", "images") if kept.get(k) is not None})
    text = (folder / "report.md").read_text().split("\n")
    i = next(k for k, ln in enumerate(text) if ln.startswith("Per cell, over seeds:"))
    j = next(k for k, ln in enumerate(text) if k > i and ln.startswith("Wall time:"))
    note = ("; rebuilt from report_runs.csv without the runs (sandbox/analysis/study_rebuild.py), "
            "the bootstrap columns as computed from the runs' per-image scores" if old else "")
    body, _ = results_section(records, protocol, cells, folder, comps, note)
    (folder / "report.md").write_text("\n".join(text[:i] + body + text[j:]))
    return folder / "report.md"
