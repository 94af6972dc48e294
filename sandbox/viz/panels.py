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


def segmentation_panel(batch: dict, out: dict, path: Path, title: str = "") -> Path:
    """One row per sample: input | truth | P(mask) | errors (TP green, FP red, FN blue) [| depth truth | depth pred]."""
    fig = segmentation_figure(batch, out, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


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
