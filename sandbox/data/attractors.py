"""``attractors``: images of Clifford strange attractors with their known parameter vector.

The Clifford map (Pickover 1999)::

    x' = sin(a y) + c cos(a x)
    y' = sin(b x) + d cos(b y)

is iterated from many random starting points; the visited points form the attractor, whose
log density is rendered in a fixed palette inside the map's theoretical bounds
``|x| <= 1 + |c|``, ``|y| <= 1 + |d|`` (so the figure fills the frame whatever its scale).
Each sample carries ``params = (a, b, c, d)``: a 4-dimensional ground-truth latent space
that a learned one can be compared with (see :func:`sandbox.probe.latent_probe`).

Parameters are drawn uniformly from ``a, b in [1, 2]`` and ``c, d in [-2, 2]`` (``PARAM_LOW``,
``PARAM_HIGH``): there about 80 % of draws are chaotic (with ``|a|, |b| < 1`` most draws
collapse). Degenerate draws (fixed points, periodic orbits, thin single curves) are
rejected deterministically: a draw is kept when its orbit visits at least ``MIN_COVERAGE``
of the cells of a fixed 64 x 64 grid, otherwise the next draw of the same index is tried.
The check does not depend on ``size``, so an index names the same attractor at every size.

Everything is a pure function of ``(seed, split, index)``; about 5 ms per image at 64 px on one core,
rendered on first use and cached (``cache=True``, ``3 * S * S * 4`` bytes per image).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sandbox.data.splits import generated_splits
from sandbox.errors import SandboxError

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
PARAM_NAMES = ("a", "b", "c", "d")
PARAM_LOW = np.array([1.0, 1.0, -2.0, -2.0])
PARAM_HIGH = np.array([2.0, 2.0, 2.0, 2.0])
MIN_COVERAGE = 0.05  # fraction of the 64 x 64 check grid an accepted orbit must visit
CHECK_GRID = 64
ORBITS, BURN_IN, STEPS = 1024, 30, 60  # parallel orbits, discarded and kept iterations
MAX_TRIES = 64


def clifford_points(params: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b, c, d) -> (x, y)``: ``ORBITS * STEPS`` points on the attractor (after ``BURN_IN`` steps)."""
    # float32: vectorised sin/cos run ~7x faster than in float64 and the image cannot tell
    a, b, c, d = params.astype(np.float32)
    x = rng.uniform(-1, 1, ORBITS).astype(np.float32)
    y = rng.uniform(-1, 1, ORBITS).astype(np.float32)
    xs, ys = np.empty((STEPS, ORBITS), np.float32), np.empty((STEPS, ORBITS), np.float32)
    for i in range(BURN_IN + STEPS):
        x, y = np.sin(a * y) + c * np.cos(a * x), np.sin(b * x) + d * np.cos(b * y)
        if i >= BURN_IN:
            xs[i - BURN_IN], ys[i - BURN_IN] = x, y
    return xs.ravel(), ys.ravel()


def density(x: np.ndarray, y: np.ndarray, params: np.ndarray, size: int) -> np.ndarray:
    """Visit counts ``(size, size)`` inside the bounds ``|x| <= 1 + |c|``, ``|y| <= 1 + |d|`` (row 0 = top)."""
    bx, by = 1 + abs(params[2]), 1 + abs(params[3])
    col = np.clip(((x / bx + 1) * 0.5 * size).astype(np.int64), 0, size - 1)
    row = np.clip(((1 - y / by) * 0.5 * size).astype(np.int64), 0, size - 1)
    return np.bincount(row * size + col, minlength=size * size).reshape(size, size).astype(np.float32)


def to_rgb(counts: np.ndarray) -> np.ndarray:
    """Counts ``(S, S)`` -> ``(S, S, 3)`` float32 in [0, 1]: log density in a fixed warm palette.

    The counts are smoothed with a Gaussian of ``S / 100`` px first: the speckle of a finite
    number of orbit points is sampling noise, not a property of the attractor. Normalised by
    the 99th percentile of the visited cells, so a few very dense cells (cusps of the
    attractor) do not darken the rest of the figure.
    """
    size = counts.shape[0]
    counts = cv2.GaussianBlur(counts, (0, 0), sigmaX=size / 100, borderType=cv2.BORDER_CONSTANT)
    v = np.log1p(counts)
    visited = v[v > 0]
    top = np.percentile(visited, 99) if visited.size else 1.0
    v = np.clip(v / max(top, 1e-6), 0, 1)
    return np.stack([v**0.6, v**1.3, 0.25 * v + 0.6 * v**3], axis=-1).astype(np.float32)


class Attractors(Dataset):
    """``{"image": (3, S, S) in [0, 1], "params": (4,) float32 = (a, b, c, d), "index": int}``.

    ``split``: train | val | test (independent random streams); ``num``: samples; ``size``:
    side S in pixels; ``seed``: the run seed; ``cache``: keep rendered images in memory.
    """

    targets = ("image",)
    param_names = PARAM_NAMES

    def __init__(self, split: str = "train", num: int = 1000, size: int = 64, seed: int = 0, cache: bool = True):
        if split not in SPLIT_IDS:
            raise SandboxError(f"attractors: split {split!r}; expected one of {', '.join(SPLIT_IDS)}")
        if size < 4:
            raise SandboxError(f"attractors: size {size} px is too small; expected data.size >= 4")
        self.split, self.num, self.size, self.seed = split, num, size, seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    @classmethod
    def from_config(cls, cfg, splits: tuple[str, ...], wrap=lambda ds: ds) -> dict:
        """``{split: Attractors}`` of ``cfg.data`` (counts, size, cache) and ``cfg.seed``."""
        return generated_splits(cls, cfg, splits, wrap)

    def __len__(self) -> int:
        return self.num

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first accepted draw of ``index``: ``(params (4,), x, y)`` (see the module doc)."""
        for attempt in range(MAX_TRIES):
            rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, attempt])
            params = rng.uniform(PARAM_LOW, PARAM_HIGH)
            x, y = clifford_points(params, rng)
            if (density(x, y, params, CHECK_GRID) > 0).mean() >= MIN_COVERAGE:
                return params, x, y
        raise SandboxError(f"attractors: no chaotic draw for index {index} in {MAX_TRIES} tries")  # p ~ 0.2**64

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``index -> (image (S, S, 3) float32 in [0, 1], params (4,) float32)``."""
        params, x, y = self.draw(index)
        return to_rgb(density(x, y, params, self.size)), params.astype(np.float32)

    def params(self, indices=None) -> torch.Tensor:
        """``(N, 4)`` true parameters of ``indices`` (all samples by default)."""
        indices = range(self.num) if indices is None else indices
        return torch.stack([self[i]["params"] for i in indices])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num:
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            img, params = self._cache[index]
        else:
            img, params = self.render(index)
            if self._cache is not None:
                self._cache[index] = (img, params)
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                "params": torch.from_numpy(params), "index": index}
