"""Noise schedules and the conversions between what a network may predict (eps, x0, v, u).

Every process here writes a noisy sample as ``x_t = alpha(t) x0 + sigma(t) eps`` with t in [0, 1],
t = 0 clean data, t = 1 pure noise (see :mod:`sandbox.diffusion`). Everything is computed in float32,
whatever the caller's dtype or autocast.
"""
from __future__ import annotations

import math

import torch

from sandbox.errors import SandboxError

PREDICTIONS = ("eps", "x0", "v")  # what a diffusion network may predict
COSINE_S = 0.008  # the offset of the cosine schedule (Nichol & Dhariwal 2021)
ALPHA_BAR_MIN = 1e-5  # the floor of alpha_bar: alpha(1) = 3.2e-3, so x0 = (x - sigma eps) / alpha stays finite
_PHI0 = math.pi / 2 * COSINE_S / (1 + COSINE_S)
_COS2_PHI0 = math.cos(_PHI0) ** 2


def as_time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` as a float32 tensor (on ``like``'s device if given)."""
    device = like.device if like is not None else None
    return torch.as_tensor(t, dtype=torch.float32, device=device)


def per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor (or a scalar) shaped to broadcast over ``x`` of shape (B, ...)."""
    v = v.float()
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim())) if v.dim() else v


def cosine_alpha_bar(t) -> torch.Tensor:
    """alpha_bar(t) = m + (1 - m) cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s)), s = 0.008, m = 1e-5:
    the cosine schedule lifted by an affine floor (rather than clamped) so that it stays strictly
    decreasing and smooth up to t = 1, with alpha_bar(0) = 1 and alpha_bar(1) = 1e-5."""
    t = as_time(t)
    phi = math.pi / 2 * (t + COSINE_S) / (1 + COSINE_S)
    return ALPHA_BAR_MIN + (1 - ALPHA_BAR_MIN) * torch.cos(phi) ** 2 / _COS2_PHI0


def cosine_alpha_sigma(t) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of the variance-preserving cosine schedule: alpha = sqrt(alpha_bar), sigma =
    sqrt(1 - alpha_bar). 1 - alpha_bar is computed as sin(B - A) sin(B + A) / cos^2 A (the identity
    cos^2 A - cos^2 B = sin(B - A) sin(B + A)), so a small t has an accurate small sigma in float32
    instead of the rounding noise of ``1 - alpha_bar``."""
    t = as_time(t)
    ab = cosine_alpha_bar(t)
    half = math.pi / 2 / (1 + COSINE_S)
    one_minus = (1 - ALPHA_BAR_MIN) * torch.sin(half * t) * torch.sin(half * (t + 2 * COSINE_S)) / _COS2_PHI0
    return ab.clamp(0.0, 1.0).sqrt(), one_minus.clamp(0.0, 1.0).sqrt()


def cosine_snr(t) -> torch.Tensor:
    """alpha^2 / sigma^2 (inf at t = 0)."""
    a, s = cosine_alpha_sigma(t)
    return a**2 / s**2


def cosine_angle(t) -> torch.Tensor:
    """The angle tau = atan2(sigma, alpha) in [0, ~pi/2]: x_t = cos(tau) x0 + sin(tau) eps, so
    dx/dtau = v (Salimans & Ho 2022): the clock the diffusion ODE samplers integrate in."""
    a, s = cosine_alpha_sigma(t)
    return torch.atan2(s, a)


def linear_alpha_sigma(t) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) = (1 - t, t): the straight path of rectified flow / flow matching."""
    t = as_time(t)
    return 1.0 - t, t


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise SandboxError(f"unknown diffusion prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")
    return prediction


def target_of(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """What a network predicting ``prediction`` should output for the pair (x0, eps):
    eps, x0 or v = alpha eps - sigma x0 (alpha, sigma: per-sample (B,) or scalars)."""
    check_prediction(prediction)
    x0, eps = x0.float(), eps.float()
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return per_sample(as_time(alpha, x0), x0) * eps - per_sample(as_time(sigma, x0), x0) * x0


def to_x0_eps(pred: torch.Tensor, x_t: torch.Tensor, alpha, sigma, prediction: str):
    """(x0, eps) consistent with ``x_t = alpha x0 + sigma eps`` from a prediction of either kind.
    eps: x0 = (x_t - sigma eps) / alpha; x0: eps = (x_t - alpha x0) / sigma (undefined at sigma = 0);
    v: x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v (uses alpha^2 + sigma^2 = 1)."""
    check_prediction(prediction)
    pred, x_t = pred.float(), x_t.float()
    a, s = per_sample(as_time(alpha, x_t), x_t), per_sample(as_time(sigma, x_t), x_t)
    if prediction == "eps":
        return (x_t - s * pred) / a, pred
    if prediction == "x0":
        return pred, (x_t - a * pred) / s
    return a * x_t - s * pred, s * x_t + a * pred


def convert(pred: torch.Tensor, x_t: torch.Tensor, alpha, sigma, source: str, dest: str) -> torch.Tensor:
    """A prediction of kind ``source`` at (x_t, alpha, sigma) rewritten as one of kind ``dest``."""
    check_prediction(dest)
    x0, eps = to_x0_eps(pred, x_t, alpha, sigma, source)
    return target_of(x0, eps, alpha, sigma, dest)


def flow_x0_eps(u: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a flow velocity u = eps - x0 at x_t = (1 - t) x0 + t eps:
    x0 = x_t - t u, eps = x_t + (1 - t) u."""
    u, x_t = u.float(), x_t.float()
    t = per_sample(as_time(t, x_t), x_t)
    return x_t - t * u, x_t + (1 - t) * u


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """The per-sample weight on the MSE of ``prediction`` that makes it min(SNR, gamma) times the
    x0-MSE (Hang et al. 2023): ||eps - eps^||^2 = snr ||x0 - x0^||^2 and ||v - v^||^2 =
    (snr + 1) ||x0 - x0^||^2, so eps: min(snr, g) / snr; v: min(snr, g) / (snr + 1); x0: min(snr, g).
    At snr = inf (t = 0) the eps and v weights are 0 (their limit), not inf / inf."""
    check_prediction(prediction)
    snr = snr.float()
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return torch.where(torch.isinf(snr), torch.zeros_like(snr), clipped / snr)
    return torch.where(torch.isinf(snr), torch.zeros_like(snr), clipped / (snr + 1))
