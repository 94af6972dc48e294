"""Attractors: the domain evaluator, render-back validity and the coverage of the estimated parameters.

``attractor_evaluator``: :func:`sandbox.metrics.evaluators.cached_evaluator` on ``EVAL_IMAGES`` images of the
**train** split stream of :class:`~sandbox.data.attractors.Attractors` (data seed, size; an index names the
same attractor whatever a run's ``num_train``, so every run of one seed and size shares the evaluator),
regressing the standardised ``(a, b, c, d)``; the last 10 % of those indices score it (held-out R²).

``validity`` (render-back): the evaluator estimates each image's parameters, the dataset's own renderer
(``clifford_points``, ``density``, ``to_rgb``) draws the attractor of that estimate, and the image is scored
against its rendering by SSIM (pytorch-msssim, 7 px Gaussian window at 32 px, luminance, both images
min-max normalised first so an overall brightness change costs nothing). SSIM, not a correlation: its
structure term compares local contrast, so a blur (lines smeared into a haze), speckle (contrast where the
rendering has none) and a blob (a filled disc where the rendering has thin curves) all lose, as they do to a
person's eye; a correlation of intensities forgives a blur, whose coarse layout still matches. The ceiling
(``validity_ceiling``): real images against their rendering from their TRUE parameters with another orbit
seed (what the renderer's own sampling noise leaves); real images score below it by the estimation error.

``param_coverage``: the share of the real images' occupied cells (4 bins per parameter over the prior box,
256 cells) that the samples' estimated parameters hit (1: every kind of attractor the real set shows is
made); ``param_w1``: the mean over parameters of the 1-D Wasserstein distance between the samples' and the
real images' estimates, in units of the prior's width. Estimates on both sides come from the same evaluator,
so its bias cancels.
"""
from __future__ import annotations

import numpy as np
import torch

from sandbox.data.attractors import PARAM_HIGH, PARAM_LOW, PARAM_NAMES, Attractors, clifford_points, density, to_rgb
from sandbox.metrics.evaluators import STEPS, Evaluator, Targets, cached_evaluator

EVAL_IMAGES = 4000  # train-split images the attractor evaluator learns from (the last 10 % score it)
BINS = 4


def attractor_evaluator(cache_dir, size: int, data_seed: int, steps: int = STEPS, images: int = EVAL_IMAGES,
                        seed: int = 0) -> Evaluator:
    """The cached domain evaluator of attractors at ``size`` px for data seed ``data_seed`` (see the module doc)."""
    def load():
        ds = Attractors(split="train", num=images, size=size, seed=data_seed)
        items = [ds[i] for i in range(images)]
        x = torch.stack([it["image"] for it in items])
        y = torch.stack([it["params"] for it in items]).double()
        return x, Targets(regress=y, names=PARAM_NAMES), {"split": ds.split, "indices": [0, images]}

    key = {"dataset": "attractors", "size": size, "data_seed": data_seed, "images": images}
    return cached_evaluator(cache_dir, key, load, steps=steps, seed=seed)


def render(params: np.ndarray, size: int, seed: int = 0) -> torch.Tensor:
    """``(N, 4)`` parameters -> ``(N, 3, S, S)`` images by the dataset's renderer (orbits seeded ``seed``, index)."""
    out = []
    for i, p in enumerate(np.asarray(params, dtype=np.float64)):
        x, y = clifford_points(p, np.random.default_rng([seed, i]))
        out.append(to_rgb(density(x, y, p, size)).transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))


def _luminance01(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, S, S) -> (N, 1, S, S)``: channel mean, min-max normalised per image (a flat image stays 0)."""
    x = images.float().mean(1, keepdim=True)
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def similarity(images: torch.Tensor, renders: torch.Tensor) -> torch.Tensor:
    """``(N,)`` SSIM of each image against its rendering (see the module doc for why SSIM)."""
    from pytorch_msssim import ssim

    from sandbox.metrics.regression import ssim_window

    a, b = _luminance01(images), _luminance01(renders)
    win = ssim_window(7, min(a.shape[-2:]), "render-back ssim")
    with torch.autocast(device_type="cpu", enabled=False):
        return ssim(a, b, data_range=1.0, win_size=win, size_average=False)


def estimate(evaluator: Evaluator, images: torch.Tensor) -> np.ndarray:
    """``(N, 4)`` parameters estimated from ``images``, clipped into the prior box."""
    return np.clip(evaluator.regress(images).double().numpy(), PARAM_LOW, PARAM_HIGH)


def validity(evaluator: Evaluator, images: torch.Tensor, seed: int = 0,
             params: np.ndarray | None = None) -> torch.Tensor:
    """``(N,)`` render-back validity of ``images`` (``params``: their estimates when already computed)."""
    params = estimate(evaluator, images) if params is None else params
    return similarity(images, render(params, images.shape[-1], seed))


def coverage(params: np.ndarray, real_params: np.ndarray) -> dict[str, float]:
    """``param_coverage`` and ``param_w1`` of estimates ``params (N, 4)`` against ``real_params (M, 4)``."""
    width = PARAM_HIGH - PARAM_LOW

    def cells(p):
        b = np.clip(((p - PARAM_LOW) / width * BINS).astype(int), 0, BINS - 1)
        return set(map(tuple, b))

    real_cells = cells(real_params)
    hit = len(cells(params) & real_cells) / max(len(real_cells), 1)
    q = np.linspace(0, 1, 201)[1:-1]  # W1 of 1-D distributions = mean |quantile difference|
    w1 = np.mean([np.abs(np.quantile(params[:, j], q) - np.quantile(real_params[:, j], q)).mean() / width[j]
                  for j in range(params.shape[1])])
    return {"param_coverage": float(hit), "param_w1": float(w1)}


def attractor_scores(evaluator: Evaluator, real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """``validity`` (mean render-back SSIM of ``fake``), ``param_coverage`` and ``param_w1`` against ``real``."""
    pf, pr = estimate(evaluator, fake), estimate(evaluator, real)
    return {"validity": float(validity(evaluator, fake, seed, pf).mean()), **coverage(pf, pr)}
