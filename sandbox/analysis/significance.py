"""Statistics of a study over seeds: confidence intervals, paired t-tests, effect sizes, a paired bootstrap.

    mean_ci([0.80, 0.82, 0.84])          # Interval(mean=0.82, std=0.02, lo, hi, n=3): Student t, n - 1 dof
    paired_test(a, b)                    # b - a over the same seeds: mean, CI, t, p (two-sided), Cohen's d_z
    paired_test(a, b, test_train=29/135) # Nadeau-Bengio: seeds re-split one finite data set (they share images)
    holm([0.01, 0.04, 0.03, 0.20])       # Holm's step-down adjusted p-values of one family of planned tests
    seeds_needed(d_z)                    # seeds for 80 % power at the observed d_z (noncentral t)
    bootstrap_diff([d_seed0, ...])       # per-image differences per seed -> CI of the mean difference
    verdict(p, p_holm)                   # "not significant (p = 0.016, Holm 0.065)": the adjusted p decides

The Student t distribution comes from scipy when it is installed; otherwise from the closed form of
its CDF for an integer number of degrees of freedom (exact, no table needed for p-values) and, for
the 97.5 % quantile, a table for 1..30 dof (bisection on the CDF beyond). :data:`T_SOURCE` names the
one in use, and the reports print it. Power (:func:`seeds_needed`) uses scipy's noncentral t, else the
normal approximation of its CDF in Abramowitz & Stegun 26.7.10.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

try:
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - scipy is optional
    _scipy_stats = None

ALPHA = 0.05  # two-sided: 95 % intervals, "significant" below p = 0.05
BOOTSTRAP = 10_000
# t_{0.975, dof} for dof = 1..30 (two-sided 95 %), rounded to 3 decimals as in printed tables
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
T_SOURCE = ("scipy.stats.t" if _scipy_stats is not None else
            "built-in: closed-form Student t CDF (integer dof) for p-values, t_0.975 table for n - 1 <= 30")


def t_abs_cdf(t: float, dof: int) -> float:
    """``P(|T| <= t)`` for Student's t with an integer ``dof >= 1``, in closed form (Abramowitz & Stegun
    26.7.3/26.7.4): with ``θ = atan(t / sqrt(dof))``, odd dof: ``2/π (θ + sinθ cosθ Σ)``, even dof:
    ``sinθ Σ``, where Σ is a finite series in ``cos²θ``. dof 1 is the Cauchy: ``2/π atan(t)``."""
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"dof: got {dof}, expected an integer >= 1")
    t = abs(float(t))
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2:  # 1 + 2/3 c² + (2·4)/(3·5) c⁴ + ... up to c^(dof-3)
        term, total = 1.0, 1.0 if dof > 1 else 0.0
        for k in range(1, (dof - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # 1 + 1/2 c² + (1·3)/(2·4) c⁴ + ... up to c^(dof-2)
    for k in range(1, dof // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_pvalue(t: float, dof: int) -> float:
    """Two-sided p-value of a t statistic: ``P(|T| >= |t|)``."""
    if _scipy_stats is not None:
        return float(2 * _scipy_stats.t.sf(abs(t), dof))
    return max(0.0, 1.0 - t_abs_cdf(t, dof))


def t_quantile(dof: int) -> float:
    """``t_{0.975, dof}``, the half-width factor of a two-sided 95 % interval (see :data:`T_SOURCE`)."""
    if _scipy_stats is not None:
        return float(_scipy_stats.t.ppf(1 - ALPHA / 2, dof))
    if dof <= len(T975):
        return T975[dof - 1]
    lo, hi = 1.9, 2.1  # dof > 30: between z = 1.96 and t_30 = 2.042
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_abs_cdf(mid, dof) < 1 - ALPHA else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Interval:
    """Mean, sample std (n - 1) and the two-sided 95 % Student t interval of the mean (NaN when n < 2)."""
    mean: float
    std: float
    lo: float
    hi: float
    n: int


def mean_ci(values: Sequence[float]) -> Interval:
    """``mean ± t_{0.975, n-1} · std / sqrt(n)``."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(a.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(a.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    std = float(a.std(ddof=1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n)


@dataclass
class Paired:
    """``b - a`` over paired seeds: the interval of the mean difference, t, two-sided p, Cohen's d_z."""
    diff: Interval
    t: float
    p: float
    dz: float


