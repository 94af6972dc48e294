"""Post-hoc comparisons behind results/human_seg_recipe/README.md (not part of either study's protocol):

    python results/human_seg_recipe/posthoc.py      # after both studies ran -> posthoc.md beside this file

1. What the second recipe bought over the first, per model: configs/studies/human_seg_recipe.yaml against
   configs/studies/human_seg.yaml, the same seeds and therefore the same splits and test photos: test Dice paired
   over seeds (t-test) and over the photos (bootstrap). Across two study files, chosen after the first one's
   results: post hoc.
2. Flip test-time augmentation (evaluate.py --tta flip) on the second recipe's val-selected checkpoints, tried
   after the study's test numbers were known: on val first (the split a choice may look at), then on test.
   Missing eval files are written by evaluate.py's own code (eval/<split>_flip.csv, eval/val.csv).

Every comparison here is exploratory (chosen after results were known, outside the studies' planned pairs): its
p is not Holm-adjusted and carries no verdict. The seeds re-split the same 193 photos, so the test is the
studies' own Nadeau-Bengio corrected resampled t-test (n_test / n_train from configs/studies/human_seg_recipe.yaml).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.analysis.evaluation import evaluate_run  # noqa: E402
from sandbox.analysis.significance import mean_ci  # noqa: E402
from sandbox.analysis.study_report import adjust, compare_pair, test_train  # noqa: E402
from sandbox.analysis.sweep import load_study  # noqa: E402

STUDIES = ROOT / "runs" / "studies"
SEEDS = (0, 1, 2)
TEST_TRAIN = test_train(load_study(str(ROOT / "configs" / "studies" / "human_seg_recipe.yaml"))["protocol"])


def scored(run: Path, split: str, tta: str = "none") -> Path:
    """eval/<split>[_flip].csv of the run's val-selected checkpoint (checkpoints/best), written if missing."""
    stem = f"{split}_flip" if tta == "flip" else split
    path = run / "eval" / f"{stem}.csv"
    if not path.is_file():
        evaluate_run(str(run), "best", split, tta=tta, tag="flip" if tta == "flip" else "")
    return path


def compare(label: str, a: list[Path], b: list[Path]) -> str:
    """b - a over the seeds (element i of both: seed i, the same photos) by the studies' own compare_pair:
    corrected resampled t-test over seeds, paired bootstrap over each seed's photos; exploratory: not adjusted."""
    records = []
    for cell, paths in (("a", a), ("b", b)):
        for seed, path in zip(SEEDS, paths):
            with path.open() as f:
                values = [float(r["dice"]) for r in csv.DictReader(f)]
            records.append({"cell": cell, "seed": seed, "eval/dice": sum(values) / len(values), "per_image": str(path)})
    # metric "<split>/dice": the key is what follows the "/"
    c = adjust([compare_pair(records, "a", "b", "eval/dice", test_train=TEST_TRAIN) | {"planned": False}], TEST_TRAIN)[0]
    ma, mb = ([r["eval/dice"] for r in records if r["cell"] == x] for x in ("a", "b"))
    ca, cb = mean_ci(ma), mean_ci(mb)
    return (f"| {label} | {ca.mean:.3f} ± {ca.std:.3f} ({' / '.join(f'{v:.3f}' for v in ma)}) | "
            f"{cb.mean:.3f} ± {cb.std:.3f} ({' / '.join(f'{v:.3f}' for v in mb)}) | {c['diff_mean']:+.3f} "
            f"[{c['diff_ci_lo']:+.3f}, {c['diff_ci_hi']:+.3f}] | [{c['bootstrap_lo']:+.3f}, {c['bootstrap_hi']:+.3f}] | "
            f"{c['verdict']} |")


def main() -> None:
    first, second = STUDIES / "human_seg", STUDIES / "human_seg_recipe"
    head = ("| comparison | a: mean ± std (per seed) | b: mean ± std (per seed) | b - a, 95 % CI over seeds | "
            "bootstrap CI over photos | corrected resampled t-test |\n|---|---|---|---|---|---|")
    lines = ["# Post-hoc comparisons (results/human_seg_recipe/posthoc.py)", "",
             "Dice of each run's val-selected checkpoint; seeds 0, 1, 2 (same splits in both studies).", "",
             "## Second recipe (b) vs first (a), test split", "", head]
    for model in ("unet", "hourglass"):
        a = [scored(first / f"model-{model}_s{s}", "test") for s in SEEDS]
        b = [scored(second / f"model-{model}_s{s}", "test") for s in SEEDS]
        lines.append(compare(model, a, b))
    lines += ["", "## Flip TTA (b) vs none (a), second recipe", "", head]
    for split in ("val", "test"):
        for model in ("unet", "hourglass"):
            runs = [second / f"model-{model}_s{s}" for s in SEEDS]
            lines.append(compare(f"{model}, {split}", [scored(r, split) for r in runs],
                                 [scored(r, split, "flip") for r in runs]))
    lines += ["", "## UNet (b) vs HourGlass (a), second recipe with flip TTA", "", head]
    for split in ("val", "test"):
        lines.append(compare(f"{split}", [scored(second / f"model-hourglass_s{s}", split, "flip") for s in SEEDS],
                             [scored(second / f"model-unet_s{s}", split, "flip") for s in SEEDS]))
    out = Path(__file__).with_name("posthoc.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nwrote {out}")


if __name__ == "__main__":
    main()
