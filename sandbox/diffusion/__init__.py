"""Denoising diffusion and flow matching as pure functions (torch only; layer 1, beside sandbox.nn).

Time convention (every function here): t in [0, 1], a float32 tensor of shape (B,); t = 0 is clean
data, t = 1 is pure noise N(0, I); sampling integrates from t = 1 to t = 0, inversion from 0 to 1.
Schedules and updates are float32 even under autocast (the network itself runs under the caller's).

- Flow (``FlowMatching``, model name ``flow``; rectified flow, straight path): x_t = (1 - t) x0 + t eps,
  the network predicts the velocity u = dx_t/dt = eps - x0. t is drawn "uniform" or "logit_normal"
  (sigmoid of N(0, 1), Esser et al. 2024). Samplers: euler (default), heun, ddim (= euler).
- Diffusion (``Diffusion``, model name ``ddpm``; variance preserving, continuous cosine schedule,
  Nichol & Dhariwal 2021): alpha_bar(t) = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s)), s = 0.008,
  lifted by an affine floor to alpha_bar(1) = 1e-5; alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar),
  x_t = alpha x0 + sigma eps.
  The network predicts "eps", "x0" or "v" = alpha eps - sigma x0 (default; Salimans & Ho 2022);
  optional min-SNR-gamma weighting (Hang et al. 2023). Training and network times are kept >= 1e-4.
  Samplers: ddim (default; eta = 0 deterministic, eta = 1 the DDPM posterior), ddpm (ancestral),
  euler and heun on the probability-flow ODE in the angle clock tau = atan2(sigma, alpha), where
  dx/dtau = v.

    proc = PROCESSES["flow"]()  or  Diffusion(prediction="v", min_snr=5.0)
    t = proc.sample_t(n)                                   # (n,) in (0, 1]
    x_t, target, weight = proc.training_pair(x0, eps, t)
    loss = proc.loss(model(x_t, t), target, weight)
    x0 = proc.sample(model, noise, steps=20, sampler=None)  # model(x, t) -> prediction
    noise = proc.invert(model, x0, steps=20)                # deterministic samplers only
"""
from __future__ import annotations

from sandbox.diffusion.processes import (
    PROCESSES, SAMPLERS, T_SAMPLINGS, Diffusion, FlowMatching, Process, sample_times,
)
from sandbox.diffusion.schedules import PREDICTIONS

__all__ = ["PROCESSES", "SAMPLERS", "T_SAMPLINGS", "PREDICTIONS", "Diffusion", "FlowMatching", "Process",
           "sample_times"]
