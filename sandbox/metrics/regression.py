"""Regression metrics (depth maps, reconstructions), per image: L1, RMSE and SSIM; for depth maps also
the threshold accuracy delta < 1.25 and an edge F1 on depth discontinuities (:func:`depth_metrics`),
which no loss of the sandbox optimises directly."""
from __future__ import annotations

import logging

import torch
from pytorch_msssim import ssim

from sandbox.errors import SandboxError
from sandbox.metrics.segmentation import match_f1

log = logging.getLogger("sandbox")
_ADAPTED: set[tuple] = set()  # window adaptations already logged (once per name, window and side)


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


def delta_accuracy(pred: torch.Tensor, target: torch.Tensor, ratio: float = 1.25, eps: float = 1e-6) -> torch.Tensor:
    """Threshold accuracy per image ``(B, K, H, W) -> (B,)``: the fraction of pixels with
    ``max(pred / target, target / pred) < ratio`` (delta < 1.25, as in monocular depth estimation),
    over the pixels with ``target > 0`` (0 marks no depth); ``pred`` is clamped to ``eps`` first,
    so a non-positive prediction counts as a miss. NaN for an image without a valid pixel."""
    pred, target = pred.float(), target.float()
    valid = (target > 0).float()
    p = pred.clamp_min(eps)
    t = target.clamp_min(eps)
    hit = (torch.maximum(p / t, t / p) < ratio).float() * valid
    return hit.flatten(1).sum(1) / valid.flatten(1).sum(1)  # 0 / 0 -> NaN: nothing to score


def depth_edges(depth: torch.Tensor, step: float) -> torch.Tensor:
    """Pixels whose depth differs from the pixel to the right or below by more than ``step``
    (a discontinuity, not the slow slope of a floor): ``(B, 1, H, W)`` in {0, 1}."""
    d = depth.float()
    edges = torch.zeros_like(d)
    edges[..., :, :-1] = torch.maximum(edges[..., :, :-1], ((d[..., :, 1:] - d[..., :, :-1]).abs() > step).float())
    edges[..., :-1, :] = torch.maximum(edges[..., :-1, :], ((d[..., 1:, :] - d[..., :-1, :]).abs() > step).float())
    return edges


def depth_edge_f1(pred: torch.Tensor, target: torch.Tensor, step: float = 0.05, tolerance: int = 1) -> torch.Tensor:
    """Edge F1 per image on depth discontinuities ``(B, 1, H, W) -> (B,)``: :func:`depth_edges` of the
    prediction and of the target (a jump of more than ``step`` in [0, 1] depth between neighbours),
    matched within ``tolerance`` px as the boundary F1 does (both without edges: 1.0)."""
    return match_f1(depth_edges(pred[:, :1], step), depth_edges(target[:, :1], step), tolerance)


def depth_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`regression_metrics` plus ``delta1`` (:func:`delta_accuracy`) and ``edge_f1``
    (:func:`depth_edge_f1`): what evaluate.py reports for a depth head, each ``(B,)``."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        out = regression_metrics(pred, target)
        out.update(delta1=delta_accuracy(pred, target), edge_f1=depth_edge_f1(pred, target))
    return out
