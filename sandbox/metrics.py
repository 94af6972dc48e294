"""Per-image metrics, computed on device, reduced across processes by the trainer.

Each function returns one value per image (``(B,)``), so the trainer can gather them with
``accelerator.gather_for_metrics`` (which drops the samples padded onto the last batch)
and average over the whole split: the mean of per-image scores, each image weighing the
same.
"""
from __future__ import annotations

import torch


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


def segmentation_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"dice": (B,), "iou": (B,), "pixel_acc": (B,)}`` for a binary mask target."""
    return {
        "dice": dice_per_image(logits, target),
        "iou": iou_per_image(logits, target),
        "pixel_acc": pixel_accuracy_per_image(logits, target),
    }
