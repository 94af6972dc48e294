"""Rebuild every committed study report from its CSVs, without retraining (the runs are not committed):

    python results/rebuild.py                  # every results/<study>/ with a report_runs.csv
    python results/rebuild.py human_seg        # one

For results/<study>/ it reads configs/studies/<study>.yaml (cells, planned pairs, the test its design needs:
resampled: for seeds that re-split one folder) and report_runs.csv, and rewrites report.csv, comparisons.csv
and the numbers of report.md (sandbox/analysis/study_rebuild.py); the per-image bootstrap is kept as committed.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.analysis.study_rebuild import rebuild_report  # noqa: E402
from sandbox.analysis.sweep import load_study, make_cells  # noqa: E402


def main(names: list[str]) -> None:
    folders = [ROOT / "results" / n for n in names] or sorted(p.parent for p in (ROOT / "results").glob("*/report_runs.csv"))
    for folder in folders:
        study = load_study(str(ROOT / "configs" / "studies" / f"{folder.name}.yaml"))
        cells = {c.name: c for c in make_cells(study["grid"])}
        print(f"wrote {rebuild_report(folder, study['protocol'], cells)}")


if __name__ == "__main__":
    main(sys.argv[1:])
