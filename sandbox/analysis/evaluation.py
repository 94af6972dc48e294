"""Evaluating a trained run on a split: its config for evaluation, the result files and the table."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

from sandbox.build import build_data, target_classes
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import read_state
from sandbox.runs.inference import evaluate_dataset
from sandbox.runs.load import checkpoint_dir, load_run, run_config
from sandbox.runs.rundir import inside
from sandbox.tracking.wandb_run import to_summary

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

    keys = [k for k in records[0] if k not in ("index", "stem", "path", "split")
            and isinstance(records[0][k], (int, float))]  # worst_class is a name
    # per-class columns are NaN on images where the class is in neither truth nor prediction: left out
    stat = {"mean": np.nanmean, "median": np.nanmedian, "min": np.nanmin}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every image: NaN, said by the caller
        summary = {k: {name: float(f([r[k] for r in records])) for name, f in stat.items()} for k in keys}
    result = {**meta, "n": len(records), "means": {k: s["mean"] for k, s in summary.items()}, "summary": summary}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2))
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return result


def write_class_results(path: Path, confusion: dict, classes: dict, say: Callable[[str], None],
                        split: str) -> dict:
    """Split-level scores of each class target from its confusion matrix (rows truth, columns prediction):
    ``<path>_confusion[_<target>].csv`` and ``.png``, and ``{"classes": {target: {class: {iou, dice, present}},
    "miou": ...}}`` for the result JSON; a class never in the split's truth is said once (no silent NaN)."""
    import numpy as np
    import torch

    from sandbox.metrics import class_scores
    from sandbox.viz.panels import confusion_figure

    out: dict = {}
    for target, matrix in confusion.items():
        names, m = classes[target], torch.as_tensor(matrix).double()
        tp = m.diag()
        sc = class_scores(tp, m.sum(0) - tp, m.sum(1) - tp)
        stem = path.name + ("_confusion" if target == "mask" else f"_confusion_{target}")
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["truth \\ prediction," + ",".join(names)]
        lines += [f"{n}," + ",".join(str(int(v)) for v in row) for n, row in zip(names, m.tolist())]
        (path.parent / f"{stem}.csv").write_text("\n".join(lines) + "\n")
        confusion_figure(np.asarray(m), names, path.parent / f"{stem}.png", f"{target}: {split} split")
        absent = [n for n, p in zip(names, sc["present"].tolist()) if not p]
        if absent:
            say(f"note: {target} class(es) {', '.join(absent)} never occur in the truth of the {split} split; "
                "their IoU is left out of the mIoU (reported as null)")
        out[target] = {"miou": float(sc["miou"]), "mdice": float(sc["mdice"]), "confusion_csv": f"{stem}.csv",
                       "per_class": {n: {"iou": float(sc["iou"][i]) if sc["present"][i] else None,
                                         "dice": float(sc["dice"][i]) if sc["present"][i] else None}
                                     for i, n in enumerate(names)}}
    return {"classes": out} if out else {}


def table(result: dict) -> str:
    """Per-image means, medians and minima; then, for class targets, the split-level IoU per class."""
    w = max([14] + [len(k) + 2 for k in result["summary"]])
    lines = [f"{'metric':<{w}}{'mean':>9}{'median':>9}{'min':>9}"]
    lines += [f"{k:<{w}}{s['mean']:>9.4f}{s['median']:>9.4f}{s['min']:>9.4f}" for k, s in result["summary"].items()]
    for target, c in result.get("classes", {}).items():
        ious = ", ".join(f"{n} {v['iou']:.4f}" if v["iou"] is not None else f"{n} absent"
                         for n, v in c["per_class"].items())
        lines.append(f"{target}: mIoU {c['miou']:.4f} over the classes in the truth (split-level); IoU {ious}")
    return "\n".join(lines)


