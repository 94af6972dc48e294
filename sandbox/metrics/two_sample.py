"""Classifier two-sample tests (Lopez-Paz & Oquab 2017) that grade: held-out AUC with an interval.

* :func:`c2st`: a deliberately small classifier (an L2-penalised logistic regression on the domain features
  of :mod:`sandbox.metrics.evaluators`) learns real vs generated on one half of each set and is scored on the
  other half: held-out ROC AUC (0.5: indistinguishable, 1: separable) with DeLong's 95 % interval, and the
  held-out log-loss gain over chance (nats; keeps grading where the AUC reaches 1). Not a plain accuracy,
  which saturates at 100 % for every visible defect.
* :func:`c2st_pixels`: the same on pixels with a small CNN, which separates every visible degradation.
Deterministic: one seeded permutation, full-batch L-BFGS / a forked RNG; the caller's random stream is untouched.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.errors import SandboxError
from sandbox.nn.core import Encoder


def auc_delong(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, float, float]:
    """ROC AUC of scores ``pos`` (should be high) against ``neg`` with DeLong's 95 % interval (clipped to [0, 1];
    where DeLong's variance is 0, all scores tied or perfectly separated: the null's standard error)."""
    pos, neg = pos.double().flatten(), neg.double().flatten()
    psi = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    auc = float(psi.mean())
    v10, v01 = psi.mean(1), psi.mean(0)
    se = math.sqrt(max(float(v10.var() / len(pos) + v01.var() / len(neg)), 0.0))
    if se == 0.0:  # every score tied (a classifier that learned nothing) or perfect separation: DeLong's estimate
        # degenerates to 0; the Mann-Whitney null's standard error instead (conservative), not a zero-width interval
        se = math.sqrt((len(pos) + len(neg) + 1) / (12 * len(pos) * len(neg)))
    return auc, max(0.0, auc - 1.96 * se), min(1.0, auc + 1.96 * se)


C2ST_STEPS, C2ST_WIDTHS, C2ST_L2 = 300, (8, 16, 32), 1e-2


def _halves(real: torch.Tensor, fake: torch.Tensor, seed: int):
    """``min(N, M)`` of each set in one seeded order, split in halves: ``(x_fit, y_fit, real_test, fake_test)``."""
    n = min(len(real), len(fake))
    if n < 4:
        raise SandboxError(f"c2st needs at least 4 images per set, got {len(real)} and {len(fake)}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    real, fake = real[:n][perm].float().cpu(), fake[:n][perm].float().cpu()
    h = n // 2
    return torch.cat([real[:h], fake[:h]]), torch.cat([torch.ones(h), torch.zeros(h)]), real[h:], fake[h:]


def _held_out(pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
    auc, lo, hi = auc_delong(pos, neg)
    nll = float(torch.cat([F.softplus(-pos), F.softplus(neg)]).mean())  # -log p(true label), in nats
    return {"c2st_auc": auc, "c2st_auc_lo": lo, "c2st_auc_hi": hi, "c2st_nll_gain": math.log(2) - nll}


def c2st(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, l2: float = C2ST_L2) -> dict[str, float]:
    """Classifier two-sample test on features ``real (N, D)`` vs ``fake (M, D)`` (the domain evaluator's):
    ``min(N, M)`` of each, halves by one seeded permutation; an L2-penalised logistic regression (features
    standardised on the fitting half, full-batch L-BFGS, fixed iterations) fitted on the first halves, scored
    on the second: ``c2st_auc`` [``c2st_auc_lo``, ``c2st_auc_hi``] (DeLong 95 %) and ``c2st_nll_gain`` = ln 2 -
    held-out log-loss (nats, 0 = chance). Deliberately small: the penalty keeps its confidence finite, so the
    log-loss keeps grading where the AUC has reached 1. Identical sets give exactly 0.5 (both halves hold the
    same points, with both labels)."""
    x_fit, y_fit, real_t, fake_t = _halves(real, fake, seed)
    mu, sd = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    x_fit = (x_fit - mu) / sd
    w = torch.zeros(x_fit.shape[1] + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x_fit @ w[:-1] + w[-1], y_fit) + l2 * w[:-1].square().sum()
        loss.backward()
        return loss

    with torch.autocast(device_type="cpu", enabled=False):
        opt.step(closure)
    with torch.no_grad():
        pos, neg = (((x - mu) / sd) @ w[:-1] + w[-1] for x in (real_t, fake_t))
    return _held_out(pos, neg)


def c2st_pixels(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, steps: int = C2ST_STEPS) -> dict[str, float]:
    """:func:`c2st` on images ``(N, C, S, S)`` with a small CNN (core Encoder, widths 8-16-32, one block per
    stage, GroupNorm, global mean, linear; ``steps`` Adam steps, batch 64): it sees everything a person does
    and more, so on the references it separates every degradation (AUC 1): a check, not a grade. Keys
    ``c2st_pixels_*``."""
    x_fit, y_fit, real_t, fake_t = _halves(real, fake, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(_Pooled(Encoder(real.shape[1], C2ST_WIDTHS, blocks=1, norm="group")),
                            nn.Linear(C2ST_WIDTHS[-1], 1))
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        with torch.autocast(device_type="cpu", enabled=False):
            for _ in range(steps):
                idx = torch.randint(0, len(x_fit), (min(64, len(x_fit)),), generator=g)
                loss = F.binary_cross_entropy_with_logits(net(x_fit[idx] * 4 - 2).squeeze(1), y_fit[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        pos, neg = (torch.cat([net(x[i:i + 256] * 4 - 2).squeeze(1) for i in range(0, len(x), 256)])
                    for x in (real_t, fake_t))
    return {k.replace("c2st", "c2st_pixels"): v for k, v in _held_out(pos, neg).items()}


class _Pooled(nn.Module):
    """An Encoder's coarsest features averaged over space: ``(B, C, S, S) -> (B, widths[-1])``."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1].mean((2, 3))
