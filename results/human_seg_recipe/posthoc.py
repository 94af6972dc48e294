"""Post-hoc comparisons behind results/human_seg_recipe/README.md (not part of either study's protocol):

    python results/human_seg_recipe/posthoc.py      # after both studies ran -> posthoc.md beside this file

1. What the second recipe bought over the first, per model: configs/studies/human_seg_recipe.yaml against
   configs/studies/human_seg.yaml, the same seeds and therefore the same splits and test photos: test Dice paired
   over seeds (t-test) and over the photos (bootstrap). Across two study files, chosen after the first one's
   results: post hoc.
2. Flip test-time augmentation (evaluate.py --tta flip) on the second recipe's val-selected checkpoints, tried
   after the study's test numbers were known: on val first (the split a choice may look at), then on test.
   Missing eval files are written by evaluate.py's own code (eval/<split>_flip.csv, eval/val.csv).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.analysis.evaluation import evaluate_run  # noqa: E402
from sandbox.analysis.significance import bootstrap_diff, mean_ci, paired_test, verdict  # noqa: E402

STUDIES = ROOT / "runs" / "studies"
SEEDS = (0, 1, 2)


def dice(run: Path, split: str, tta: str = "none") -> dict[str, float]:
    """Per-photo test/val Dice of the run's val-selected checkpoint (checkpoints/best), by file stem."""
    stem = f"{split}_flip" if tta == "flip" else split
    path = run / "eval" / f"{stem}.csv"
    if not path.is_file():
        evaluate_run(str(run), "best", split, tta=tta, tag="flip" if tta == "flip" else "")
    with path.open() as f:
        return {r["stem"]: float(r["dice"]) for r in csv.DictReader(f)}


def compare(label: str, a: list[dict], b: list[dict]) -> str:
    """b - a, paired over seeds and over each seed's photos."""
    ma, mb = [sum(x.values()) / len(x) for x in a], [sum(x.values()) / len(x) for x in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys(), "the paired runs scored different photos"
    t = paired_test(ma, mb)
    boot = bootstrap_diff([[y[k] - x[k] for k in x] for x, y in zip(a, b)])
    ca, cb = mean_ci(ma), mean_ci(mb)
    return (f"| {label} | {ca.mean:.3f} ± {ca.std:.3f} ({' / '.join(f'{v:.3f}' for v in ma)}) | "
            f"{cb.mean:.3f} ± {cb.std:.3f} ({' / '.join(f'{v:.3f}' for v in mb)}) | {t.diff.mean:+.3f} "
            f"[{t.diff.lo:+.3f}, {t.diff.hi:+.3f}] | [{boot[1]:+.3f}, {boot[2]:+.3f}] | {verdict(t.p)} |")


def main() -> None:
    first, second = STUDIES / "human_seg", STUDIES / "human_seg_recipe"
    head = ("| comparison | a: mean ± std (per seed) | b: mean ± std (per seed) | b - a, 95 % CI over seeds | "
            "bootstrap CI over photos | paired t-test |\n|---|---|---|---|---|---|")
    lines = ["# Post-hoc comparisons (results/human_seg_recipe/posthoc.py)", "",
             "Dice of each run's val-selected checkpoint; seeds 0, 1, 2 (same splits in both studies).", "",
             "## Second recipe (b) vs first (a), test split", "", head]
    for model in ("unet", "hourglass"):
        a = [dice(first / f"model-{model}_s{s}", "test") for s in SEEDS]
        b = [dice(second / f"model-{model}_s{s}", "test") for s in SEEDS]
        lines.append(compare(model, a, b))
    lines += ["", "## Flip TTA (b) vs none (a), second recipe", "", head]
    for split in ("val", "test"):
        for model in ("unet", "hourglass"):
            runs = [second / f"model-{model}_s{s}" for s in SEEDS]
            lines.append(compare(f"{model}, {split}", [dice(r, split) for r in runs],
                                 [dice(r, split, "flip") for r in runs]))
    lines += ["", "## UNet (b) vs HourGlass (a), second recipe with flip TTA", "", head]
    for split in ("val", "test"):
        lines.append(compare(f"{split}", [dice(second / f"model-hourglass_s{s}", split, "flip") for s in SEEDS],
                             [dice(second / f"model-unet_s{s}", split, "flip") for s in SEEDS]))
    out = Path(__file__).with_name("posthoc.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nwrote {out}")


if __name__ == "__main__":
    main()