def evaluate_run(run_arg: str, which: str = "best", split: str = "test", threshold: float = 0.5,
                 batch_size: int | None = None, resolution: str = "net", tag: str = "",
                 overrides: list[str] = (), tta: str = "none",
                 say: Callable[[str], None] = lambda line: None) -> dict[str, dict]:
    """Score a run's checkpoint on ``split`` (test | val | train | all | whole) and write
    ``eval/<split>[_<tag>][_N].json/.csv``; ``say`` gets the progress and result lines. Returns
    ``{split: result}``; ``tta``: none | flip (:func:`sandbox.runs.inference.forward`). (One straight
    sequence of steps, kept whole so it reads as evaluate.py does.)"""
    overrides = list(overrides)
    run, ckpt = checkpoint_dir(run_arg, which)
    cfg = run_config(run_arg, which, overrides)  # which heads it has, before any weight is read
    classes = {t: [c.name for c in specs] for t, specs in target_classes(cfg).items() if t in (cfg.loss or {})}
    cfg, model = load_run(run_arg, which, overrides, task="segmentation", need=() if classes else ("mask",))
    cfg = eval_config(cfg, run, overrides)
    if resolution == "original" and classes:
        raise SandboxError("--resolution original: class maps are scored at the net's size (data.size); "
                           "use --resolution net")
    if resolution == "original" and cfg.data.name != "folder":
        raise SandboxError(f"--resolution original: {cfg.data.name} images exist only at data.size; "
                           "it needs a labelled folder (data.name=folder)")
    splits = ("train", "val", "test") if split in ("all", "whole") else (split,)
    datasets = build_data(cfg, splits)
    state = read_state(ckpt) if (ckpt / "trainer_state.json").is_file() else {}
    names = [split] if split != "all" else list(splits)
    stems = [n + (f"_{tag}" if tag else "") for n in names]
    suffix = free_stem(run / "eval", stems)
    if any(o.startswith("data.root=") for o in overrides) and split not in ("whole", "all"):
        say(f"note: scoring the {split} split of {cfg.data.root}; --split whole scores every image")
    bs = batch_size or cfg.data.batch_size
    results: dict[str, list[dict]] = {}
    written: dict[str, dict] = {}
    confusion: dict[str, dict] = {}  # {split: {target: (K, K) pixel counts}}
    for s in splits:
        if not len(datasets[s]):
            if split in ("all", "whole"):  # e.g. a folder split with data.val_fraction=0
                say(f"{s}: empty, skipped")
                continue
            raise SandboxError(f"the {s} split of {cfg.data.root or cfg.data.name} is empty; pick another --split")
        t0 = time.time()
        confusion[s] = {}
        recs = evaluate_dataset(model, datasets[s], threshold, bs, cfg.train.channels_last, progress=s,
                                original_size=resolution == "original", flip=tta == "flip", classes=classes,
                                confusion=confusion[s])
        results[s] = [{"split": s, **r} if split == "whole" else r for r in recs]
        say(f"{s}: {len(recs)} images in {time.time() - t0:.1f} s")
    if split == "whole":
        results = {"whole": [r for recs in results.values() for r in recs]}
        confusion = {"whole": {t: sum(c[t] for c in confusion.values() if t in c)
                               for t in {t for c in confusion.values() for t in c}}}
    net = resolution == "net"
    where = f"at {cfg.data.size} px" if net else "at each image's own size"
    meta = {"run": str(run), "checkpoint": str(ckpt), "epoch": state.get("epoch"), "step": state.get("step"),
            "threshold": threshold, "tta": tta, "resolution": cfg.data.size if net else "original", "batch_size": bs,
            "device": str(next(model.parameters()).device), "overrides": overrides,
            "data": {k: v for k, v in vars(cfg.data).items() if k != "augment"},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name, stem in zip(names, stems):
        if name not in results:
            continue
        path = inside(run, run / "eval" / f"{stem}{suffix}")
        per_class = write_class_results(path, confusion.get(name, {}), classes, say, name)
        result = written[name] = write_results(path, results[name], {"split": name, **meta, **per_class})
        say(f"\n{name}: {result['n']} images, {ckpt} (epoch {state.get('epoch')}), threshold {threshold}, "
              f"{where}{', flip TTA' if tta == 'flip' else ''}\n{table(result)}\n"
              f"wrote {path}.json and {path}.csv")
    # the same W&B run's summary (no history row): eval/<split>/<metric> and the per-image table
    to_summary(cfg.track, run, {f"eval/{stem}/{k}": v for name, stem in zip(names, stems) if name in written
                                for k, v in written[name]["means"].items()},
               tables={f"eval/{stem}/images": results[name] for name, stem in zip(names, stems) if name in written})
    return written
