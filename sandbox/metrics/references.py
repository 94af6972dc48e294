"""Reference sets: real images degraded in ways a person sees, and whether a metric orders them as one would.

:func:`references` builds, from a pool of held-out real images, two disjoint halves: ``anchor`` (what every
set is scored against) and ``source`` (what every set is made of, so no set shares an image with the anchor):

    real            the source as it is: the real-vs-real floor
    blur1, blur2    Gaussian blur, sigma 1 and 2 px
    noise           additive Gaussian noise, sigma NOISE_SIGMA (clamped to [0, 1])
    phase           phase-randomised: each image's amplitude spectrum kept, its phases replaced by those of
                    white noise (one draw for all channels): the power spectrum of real images, no structure
    mean_noise      the per-pixel mean image + per-pixel-std Gaussian noise (the probe's "noise_pixel")
    collapsed       one source image repeated, with sigma COLLAPSE_SIGMA noise: a visibly collapsed generator

:func:`score_references` scores every set with every metric, :func:`orders` asks of each metric whether the
floor is best, every degradation worse, and the collapsed set last (ties reported as such).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from sandbox.errors import SandboxError

NOISE_SIGMA, COLLAPSE_SIGMA = 0.1, 0.02
DEGRADED = ("blur1", "blur2", "noise", "phase", "mean_noise", "collapsed")
# how each metric is read: "min" lower is better, "max" higher is better, "abs" closer to 0 is better
DIRECTION = {"kid_own": "min", "spectral_l1": "min", "hf_log_ratio": "abs", "fid_domain": "min", "kid_domain": "min",
             "precision_domain": "max", "recall_domain": "max", "validity": "max", "param_coverage": "max",
             "param_w1": "min", "c2st_auc": "min", "c2st_nll_gain": "min", "c2st_pixels_auc": "min",
             "c2st_pixels_nll_gain": "min"}


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, S, S)`` (kernel radius ceil(3 sigma), reflected borders)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def phase_randomised(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image's amplitude spectrum with the phases of white noise (Hermitian, so the result is real)."""
    spec = torch.fft.rfft2(images.double())
    noise = torch.fft.rfft2(torch.randn(images.shape[0], 1, *images.shape[2:], generator=g, dtype=torch.float64))
    phase = noise / noise.abs().clamp_min(1e-12)
    out = torch.fft.irfft2(spec.abs() * phase, s=images.shape[-2:])
    out = out - out.mean((2, 3), keepdim=True) + images.double().mean((2, 3), keepdim=True)  # keep the DC term exactly
    return out.clamp(0, 1).to(images.dtype)


def references(pool: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(anchor, {name: images})`` from real images ``pool (2N, C, S, S)``: a seeded permutation's first half
    is the anchor, every set is made from the second half (N images each; see the module doc)."""
    if len(pool) < 8:
        raise SandboxError(f"references need at least 8 real images, got {len(pool)}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(pool), generator=g)
    n = len(pool) // 2
    anchor, src = pool[perm[:n]].float(), pool[perm[n:2 * n]].float()
    mean, std = src.mean(0), src.std(0)
    sets = {"real": src, "blur1": gaussian_blur(src, 1.0), "blur2": gaussian_blur(src, 2.0),
            "noise": (src + NOISE_SIGMA * torch.randn(src.shape, generator=g)).clamp(0, 1),
            "phase": phase_randomised(src, g),
            "mean_noise": (mean + std * torch.randn(src.shape, generator=g)).clamp(0, 1),
            "collapsed": (src[:1] + COLLAPSE_SIGMA * torch.randn(src.shape, generator=g)).clamp(0, 1)}
    return anchor, sets


def score_references(anchor: torch.Tensor, sets: dict[str, torch.Tensor],
                     scorers: dict[str, Callable[[torch.Tensor, torch.Tensor], dict]]) -> list[dict]:
    """One row per set: ``{"set": name, <metric>: value, ..., "<scorer>_s": seconds}``; each scorer
    ``(anchor, images) -> {metric: value}`` is timed per set."""
    import time

    rows = []
    for name, images in sets.items():
        row: dict = {"set": name}
        for label, scorer in scorers.items():
            t0 = time.perf_counter()
            row.update(scorer(anchor, images))
            row[f"{label}_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return rows


def _badness(metric: str, value: float) -> float:
    d = DIRECTION[metric]
    return -value if d == "max" else abs(value) if d == "abs" else value


def orders(rows: list[dict]) -> dict[str, dict]:
    """Per metric of :data:`DIRECTION` present in ``rows``: ``floor_best`` (every degradation strictly worse than
    ``real``), ``collapsed_last`` ("yes": strictly worst, "tied": worst with a tie, "no"), ``ranks`` (True when
    both hold without a tie: the metric may rank generators)."""
    by = {r["set"]: r for r in rows}
    out = {}
    for m in DIRECTION:
        if not all(m in r and r[m] is not None and math.isfinite(r[m]) for r in rows):
            continue
        bad = {s: _badness(m, r[m]) for s, r in by.items()}
        floor_best = all(bad[s] > bad["real"] for s in DEGRADED if s in bad)
        others = [bad[s] for s in bad if s != "collapsed"]
        last = "yes" if bad["collapsed"] > max(others) else "tied" if bad["collapsed"] == max(others) else "no"
        out[m] = {"floor_best": floor_best, "collapsed_last": last, "ranks": floor_best and last == "yes"}
    return out
