"""Per-image metrics, computed on device, reduced across processes by the trainer.

Each function returns one value per image (``(B,)``), so the trainer can gather them with
``accelerator.gather_for_metrics`` (which drops the samples padded onto the last batch)
and average over the whole split: the mean of per-image scores, each image weighing the
same.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from sandbox.errors import SandboxError

log = logging.getLogger("sandbox")
_ADAPTED: set[tuple] = set()  # window adaptations already logged (once per name, window and side)


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
    bp, bt = _boundary(p), _boundary(t)
    dims = tuple(range(1, p.ndim))
    n_p, n_t = bp.sum(dims), bt.sum(dims)
    precision = (bp * _dilate(bt, tolerance)).sum(dims) / n_p.clamp_min(1)
    recall = (bt * _dilate(bp, tolerance)).sum(dims) / n_t.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return torch.where((n_p == 0) & (n_t == 0), torch.ones_like(f1), f1)


def segmentation_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"dice", "iou", "pixel_acc", "boundary_f1"}``, each ``(B,)``, for a binary mask target."""
    return {
        "dice": dice_per_image(logits, target),
        "iou": iou_per_image(logits, target),
        "pixel_acc": pixel_accuracy_per_image(logits, target),
        "boundary_f1": boundary_f1_per_image(logits, target),
    }


def ssim_window(win_size: int, side: int, name: str = "ssim", levels: int = 0) -> int:
    """The Gaussian window to use on images whose smaller side is ``side`` px.

    ``levels=0``: single-scale SSIM, a window fits when ``win_size <= side`` (pytorch-msssim
    silently skips the smoothing otherwise). ``levels >= 1``: MS-SSIM, a window fits when
    ``(win_size - 1) * 2**max(4, levels - 1) < side`` (pytorch-msssim's assertion; its 4
    downsamplings, more with more weights). The rule: ``win_size`` if it fits, else the
    largest odd ``win_size >= 3`` that fits (logged once, logger "sandbox"); if not even
    3 fits (MS-SSIM at side <= 32 px, SSIM below 3 px) a SandboxError names ``name`` (e.g.
    "loss ms_ssim"), the side and the minimum side.
    """
    factor = 2 ** max(4, levels - 1) if levels else None
    fits = (lambda w: w <= side) if factor is None else (lambda w: (w - 1) * factor < side)
    if fits(win_size):
        return win_size
    win = next((w for w in range(win_size - 2, 2, -2) if fits(w)), None)
    if win is None:
        least = 3 if factor is None else 2 * factor + 1
        raise SandboxError(f"{name}: images of side {side} px are too small even for win_size 3; "
                           f"it needs a side of at least {least} px (use a larger data.size)")
    if (name, win_size, side) not in _ADAPTED:
        _ADAPTED.add((name, win_size, side))
        log.info("%s: win_size %d does not fit %d px images; using win_size %d", name, win_size, side, win)
    return win


def regression_metrics(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
                       win_size: int = 11) -> dict[str, torch.Tensor]:
    """``{"l1": (B,), "rmse": (B,), "ssim": (B,)}`` for values ``pred, target: (B, K, H, W)`` (depth in [0, 1]).

    SSIM per image (pytorch-msssim, mean over channels) with the window rule of
    :func:`ssim_window`. Float32 with autocast off.
    """
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred, target = pred.float(), target.float()
        err = (pred - target).flatten(1)
        win = ssim_window(win_size, min(pred.shape[-2:]), "metric ssim")
        return {
            "l1": err.abs().mean(1),
            "rmse": err.pow(2).mean(1).sqrt(),
            "ssim": ssim(pred, target, data_range=data_range, win_size=win, size_average=False),
        }
