"""Pictures people would rather look at than read: prediction panels and overlays."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sandbox.metrics import hard_dice
from sandbox.viz.backend import plt


def to_hwc(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W, C)`` (or ``(H, W)`` for one channel) numpy array."""
    a = x.detach().float().clamp(0, 1).cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Image with true positives green, false positives red, false negatives blue. ``(H, W, 3)``."""
    out = image.copy() * (1 - alpha) + alpha * 0.15
    colors = {(1, 1): (0.1, 0.85, 0.2), (1, 0): (0.95, 0.15, 0.1), (0, 1): (0.15, 0.35, 1.0)}
    for (p, t), c in colors.items():
        sel = (pred == p) & (truth == t)
        out[sel] = image[sel] * (1 - alpha) + alpha * np.asarray(c)
    return out.clip(0, 1)


def class_map_rgb(ids: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """``(H, W)`` class ids (-1 unlabelled: grey) -> ``(H, W, 3)`` in [0, 1] with the fixed class colours
    ``colors`` (``(K, 3)`` uint8, :func:`sandbox.data.classes.colors`), the same in every picture."""
    table = np.concatenate([colors, [[128, 128, 128]]]).astype(np.float32) / 255  # index -1: the grey row
    return table[np.where(ids < 0, len(colors), ids)]


def class_ids(x: torch.Tensor) -> np.ndarray:
    """One sample's class map ``(1, H, W)`` ids or ``(K, H, W)`` logits / multi-label layers -> ``(H, W)`` ids
    (multi-label: the highest channel, the first class in a tie)."""
    a = x.detach().float().cpu()
    return a[0].round().long().numpy() if a.shape[0] == 1 else a.argmax(0).numpy()


def class_legend(fig, names: list[str], colors: np.ndarray) -> None:
    """A fixed colour legend under the figure, one patch per class in id order."""
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=np.asarray(c) / 255, label=f"{i} {n}") for i, (n, c) in enumerate(zip(names, colors))],
               loc="lower center", ncol=min(len(names), 6), fontsize=7, frameon=False)


def class_overlay(img: np.ndarray, ids: np.ndarray, colors: np.ndarray, names: list[str],
                  label: str | None = None) -> np.ndarray:
    """``(H, W, 3) uint8`` image tinted by class (class 0 left as it is), a legend strip under it with
    each class's colour and name, ``label`` (e.g. the mIoU) at its left -> ``(H + strip, W, 3) uint8``."""
    from PIL import Image, ImageDraw, ImageFont

    tint = class_map_rgb(ids, colors) * 255
    out = img.astype(np.float32)
    fg = ids > 0
    out[fg] = 0.45 * out[fg] + 0.55 * tint[fg]
    h, w = ids.shape
    row = max(12, min(h, w) // 16)
    try:
        font = ImageFont.load_default(size=row - 2)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = ([(label, None)] if label else []) + [(n, tuple(int(v) for v in c)) for n, c in zip(names, colors)]
    places, x, y = [], 3, 0  # the legend wraps onto as many lines as the image's width needs
    for text, colour in items:
        width = (row + 1 if colour else 0) + int(measure.textlength(text, font=font)) + row // 2
        if x > 3 and x + width > w:
            x, y = 3, y + row + 2
        places.append((x, y, text, colour))
        x += width
    pil = Image.new("RGB", (w, h + y + row + 4), (0, 0, 0))
    pil.paste(Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(pil)
    for x, y, text, colour in places:
        if colour is not None:
            draw.rectangle((x, h + y + 3, x + row - 2, h + y + row + 1), fill=colour, outline=(255, 255, 255))
            x += row + 1
        draw.text((x, h + y + 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def class_panel(batch: dict, out: dict, target: str, names: list[str], colors: np.ndarray, path: Path,
                title: str = "") -> Path:
    """One row per sample: input | truth | prediction (class colours) | errors (wrong pixels red), with
    the class legend; a row is labelled with its pixel accuracy and the mean IoU over its classes."""
    n = batch["image"].shape[0]
    cols = ["input", f"{target}: truth", f"{target}: prediction", "errors (red)"]
    fig, axes = plt.subplots(n, 4, figsize=(2.3 * 4, 2.3 * n + 0.8), squeeze=False)
    for i in range(n):
        img = to_hwc(batch["image"][i])
        truth, pred = class_ids(batch[target][i]), class_ids(out[target][i])
        labelled = truth >= 0
        wrong = (pred != truth) & labelled
        ious = [((pred == c) & (truth == c)).sum() / max(1, ((pred == c) | (truth == c))[labelled].sum())
                for c in np.unique(truth[labelled])]
        errors = img * 0.45
        errors[wrong] = (0.95, 0.15, 0.1)
        for j, a in enumerate([img, class_map_rgb(truth, colors), class_map_rgb(pred, colors), errors.clip(0, 1)]):
            axes[i, j].imshow(a, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(cols[j], fontsize=8)
        acc = 1 - wrong.sum() / max(1, labelled.sum())
        axes[i, 3].set_xlabel(f"acc {acc:.3f}, mIoU {np.mean(ious) if ious else 1:.3f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    class_legend(fig, names, colors)
    return _save(fig, path)


def confusion_figure(matrix: np.ndarray, names: list[str], path: Path, title: str = "") -> Path:
    """The confusion matrix (rows: truth, columns: prediction) normalised by row (each class's recall on
    the diagonal), pixel counts written in the cells."""
    m = np.asarray(matrix, np.float64)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2, 1.0 * k + 1.5))
    shown = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class")
    for r in range(k):
        for c in range(k):
            ax.text(c, r, f"{rows[r, c]:.2f}\n{int(m[r, c])}", ha="center", va="center", fontsize=7,
                    color="white" if rows[r, c] > 0.6 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def segmentation_panel(batch: dict, out: dict, path: Path, title: str = "") -> Path:
    """One row per sample: input | truth | P(mask) | errors (TP green, FP red, FN blue) [| depth truth | depth pred]."""
    return _save(segmentation_figure(batch, out, title), path)


def segmentation_figure(batch: dict, out: dict, title: str = ""):
    """The figure of :func:`segmentation_panel`; P(mask) (and predicted depth) with a colour bar per row."""
    n = batch["image"].shape[0]
    has_depth = "depth" in out
    cols = ["input", "ground truth", "P(mask)", "errors: TP green, FP red, FN blue"] if "mask" in out else ["input"]
    if has_depth:
        cols += ["depth truth", "depth prediction"]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.3 * len(cols), 2.3 * n + 0.4), squeeze=False)
    for i in range(n):
        img = to_hwc(batch["image"][i])
        row = [(img, None)]
        if "mask" in out:
            prob = torch.sigmoid(out["mask"][i]).numpy()[0]
            truth = batch["mask"][i].numpy()[0] > 0.5
            pred = prob > 0.5
            dice = hard_dice(pred, truth)
            row += [(truth, "gray"), (prob, "magma"), (error_overlay(img, pred, truth), None)]
        if has_depth:
            row += [(batch["depth"][i].numpy()[0], "viridis_r"), (out["depth"][i].numpy()[0].clip(0, 1), "viridis_r")]
        for j, (a, cmap) in enumerate(row):
            ax = axes[i, j]
            shown = ax.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if cols[j] in ("P(mask)", "depth prediction"):  # a probability / a depth: say what the colours mean
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
        if "mask" in out:
            axes[i, 3].set_xlabel(f"Dice {dice:.3f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
