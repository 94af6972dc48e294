"""Evaluating a trained run on a split: its config for evaluation, the result files and the table."""
from __future__ import annotations

from pathlib import Path


# overrides that point at other data: the run's own splits/ no longer apply
OTHER_DATA = ("data.name", "data.root", "data.image_dir", "data.mask_dir", "data.depth_dir", "data.splits",
              "data.val_fraction", "data.test_fraction", "data.train_fraction", "data.num_train",
              "data.num_val", "data.num_test", "data.seq_len", "data.difficulty")


def eval_config(cfg, run: Path, overrides: list[str]):
    """The run's config for evaluation: no augmentation, the run's splits/, mask-only on folders without depth."""
    import dataclasses

    data = dataclasses.replace(cfg.data, augment=[])
    if (run / "splits").is_dir() and not any(o.startswith(OTHER_DATA) for o in overrides):
        data = dataclasses.replace(data, splits=str(run / "splits"))
    loss = cfg.loss
    if data.name == "folder" and not data.depth_dir:  # a depth model on masks only: score the mask
        loss = {k: v for k, v in loss.items() if k != "depth"}
    return dataclasses.replace(cfg, data=data, loss=loss)


def free_stem(folder: Path, stems: list[str]) -> str:
    """The first suffix ("", "_2", "_3", ...) for which no ``<stem><suffix>.json/.csv`` exists yet."""
    k = 1
    while True:
        suffix = "" if k == 1 else f"_{k}"
        if not any((folder / f"{s}{suffix}{ext}").exists() for s in stems for ext in (".json", ".csv")):
            return suffix
        k += 1


def write_results(path: Path, records: list[dict], meta: dict) -> dict:
    """``path.json`` (summary: n, means, mean/median/min per metric, ``meta``) and ``path.csv`` (per image)."""
    import csv
    import json

    import numpy as np

    keys = [k for k in records[0] if k not in ("index", "stem", "path", "split")]
    summary = {k: {"mean": float(np.mean([r[k] for r in records])),
                   "median": float(np.median([r[k] for r in records])),
                   "min": float(np.min([r[k] for r in records]))} for k in keys}
    result = {**meta, "n": len(records), "means": {k: s["mean"] for k, s in summary.items()}, "summary": summary}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2))
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return result


def table(result: dict) -> str:
    lines = [f"{'metric':<14}{'mean':>9}{'median':>9}{'min':>9}"]
    lines += [f"{k:<14}{s['mean']:>9.4f}{s['median']:>9.4f}{s['min']:>9.4f}" for k, s in result["summary"].items()]
    return "\n".join(lines)