def paired_test(a: Sequence[float], b: Sequence[float], test_train: float = 0.0) -> Paired:
    """Paired t-test of ``b - a`` (equal-length sequences, element i of both from the same seed):
    ``t = mean(d) / sqrt((1/J + test_train) · var(d))`` with J seeds and J - 1 dof; ``d_z = mean(d) / std(d)``.
    ``test_train = 0``: the plain paired test (``t = mean / (std / sqrt(J))``), right when each seed draws its
    own independent data. ``test_train = n_test / n_train``: the corrected resampled t-test of Nadeau & Bengio
    (2003, Machine Learning 52:239), for seeds that re-split one finite data set: their test sets overlap, the
    differences are correlated, and the plain test's variance ``var / J`` is too small; the interval widens
    by the same factor. A constant, non-zero difference has std 0: t = ±inf and p = 0; no difference at
    all: t = 0, p = 1."""
    if len(a) != len(b):
        raise ValueError(f"paired_test: {len(a)} and {len(b)} values; expected one of each per seed")
    if not (math.isfinite(test_train) and test_train >= 0):
        raise ValueError(f"paired_test: test_train {test_train}; expected n_test / n_train >= 0")
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    ci = mean_ci(d)
    if ci.n < 2:
        return Paired(ci, math.nan, math.nan, math.nan)
    # sqrt((1/J + r) var) written as (std / sqrt(J)) sqrt(1 + J r): with r = 0 the plain test's numbers, bit for bit
    se = ci.std / math.sqrt(ci.n) * math.sqrt(1 + ci.n * test_train)
    half = t_quantile(ci.n - 1) * se
    diff = ci if test_train == 0 else Interval(ci.mean, ci.std, ci.mean - half, ci.mean + half, ci.n)
    if ci.std == 0:
        t = 0.0 if ci.mean == 0 else math.copysign(math.inf, ci.mean)
        return Paired(diff, t, 1.0 if ci.mean == 0 else 0.0, t)
    t = ci.mean / se
    return Paired(diff, t, t_pvalue(t, ci.n - 1), ci.mean / ci.std)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the order given: sort the m finite p-values, multiply
    the one of rank i (0-based) by ``m - i``, keep the running maximum, cap at 1. An adjusted p below
    :data:`ALPHA` rejects at family-wise error ALPHA. NaN (no test) stays NaN and is not counted in m."""
    finite = sorted((p, i) for i, p in enumerate(ps) if math.isfinite(p))
    out, running = [math.nan] * len(ps), 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        out[i] = running
    return out


def _nct_sf(x: float, dof: int, nc: float) -> float:
    """``P(T' > x)`` for the noncentral t: scipy, else Abramowitz & Stegun 26.7.10,
    ``Φ((x (1 - 1/(4 dof)) - nc) / sqrt(1 + x² / (2 dof)))`` taken as the CDF (good to ~0.01 from 5 dof)."""
    if _scipy_stats is not None:
        return float(_scipy_stats.nct.sf(x, dof, nc))
    z = (x * (1 - 1 / (4 * dof)) - nc) / math.sqrt(1 + x * x / (2 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def power(dz: float, n: int, test_train: float = 0.0) -> float:
    """Power of the two-sided :func:`paired_test` at :data:`ALPHA` with n seeds when the true effect is
    ``dz`` (mean / std of the differences): noncentral t, dof n - 1, noncentrality ``dz / sqrt(1/n + test_train)``."""
    crit, nc = t_quantile(n - 1), abs(dz) / math.sqrt(1 / n + test_train)
    return _nct_sf(crit, n - 1, nc) + (1 - _nct_sf(-crit, n - 1, nc))


def seeds_needed(dz: float, test_train: float = 0.0, target: float = 0.8, most: int = 100) -> int | None:
    """The fewest seeds (>= 2) whose :func:`paired_test` reaches ``target`` power for effect ``dz``; None
    when no number up to ``most`` does (no effect, or with ``test_train`` > 0 a bound: more seeds re-split
    the same images, and the noncentrality never exceeds ``dz / sqrt(test_train)``)."""
    if not math.isfinite(dz) or dz == 0:
        return None
    return next((n for n in range(2, most + 1) if power(dz, n, test_train) >= target), None)


def bootstrap_diff(diffs: Sequence[Sequence[float]], n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap over images: ``diffs[s]`` holds the per-image differences ``b - a`` of seed s
    (the same images scored by both cells). Each of ``n`` resamples draws every seed's images with
    replacement (within the seed: its own test images) and averages the per-seed means, as the
    estimate itself does; returns ``(estimate, lo, hi)``, the 2.5 / 97.5 percentiles. Seeded."""
    groups = [np.asarray(d, dtype=float) for d in diffs if len(d)]
    if not groups:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([g.mean() for g in groups]))
    means = np.zeros(n)
    for g in groups:
        means += g[rng.integers(0, g.size, size=(n, g.size))].mean(1)
    means /= len(groups)
    lo, hi = np.percentile(means, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return estimate, float(lo), float(hi)


def verdict(p: float, p_holm: float | None = None, exploratory: bool = False) -> str:
    """The comparison in words, decided by the adjusted p where there is one: ``significant (p = 0.003)``
    below :data:`ALPHA`; with ``p_holm`` (the pair is one of a family of planned pairs) ``not significant
    (p = 0.016, Holm 0.065)``; an ``exploratory`` pair (not planned) is not adjusted and gets no verdict."""
    if not math.isfinite(p):
        return "no test (fewer than 2 paired seeds)"

    def fmt(x: float) -> str:
        return f"{x:.2g}" if x >= 1e-4 else "< 0.0001"

    text = f"p = {fmt(p)}" if p >= 1e-4 else "p < 0.0001"
    if exploratory:
        return f"exploratory ({text}, not adjusted)"
    decides = p
    if p_holm is not None:
        text, decides = f"{text}, Holm {fmt(p_holm)}", p_holm
    return f"significant ({text})" if decides < ALPHA else f"not significant ({text})"
