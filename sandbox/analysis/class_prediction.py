"""predict.py on class maps: which targets a run (or an exported file) predicts, a class map's scores against
its truth, and its files (a palette PNG of the class ids and an overlay with the fixed colour legend).

    targets = run_targets(cfg, run)             # {"parts": (ClassSpec, ...)} / {"mask": None} (binary)
    targets = exported_targets(spec, path)      # the same, from an export's preprocessing.json
    row = class_scores(ids, truth, names)       # miou, pixel_acc, worst_class, worst_iou, iou_<class>, mdice

The scores are those of :func:`sandbox.metrics.class_metrics` (its conventions: IoU NaN where a class is in
neither prediction nor truth, mIoU the mean over the classes present in the image's truth, pixel accuracy
over labelled pixels), computed from one confusion count in numpy: a photo of any size at K classes costs
one (H, W) array, not K one-hot planes. Boundary F1 is left to evaluate.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from sandbox.build import target_classes
from sandbox.data.classes import ClassSpec, colors
from sandbox.errors import SandboxError

SEGMENTATION_HINT = ("expected a segmentation run with a mask head (loss.mask, e.g. configs/unet_dice.yaml) or a "
                     "class-map target (e.g. dancers' parts, configs/unet_parts.yaml)")
MULTILABEL = ("predict.py draws single-label class maps (one class per pixel); evaluate.py scores multi-label "
              "runs per class")

Targets = dict[str, Optional[tuple[ClassSpec, ...]]]  # output -> its classes, None for the binary mask


def run_targets(cfg, run: Path) -> Targets:
    """The outputs predict.py writes for a trained run, the scored one first: ``mask`` (binary: None, or
    its ``data.classes``) when the run has it, then its class-map targets (dancers' ``parts``) in loss order."""
    classes = target_classes(cfg)
    targets = {t: classes.get(t) for t in sorted(cfg.loss, key=lambda t: t != "mask") if t == "mask" or t in classes}
    if not targets:
        raise SandboxError(f"{str(run)!r}: the {cfg.model.name} run has no mask head and no class-map target "
                           f"(targets: {', '.join(cfg.loss) or 'none'}); {SEGMENTATION_HINT}")
    if cfg.data.multilabel and any(targets.values()):
        raise SandboxError(f"{str(run)!r}: its {', '.join(t for t, c in targets.items() if c)} target is multi-label "
                           f"(data.multilabel: true); {MULTILABEL}")
    return targets


def exported_targets(spec: dict, path: Path) -> Targets:
    """:func:`run_targets` for an exported model, from its checked preprocessing.json: an output with
    ``classes`` is a class map; a ``mask`` of several channels without them (an older export) takes the
    file's top-level ``classes``."""
    targets: Targets = {}
    for o in sorted(spec["outputs"], key=lambda o: o["name"] != "mask"):
        listed = o.get("classes") or (spec["classes"] if o["name"] == "mask" and o["channels"] > 1 else None)
        if listed is None and o["name"] != "mask":
            continue  # a regression head (depth)
        if listed is not None and len(listed) != o["channels"]:
            raise SandboxError(f"{path.parent / 'preprocessing.json'}: output {o['name']} has {o['channels']} "
                               f"channels but {len(listed)} classes; expected one class per channel")
        if listed is not None and (o.get("multilabel") or o["activation"] == "sigmoid"):
            raise SandboxError(f"--model {str(path)!r}: its {o['name']} output is multi-label; {MULTILABEL}")
        targets[o["name"]] = None if listed is None else tuple(
            ClassSpec(c["name"], tuple(c["color"]) if c.get("color") else None) for c in listed)
    return targets


def class_scores(ids: np.ndarray, truth: np.ndarray, names: list[str], prefix: str = "") -> dict:
    """A predicted class map ``ids (H, W)`` against ``truth (H, W)`` (ids, -1 unlabelled) ->
    ``{<prefix>miou, <prefix>mdice, <prefix>pixel_acc, <prefix>worst_class, <prefix>worst_iou,
    <prefix>iou_<class>...}`` (module doc; the worst class is the lowest IoU among those in the truth)."""
    k = len(names)
    labelled = truth >= 0
    conf = np.bincount(truth[labelled].astype(np.int64) * k + ids[labelled].astype(np.int64),
                       minlength=k * k).reshape(k, k)  # rows: truth
    tp = np.diag(conf).astype(np.float64)
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    seen, present = (tp + fp + fn) > 0, (tp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(seen, tp / (tp + fp + fn), np.nan)
        dice = np.where(seen, 2 * tp / (2 * tp + fp + fn), np.nan)
    worst = int(np.argmin(np.where(present, iou, np.inf))) if present.any() else None
    row = {f"{prefix}miou": float(iou[present].mean()) if present.any() else 1.0,
           f"{prefix}mdice": float(dice[present].mean()) if present.any() else 1.0,
           f"{prefix}pixel_acc": float(tp.sum() / max(1, labelled.sum())),
           f"{prefix}worst_class": names[worst] if worst is not None else "",
           f"{prefix}worst_iou": float(iou[worst]) if worst is not None else float("nan")}
    row.update({f"{prefix}iou_{n}": float(iou[c]) for c, n in enumerate(names)})
    return row


def score_columns(targets: Targets) -> list[str]:
    """predictions.csv's class columns: those of the scored (first) target when it is a class map."""
    first, specs = next(iter(targets.items()))
    if not specs:
        return []
    names = [s.name for s in specs]
    cols = class_scores(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64), names, prefix_of(first))
    return [c for c in cols if not c.endswith("mdice")]  # the row's dice column holds the mean Dice


def prefix_of(target: str) -> str:
    """Column prefix of a class target, as evaluate.py's test.csv names them: bare for mask, ``parts_``."""
    return "" if target == "mask" else f"{target}_"


def file_names(name: str, target: str) -> tuple[str, str]:
    """``(class-id PNG, overlay)`` file names: ``<name>_classes.png`` and ``<name>_overlay.png`` for a class
    map in ``mask``; ``<name>_<target>.png`` and ``<name>_<target>_overlay.png`` for another target."""
    return (f"{name}_classes.png", f"{name}_overlay.png") if target == "mask" else \
        (f"{name}_{target}.png", f"{name}_{target}_overlay.png")


def write_class_map(out: Path, name: str, target: str, img: np.ndarray, ids: np.ndarray,
                    specs: tuple[ClassSpec, ...], scores: Optional[dict] = None) -> None:
    """The files of one predicted class map: a palette PNG of the ids (pixel value = class id; its palette the
    class colours, so it reads back as a class map by the folder rules) and the image tinted by class with the
    fixed colour legend of the panels (:func:`sandbox.data.classes.colors`), the mIoU and worst class on it."""
    from sandbox.viz.panels import class_overlay

    ids_file, overlay_file = file_names(name, target)
    pal = Image.fromarray(ids.astype(np.uint8), "P")
    pal.putpalette(colors(specs).ravel().tolist())
    pal.save(out / ids_file)
    p = prefix_of(target)
    label = None if scores is None else f"mIoU {scores[p + 'miou']:.3f}" + (
        f", worst {scores[p + 'worst_class']} {scores[p + 'worst_iou']:.2f}" if scores[p + "worst_class"] else "")
    Image.fromarray(class_overlay(img, ids, colors(specs), [s.name for s in specs], label)).save(out / overlay_file)
