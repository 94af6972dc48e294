"""Predicting with a trained run on image files: inputs, outputs, ground truth and the picture per image."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sandbox.analysis.class_prediction import (class_scores, exported_targets, prefix_of, run_targets, score_columns,
                                               write_class_map)
from sandbox.data.splits import list_images
from sandbox.errors import SandboxError
from sandbox.runs.exported import load_exported
from sandbox.runs.inference import predict_maps
from sandbox.runs.load import checkpoint_dir, load_run
from sandbox.runs.rundir import inside

EXPECTED = "image files (jpg, png, bmp, tif, webp) or a folder of them"


def gather(inputs: list[str], image_dir: str, mask_dir: str) -> tuple[list[Path], "Path | None", int]:
    """``(image files, the dataset's mask folder or None, number of non-image entries skipped)``."""
    from sandbox.data.splits import IMAGE_EXTS

    files, gt, skipped = [], None, 0
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise SandboxError(f"--input {raw!r}: no such file or folder; expected {EXPECTED}")
        if p.is_file():
            if p.suffix.lower() in IMAGE_EXTS:
                files.append(p)
            else:
                skipped += 1
            continue
        folder = p
        if image_dir not in (".", "") and (p / image_dir).is_dir():  # a dataset root of the run's layout
            folder, gt = p / image_dir, gt or ((p / mask_dir) if (p / mask_dir).is_dir() else None)
        elif p.resolve().name == image_dir and (p.resolve().parent / mask_dir).is_dir():  # that root's images
            gt = gt or p.resolve().parent / mask_dir
        entries = sorted(folder.iterdir())
        found = [e for e in entries if e.is_file() and not e.name.startswith(".") and e.suffix.lower() in IMAGE_EXTS]
        if not found:
            subs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
            hint = f"; its sub-folders {', '.join(subs[:4])} are not the run's {image_dir}/" if subs else ""
            raise SandboxError(f"--input {raw!r}: no image files in {folder} ({len(entries)} other "
                               f"entr{'y' if len(entries) == 1 else 'ies'}{hint}); expected {EXPECTED}")
        files += found
        skipped += len(entries) - len(found)
    first: dict[Path, Path] = {}
    for f in files:  # a file named twice (itself and its folder) is predicted once
        first.setdefault(f.resolve(), f)
    unique = list(first.values())
    if not unique:
        raise SandboxError(f"--input {' '.join(inputs)}: no image files ({skipped} other file(s)); expected {EXPECTED}")
    return unique, gt, skipped


def in_train_split(run: Path, data, files: list[Path]) -> list[Path]:
    """The ``files`` the run trained on: listed in its ``splits/train.csv`` (folder runs), as the same
    file under the run's ``data.root``, or, where that root is gone, by the same path below it."""
    from sandbox.data.splits import read_splits

    if not (run / "splits" / "train.csv").is_file():
        return []
    try:
        train = read_splits(run / "splits")["train"]
    except SandboxError:  # an unreadable list is not this command's business: nothing to compare
        return []
    root = Path(data.root) if data.root else None
    if root is not None and root.is_dir():
        seen = {(root / it.image).resolve() for it in train}
        return [f for f in files if f.resolve() in seen]
    tails = {Path(it.image).parts for it in train}
    return [f for f in files if any(f.resolve().parts[-k:] in tails for k in {len(t) for t in tails})]


def fresh_dir(path: Path) -> Path:
    """``path``, or ``path_2``, ``path_3``, ... : the first that does not exist or is empty, created."""
    cand, k = path, 1
    while cand.exists() and (not cand.is_dir() or any(cand.iterdir())):
        k += 1
        cand = path.with_name(f"{path.name}_{k}")
    try:
        cand.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SandboxError(f"--out {str(cand)!r}: cannot create it ({exc.strerror}); choose another --out") from None
    return cand


def overlay(img, pred, truth=None, dice=None):
    """``(H, W, 3) uint8`` image with the mask tinted, or the TP/FP/FN colours and the Dice -> PIL image."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from sandbox.viz.panels import error_overlay

    im = img.astype(np.float32) / 255.0
    if truth is None:
        out = im.copy()
        out[pred] = 0.45 * im[pred] + 0.55 * np.asarray([0.1, 0.85, 0.2], np.float32)
    else:
        out = error_overlay(im, pred, truth)
    pil = Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8))
    if dice is not None:
        draw = ImageDraw.Draw(pil)
        try:
            font = ImageFont.load_default(size=max(10, min(pil.size) // 14))
        except TypeError:  # Pillow < 10.1: one bitmap size
            font = ImageFont.load_default()
        x0, y0, x1, y1 = draw.textbbox((3, 3), f"Dice {dice:.3f}", font=font)
        draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), fill=(0, 0, 0))
        draw.text((3, 3), f"Dice {dice:.3f}", fill=(255, 255, 255), font=font)
    return pil


def save_depth(depth, stem: Path) -> None:
    """``depth (H, W)`` in [0, 1] -> ``<stem>_depth.png`` (16-bit, x 65535) and ``<stem>_depth_color.png``
    (viridis_r as in the trainer's panels: near = yellow, far = purple)."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    d = np.clip(depth, 0.0, 1.0)
    Image.fromarray((d * 65535 + 0.5).astype(np.uint16)).save(f"{stem}_depth.png")
    Image.fromarray((colormaps["viridis_r"](d)[..., :3] * 255 + 0.5).astype(np.uint8)).save(f"{stem}_depth_color.png")


def write_csv(path: Path, rows: list[dict], extra: list[str] = ()) -> None:
    """predictions.csv: the columns of every run, then ``extra`` (a class map's per-class scores)."""
    import csv

    cols = ["name", "image", "mask", "height", "width", "foreground", "dice", "iou", "written", *extra]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, restval="")
        writer.writeheader()
        writer.writerows(rows)


def output_names(files: list[Path]) -> dict[Path, str]:
    """``file -> output name``: its stem, numbered when two inputs share one (a.jpg and a.png)."""
    stems = [f.stem for f in files]
    names, seen = {}, {}
    for f in files:
        if stems.count(f.stem) > 1:
            seen[f.stem] = seen.get(f.stem, 0) + 1
        names[f] = f"{f.stem}_{seen[f.stem]}" if stems.count(f.stem) > 1 else f.stem
    return names


def read_pair(image: Path, mask: "Path | None", mask_threshold: float, mask_resize: str = "error",
              classes=None, ignore_index: int | None = None):
    """``(image (H, W, 3) uint8, mask (H, W) bool or None)``; the mask is binarised and fitted to
    its image by the folder dataset's rules (:mod:`sandbox.data.masks`); with ``classes`` (the run's
    ``data.classes``) it is read as a class map instead, ``(H, W)`` int ids, -1 unlabelled."""
    from sandbox.data.folders import open_image, to_rgb
    from sandbox.data.masks import fit_mask, to_class_map, to_mask

    img = to_rgb(open_image(image))
    if mask is None:
        return img, None
    if classes:
        ids = to_class_map(open_image(mask), classes, mask, ignore_index)
        return img, fit_mask(ids, img.shape[:2], mask, image, mask_resize).astype(np.int64)
    truth = fit_mask(to_mask(open_image(mask), mask_threshold).mask, img.shape[:2], mask, image, mask_resize)
    return img, truth.astype(bool)


def scores(pred, truth) -> tuple[float, float]:
    """Dice and IoU of two ``(H, W)`` bool masks; 1.0 when both are empty (as sandbox.metrics)."""
    inter, total = int((pred & truth).sum()), int(pred.sum() + truth.sum())
    return (2 * inter / total, inter / (total - inter)) if total else (1.0, 1.0)


def pair_masks(files: list[Path], gt: Path | None, failures_only: bool, data, say) -> tuple[dict, Path | None]:
    """``({image: its mask or None}, mask folder)``: masks paired by file stem; ``data``: the run's data config."""
    if gt is not None and not gt.is_dir():
        raise SandboxError(f"--mask-dir {str(gt)!r}: no such folder; expected a folder of masks named like the images")
    try:
        masks = list_images(gt) if gt is not None else {}
    except SandboxError as exc:
        raise SandboxError(f"--mask-dir: {exc}") from None
    paired = {f: masks.get(f.stem) for f in files}
    lone = [f.name for f, m in paired.items() if m is None]
    if gt is not None and len(lone) == len(files):
        raise SandboxError(f"none of the {len(files)} images has a mask in {gt} (paired by file stem, "
                           f"e.g. {files[0].name} -> {files[0].stem}.png)")
    if failures_only and gt is None:
        raise SandboxError("--failures-only needs ground truth: give --mask-dir DIR, or an --input dataset root with "
                           f"{data.image_dir}/ and {data.mask_dir}/ (the run's layout)")
    if gt is not None and lone:
        say(f"warning: {len(lone)} image(s) have no mask in {gt} ({', '.join(lone[:3])}): not scored")
    return paired, gt


def load_predictor(run_arg: str | None, which: str | None, model_file: str | None):
    """``(run directory or None, cfg, model, targets)``: the run's checkpoint, or an exported file (``--model``;
    its preprocessing.json gives the size, resize policy and classes, :mod:`sandbox.runs.exported`);
    ``targets``: the outputs to write, the scored one first (:mod:`sandbox.analysis.class_prediction`)."""
    if (run_arg is None) == (model_file is None):
        raise SandboxError("give either --run runs/<name> (a trained run) or --model <export>/model.onnx "
                           "(a model exported by sandbox-export), not both")
    if model_file is not None:
        if which not in (None, "best"):
            raise SandboxError("--which picks a checkpoint of --run; an exported --model is one checkpoint already")
        cfg, model = load_exported(model_file, kind="segmentation")
        return None, cfg, model, exported_targets(model.spec, Path(model_file))
    run, _ = checkpoint_dir(run_arg, which or "best")
    cfg, model = load_run(run_arg, which or "best", task="segmentation")
    return run, cfg, model, run_targets(cfg, run)


def predict_one(out: Path, row: dict, img, heads: dict, truth, targets: dict, mask_threshold: float,
                failures_only: bool, fail_below: float) -> dict:
    """One image's files and its predictions.csv ``row`` (name, image, mask, sizes given): the binary mask
    (``<name>_mask.png``, the overlay with its errors and Dice) or the scored class map's (``dice``, ``iou``:
    mean Dice and mIoU over the classes in its truth; its per-class IoU and worst class), each other class
    target's map, depth. ``foreground``: the mask's fraction, or a class map's fraction not class 0."""
    first, specs = next(iter(targets.items()))
    got: dict = {}
    if specs is None:
        pred = heads[first] > mask_threshold
        dice, iou = scores(pred, truth) if truth is not None else ("", "")
        row["foreground"] = round(float(pred.mean()), 6)
    else:
        if truth is not None:
            got = class_scores(heads[first], truth, [s.name for s in specs], prefix_of(first))
        dice, iou = (got[f"{prefix_of(first)}mdice"], got[f"{prefix_of(first)}miou"]) if got else ("", "")
        row.update({k: round(v, 6) if isinstance(v, float) else v for k, v in got.items() if not k.endswith("mdice")})
        row["foreground"] = round(float((heads[first] > 0).mean()), 6)
    row.update(dice=dice if dice == "" else round(dice, 6), iou=iou if iou == "" else round(iou, 6),
               written=not failures_only or (truth is not None and dice < fail_below))
    if not row["written"]:
        return row
    if specs is None:
        Image.fromarray(pred.astype(np.uint8) * 255).save(out / f"{row['name']}_mask.png")
        overlay(img, pred, truth, dice if truth is not None else None).save(out / f"{row['name']}_overlay.png")
    for t, classes in targets.items():
        if classes is not None:
            write_class_map(out, row["name"], t, img, heads[t], classes, (got or None) if t == first else None)
    if "depth" in heads:
        save_depth(heads["depth"], out / row["name"])
    return row


def predict_run(run_arg: str, inputs: list[str], which: str = "best", out_arg: str | None = None,
                mask_dir: str | None = None, mask_threshold: float = 0.5, fail_below: float = 0.8,
                failures_only: bool = False, skip_unreadable: bool = False, batch_size: int | None = None,
                tta: str = "none", say: Callable[[str], None] = lambda line: None,
                model_file: str | None = None) -> list[dict]:
    """predict.py's work: the run's masks (class maps, depth) for ``inputs``, written with overlays and
    predictions.csv into a fresh folder; ground truth scored when there is some. Returns the csv rows.
    ``model_file``: an exported model (model.onnx / model.pt of sandbox-export) instead of the run.
    (One straight sequence of steps, kept whole so it reads as the command's help does.)"""
    run, cfg, model, targets = load_predictor(run_arg, which, model_file)
    files, gt, skipped = gather(inputs, cfg.data.image_dir, cfg.data.mask_dir)
    paired, gt = pair_masks(files, Path(mask_dir) if mask_dir else gt, failures_only, cfg.data, say)
    seen = in_train_split(run, cfg.data, files) if run is not None else []
    if seen:
        names = ", ".join(f.name for f in seen[:5]) + (", ..." if len(seen) > 5 else "")
        say(f"warning: {len(seen)} of the {len(files)} input image(s) are in the run's training split "
            f"({run / 'splits' / 'train.csv'}: {names}); their masks and scores show how it fits its training "
            "data, not how it does on new images")
    default = inside(run, run / "predictions") if run is not None else Path(model_file).parent.parent / "predictions"
    out = fresh_dir(Path(out_arg) if out_arg else default)
    names, rows, bad, bs = output_names(files), [], [], batch_size or cfg.data.batch_size
    first = next(iter(targets))  # the scored target: its truth is what --mask-dir / the dataset's masks hold
    for start in range(0, len(files), bs):
        loaded = []
        for f in files[start:start + bs]:
            try:
                loaded.append((f, *read_pair(f, paired[f], cfg.data.mask_threshold, cfg.data.mask_resize,
                                             targets[first], cfg.data.ignore_index)))
            except SandboxError as exc:
                if not skip_unreadable:
                    raise SandboxError(f"{exc}; {len(rows)} image(s) before it were predicted into {out}; "
                                       "--skip-unreadable skips such files") from None
                bad.append(str(exc))
        maps = predict_maps(model, [img for _, img, _ in loaded], cfg.data.size, cfg.data.resize,
                            cfg.train.channels_last, tta == "flip")
        for (f, img, truth), heads in zip(loaded, maps):
            row = {"name": names[f], "image": str(f), "mask": str(paired[f] or ""), "height": img.shape[0],
                   "width": img.shape[1]}
            rows.append(predict_one(out, row, img, heads, truth, targets, mask_threshold, failures_only, fail_below))
    extra = score_columns(targets)
    write_csv(out / "predictions.csv", rows, extra)
    scored = [r for r in rows if r["dice"] != ""]
    if failures_only:
        write_csv(out / "failures.csv", sorted((r for r in scored if r["written"]), key=lambda r: r["dice"]), extra)
    for msg in bad:
        say(f"warning: skipped {msg}")
    summary = f"predicted {len(rows)} image(s) into {out}"
    summary += f"; skipped {skipped} non-image file(s)" if skipped else ""
    if scored:
        summary += f"; mean Dice {sum(r['dice'] for r in scored) / len(scored):.4f} over {len(scored)} with masks"
        if extra:  # a class map: the mIoU too, and the class that is most often the worst
            worst = [r[f"{prefix_of(first)}worst_class"] for r in scored if r[f"{prefix_of(first)}worst_class"]]
            summary += (f" (mean over the classes in each image's truth); mean mIoU "
                        f"{sum(r['iou'] for r in scored) / len(scored):.4f}" +
                        (f"; worst class most often: {max(set(worst), key=worst.count)}" if worst else ""))
    if failures_only:
        summary += f"; {sum(r['written'] for r in scored)} failure(s) with Dice < {fail_below} (failures.csv)"
    say(summary)

    return rows
