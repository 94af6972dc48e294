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


# ----------------------------------------------------------------------------- several classes

def class_decisions(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5):
    """K > 1 logits ``(B, K, H, W)`` and a class map -> ``(pred, truth, valid)``, each ``(B, K, H, W)``
    in {0, 1}: a ``(B, 1, H, W)`` target of ids (-1 unlabelled) against the argmax, or a multi-label
    ``(B, K, H, W)`` target against ``sigmoid > threshold`` per channel (sandbox/data/classes.py)."""
    k = logits.shape[1]
    if target.shape[1] == k:  # multi-label
        return _binary(logits, threshold), (target.float() > 0.5).float(), torch.ones_like(target[:, :1]).float()
    ids = target[:, 0].long()
    valid = (ids >= 0).unsqueeze(1).float()
    onehot = lambda x: F.one_hot(x.clamp(0, k - 1), k).permute(0, 3, 1, 2).float() * valid  # noqa: E731
    return onehot(logits.float().argmax(1)), onehot(ids), valid


def class_metrics(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
                  tolerance: int = 2) -> dict[str, torch.Tensor]:
    """Per image, for K > 1 classes: ``tp, fp, fn`` pixel counts ``(B, K)`` (summed over a split they give
    :func:`class_scores`), ``iou`` and ``dice`` ``(B, K)`` (NaN where a class is in neither prediction nor
    truth), ``miou`` ``(B,)`` (mean IoU over the classes present in the image's truth), ``pixel_acc``
    ``(B,)`` over labelled pixels, ``boundary_f1`` ``(B, K)`` (per class as :func:`boundary_f1_per_image`,
    NaN where the class is in neither) and, single-label only, ``confusion`` ``(B, K, K)`` (rows: truth)."""
    p, t, valid = class_decisions(logits, target, threshold)
    tp, ps, ts = (p * t).sum((2, 3)), p.sum((2, 3)), t.sum((2, 3))
    fp, fn = ps - tp, ts - tp
    seen = (ps + ts) > 0
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(seen, tp / (tp + fp + fn).clamp_min(1), nan)
    present = ts > 0
    miou = (iou.nan_to_num(0) * present).sum(1) / present.sum(1).clamp_min(1)
    agree = (p * t).sum(1, keepdim=True) if target.shape[1] == 1 else 1 - (p - t).abs().mean(1, keepdim=True)
    out = {"tp": tp, "fp": fp, "fn": fn, "iou": iou, "dice": torch.where(seen, 2 * tp / (ps + ts).clamp_min(1), nan),
           "miou": torch.where(present.any(1), miou, torch.ones_like(miou)),
           "pixel_acc": (agree * valid).sum((1, 2, 3)) / valid.sum((1, 2, 3)).clamp_min(1)}
    b, k = tp.shape
    bf1 = match_f1(_boundary(p.reshape(b * k, 1, *p.shape[2:])), _boundary(t.reshape(b * k, 1, *t.shape[2:])),
                   tolerance).view(b, k)
    out["boundary_f1"] = torch.where(seen, bf1, nan)
    if target.shape[1] == 1:
        ids = target[:, 0].long()
        pred_ids = logits.float().argmax(1)
        flat = (ids.clamp_min(0) * k + pred_ids).flatten(1)
        counts = torch.zeros(b, k * k, device=logits.device).scatter_add_(1, flat, valid.flatten(1))
        out["confusion"] = counts.view(b, k, k)
    return out


def class_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split-level scores from pixel counts summed over the split's images ``(K,)``: ``iou`` and ``dice``
    per class, ``present`` (the class occurs in the truth), ``miou``/``mdice``: the mean over the classes
    present in the truth, the usual convention (PASCAL VOC, Cityscapes); a class absent from the truth
    but predicted is not averaged in (its IoU is 0 and says so per class)."""
    present = (tp + fn) > 0
    iou = tp / (tp + fp + fn).clamp_min(1)
    dice = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    mean = lambda x: x[present].mean() if present.any() else torch.tensor(float("nan"))  # noqa: E731
    return {"iou": iou, "dice": dice, "present": present, "miou": mean(iou), "mdice": mean(dice)}
