"""Predicting with a trained run on image files: inputs, outputs, ground truth and the picture per image."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sandbox.build import target_classes
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


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    cols = ["name", "image", "mask", "height", "width", "foreground", "dice", "iou", "written"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
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


def write_class_prediction(out: Path, name: str, image: Path, mask: "Path | None", img, ids, truth, classes,
                           failures_only: bool, fail_below: float) -> dict:
    """A class map's files: ``<name>_classes.png`` (a palette PNG of the ids with the class colours: it
    reads back as a class map by the folder rules) and ``<name>_overlay.png`` (the image tinted by class,
    with the colour legend); its predictions.csv row: ``foreground`` the fraction not class 0, ``dice`` and
    ``iou`` the mean Dice and mIoU over the classes in the truth (as sandbox.metrics.class_scores)."""
    from sandbox.data.classes import colors
    from sandbox.viz.panels import class_overlay

    dice = iou = ""
    if truth is not None:
        labelled = truth >= 0
        present = np.unique(truth[labelled])
        inter = [((ids == c) & (truth == c)).sum() for c in present]
        sizes = [((ids == c) & labelled).sum() + (truth == c).sum() for c in present]
        iou = float(np.mean([i / max(1, z - i) for i, z in zip(inter, sizes)])) if len(present) else 1.0
        dice = float(np.mean([2 * i / max(1, z) for i, z in zip(inter, sizes)])) if len(present) else 1.0
    written = not failures_only or (truth is not None and dice < fail_below)
    if written:
        pal = Image.fromarray(ids.astype(np.uint8), "P")
        pal.putpalette(colors(classes).ravel().tolist())
        pal.save(out / f"{name}_classes.png")
        Image.fromarray(class_overlay(img, ids, colors(classes), [c.name for c in classes],
                                      None if truth is None else f"mIoU {iou:.3f}")).save(out / f"{name}_overlay.png")
    return {"name": name, "image": str(image), "mask": str(mask or ""), "height": img.shape[0], "width": img.shape[1],
            "foreground": round(float((ids > 0).mean()), 6), "dice": dice if dice == "" else round(dice, 6),
            "iou": iou if iou == "" else round(iou, 6), "written": written}


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
    """``(run directory or None, cfg, model)``: the run's checkpoint, or an exported file (``--model``; its
    preprocessing.json gives the size and resize policy, :mod:`sandbox.runs.exported`)."""
    if (run_arg is None) == (model_file is None):
        raise SandboxError("give either --run runs/<name> (a trained run) or --model <export>/model.onnx "
                           "(a model exported by sandbox-export), not both")
    if model_file is not None:
        if which not in (None, "best"):
            raise SandboxError("--which picks a checkpoint of --run; an exported --model is one checkpoint already")
        return (None, *load_exported(model_file, kind="segmentation"))
    run, _ = checkpoint_dir(run_arg, which or "best")
    return (run, *load_run(run_arg, which or "best", task="segmentation", need=("mask",)))


def predict_run(run_arg: str, inputs: list[str], which: str = "best", out_arg: str | None = None,
                mask_dir: str | None = None, mask_threshold: float = 0.5, fail_below: float = 0.8,
                failures_only: bool = False, skip_unreadable: bool = False, batch_size: int | None = None,
                tta: str = "none", say: Callable[[str], None] = lambda line: None,
                model_file: str | None = None) -> list[dict]:
    """predict.py's work: the run's masks (and depth) for ``inputs``, written with overlays and
    predictions.csv into a fresh folder; ground truth scored when there is some. Returns the csv rows.
    ``model_file``: an exported model (model.onnx / model.pt of sandbox-export) instead of the run.
    (One straight sequence of steps, kept whole so it reads as the command's help does.)"""
    run, cfg, model = load_predictor(run_arg, which, model_file)
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
    classes = target_classes(cfg).get("mask")  # data.classes: the mask is a class map
    for start in range(0, len(files), bs):
        loaded = []
        for f in files[start:start + bs]:
            try:
                loaded.append((f, *read_pair(f, paired[f], cfg.data.mask_threshold, cfg.data.mask_resize,
                                             classes, cfg.data.ignore_index)))
            except SandboxError as exc:
                if not skip_unreadable:
                    raise SandboxError(f"{exc}; {len(rows)} image(s) before it were predicted into {out}; "
                                       "--skip-unreadable skips such files") from None
                bad.append(str(exc))
        maps = predict_maps(model, [img for _, img, _ in loaded], cfg.data.size, cfg.data.resize,
                            cfg.train.channels_last, tta == "flip")
        for (f, img, truth), heads in zip(loaded, maps):
            if classes:  # a class map (data.classes): ids, its colours and legend, mean Dice and mIoU
                rows.append(write_class_prediction(out, names[f], f, paired[f], img, heads["mask"], truth, classes,
                                                   failures_only, fail_below))
                continue
            pred = heads["mask"] > mask_threshold
            dice, iou = scores(pred, truth) if truth is not None else ("", "")
            written = not failures_only or (truth is not None and dice < fail_below)
            if written:
                Image.fromarray(pred.astype(np.uint8) * 255).save(out / f"{names[f]}_mask.png")
                overlay(img, pred, truth, dice if truth is not None else None).save(out / f"{names[f]}_overlay.png")
                if "depth" in heads:
                    save_depth(heads["depth"], out / names[f])
            rows.append({"name": names[f], "image": str(f), "mask": str(paired[f] or ""), "height": img.shape[0],
                         "width": img.shape[1], "foreground": round(float(pred.mean()), 6),
                         "dice": dice if dice == "" else round(dice, 6), "iou": iou if iou == "" else round(iou, 6),
                         "written": written})
    write_csv(out / "predictions.csv", rows)
    scored = [r for r in rows if r["dice"] != ""]
    if failures_only:
        write_csv(out / "failures.csv", sorted((r for r in scored if r["written"]), key=lambda r: r["dice"]))
    for msg in bad:
        say(f"warning: skipped {msg}")
    summary = f"predicted {len(rows)} image(s) into {out}"
    summary += f"; skipped {skipped} non-image file(s)" if skipped else ""
    if scored:
        summary += f"; mean Dice {sum(r['dice'] for r in scored) / len(scored):.4f} over {len(scored)} with masks"
    if failures_only:
        summary += f"; {sum(r['written'] for r in scored)} failure(s) with Dice < {fail_below} (failures.csv)"
    say(summary)

    return rows
