"""Segmentation metrics, per image, computed on device, reduced across processes by the trainer.

Each function returns one value per image (``(B,)``), so the trainer can gather them with
``accelerator.gather_for_metrics`` (which drops the samples padded onto the last batch)
and average over the whole split: the mean of per-image scores, each image weighing the
same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _binary(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    return (torch.sigmoid(logits.float()) > threshold).float()


def dice_per_image(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard Dice ``2|P∩T| / (|P| + |T|)`` per image; 1.0 when both are empty. ``(B, 1, H, W) -> (B,)``."""
    p, t = _binary(logits, threshold), target.float()
    dims = tuple(range(1, p.ndim))
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))


def iou_per_image(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard IoU ``|P∩T| / |P∪T|`` per image; 1.0 when both are empty. ``(B, 1, H, W) -> (B,)``."""
    p, t = _binary(logits, threshold), target.float()
    dims = tuple(range(1, p.ndim))
    inter = (p * t).sum(dims)
    union = p.sum(dims) + t.sum(dims) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def pixel_accuracy_per_image(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    p, t = _binary(logits, threshold), target.float()
    return (p == t).float().flatten(1).mean(1)


def _boundary(x: torch.Tensor) -> torch.Tensor:
    """Foreground pixels with a background 8-neighbour: ``x - erode(x)`` for ``x: (B, 1, H, W)`` in {0, 1}.

    max_pool pads with -inf, so the image border is not a boundary: an object cut by the frame
    has no boundary along the frame (the true contour lies outside the image).
    """
    return x - (-F.max_pool2d(-x, 3, stride=1, padding=1))


def _dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius) if radius > 0 else x


def boundary_f1_per_image(logits: torch.Tensor, target: torch.Tensor, tolerance: int = 2,
                          threshold: float = 0.5) -> torch.Tensor:
    """Boundary F1 per image: ``(B, 1, H, W) -> (B,)``.

    Boundaries are the 8-connected inner contours of the thresholded prediction and of the
    target. Precision: fraction of predicted boundary pixels within ``tolerance`` px
    (chessboard distance: a square of side ``2·tolerance + 1``) of a true boundary pixel;
    recall: the same the other way round; F1 their harmonic mean. Both boundaries empty ->
    1.0, exactly one empty -> 0.0. Thin structures (limbs) weigh as much as their contour.
    """
    p, t = _binary(logits, threshold), (target.float() > 0.5).float()
    return match_f1(_boundary(p), _boundary(t), tolerance)


def match_f1(bp: torch.Tensor, bt: torch.Tensor, tolerance: int) -> torch.Tensor:
    """F1 of two binary pixel sets ``(B, 1, H, W) -> (B,)`` (boundaries, edges), a pixel of one matching
    when the other has a pixel within ``tolerance`` px (chessboard). Both empty -> 1.0, one empty -> 0.0."""
    dims = tuple(range(1, bp.ndim))
    n_p, n_t = bp.sum(dims), bt.sum(dims)
    precision = (bp * _dilate(bt, tolerance)).sum(dims) / n_p.clamp_min(1)
    recall = (bt * _dilate(bp, tolerance)).sum(dims) / n_t.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return torch.where((n_p == 0) & (n_t == 0), torch.ones_like(f1), f1)


def segmentation_metrics(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """``{"dice", "iou", "pixel_acc", "boundary_f1"}``, each ``(B,)``, for ``logits, target: (B, 1, H, W)``,
    a pixel being foreground when ``sigmoid(logit) > threshold``."""
    return {
        "dice": dice_per_image(logits, target, threshold),
        "iou": iou_per_image(logits, target, threshold),
        "pixel_acc": pixel_accuracy_per_image(logits, target, threshold),
        "boundary_f1": boundary_f1_per_image(logits, target, threshold=threshold),
    }


def hard_dice(pred, truth) -> float:
    """Dice of two boolean masks of any shape (numpy or torch); 1.0 when both are empty: the one
    formula that pictures and command summaries use on already-thresholded masks."""
    inter, total = float((pred & truth).sum()), float(pred.sum() + truth.sum())
    return 2 * inter / total if total else 1.0
