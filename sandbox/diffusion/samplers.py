"""The samplers as pure functions of a network wrapper and a time grid.

``velocity_fn(x, t)`` returns dx/dclock (flow: the velocity u, clock = t; diffusion: v, clock = the
angle tau(t)); ``denoise_fn(x, t)`` returns (x0^, eps^); t is passed as a (B,) float32 tensor. A grid
``ts`` runs from 1 to 0 to sample and from 0 to 1 to invert (ODE samplers and DDIM eta = 0 only).
The update arithmetic is float32 whatever the model returns; the model runs under the caller's
autocast. Every sampler returns float32.

Conditions and classifier-free guidance (Ho & Salimans 2022): every sampler takes ``condition`` (B, F)
and ``guidance`` w; then its function is called as ``fn(x, t, c)`` through :func:`guided`, which returns
``uncond + w (cond - uncond)`` (w = 0 the unconditional prediction, 1 the conditional one, > 1 guided),
the null condition being rows of NaN (:func:`sandbox.nn.condition.null_condition`). Without both the
function is called as today, ``fn(x, t)``. The combination is taken of what the sampler's function returns
(a velocity, or diffusion's (x0^, eps^)): each is affine in the network's prediction at fixed (x, t), so it
equals guiding the network's eps, v or u itself.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from sandbox.errors import SandboxError

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
AlphaSigma = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def time_grid(steps: int, start: float = 1.0, end: float = 0.0, device=None) -> torch.Tensor:
    """``steps + 1`` float32 times uniform from ``start`` to ``end`` (both included)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SandboxError(f"sampling steps must be a whole number >= 1, got {steps!r}")
    return torch.linspace(start, end, steps + 1, dtype=torch.float32, device=device)


def guided(fn: Callable, condition: torch.Tensor | None = None, guidance: float | None = None) -> Callable:
    """``fn(x, t, c)`` as ``fn(x, t)`` with ``condition`` (B, F) or (F,) and guidance ``w`` (None: 1).

    w = 1 calls ``fn(x, t, condition)`` and w = 0 ``fn(x, t, null)`` alone (exactly the conditional and
    unconditional predictions); another w evaluates both in one batched call on ``[x, x]``, ``[t, t]``,
    ``[condition, null]`` and returns ``uncond + w (cond - uncond)`` in float32 (elementwise over a tuple).
    With neither argument ``fn`` is returned as it is (called ``fn(x, t)``)."""
    if condition is None:
        if guidance is not None:
            raise SandboxError(f"guidance {guidance!r} needs a condition to guide towards; pass condition too")
        return fn
    w = 1.0 if guidance is None else guidance
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise SandboxError(f"guidance must be a finite number >= 0 (0 unconditional, 1 conditional, > 1 guided); "
                           f"got {guidance!r}")

    def call(x: torch.Tensor, t: torch.Tensor):
        c = condition.to(device=x.device, dtype=torch.float32)
        c = c.expand(x.shape[0], -1) if c.ndim == 1 else c
        if c.ndim != 2 or c.shape[0] != x.shape[0]:
            raise SandboxError(f"condition of shape {tuple(condition.shape)} for a batch of {x.shape[0]}; "
                               f"expected ({x.shape[0]}, factors) or (factors,)")
        null = torch.full_like(c, float("nan"))
        if w == 1:
            return fn(x, t, c)
        if w == 0:
            return fn(x, t, null)
        both = fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, null]))
        return _combine(both, x.shape[0], float(w))

    return call


def _combine(both: Any, n: int, w: float):
    if isinstance(both, tuple):
        return tuple(_combine(b, n, w) for b in both)
    cond, uncond = both[:n].float(), both[n:].float()
    return uncond + w * (cond - uncond)


def _indices(n: int, progress: bool, desc: str):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, leave=False)


def _at(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=torch.float32).expand(x.shape[0])


def euler(velocity_fn: Fn, x: torch.Tensor, ts: torch.Tensor, clock: torch.Tensor | None = None,
          progress: bool = False, condition: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
    """Explicit Euler on dx/dclock = velocity_fn(x, t) over the grid ``ts`` (clock: the integration
    variable at each grid time, default ``ts`` itself)."""
    velocity_fn = guided(velocity_fn, condition, guidance)
    clock = ts if clock is None else clock
    x = x.float()
    for i in _indices(len(ts) - 1, progress, "euler"):
        x = x + (clock[i + 1] - clock[i]).float() * velocity_fn(x, _at(ts[i], x)).float()
    return x


def heun(velocity_fn: Fn, x: torch.Tensor, ts: torch.Tensor, clock: torch.Tensor | None = None,
         last_euler: bool = False, progress: bool = False, condition: torch.Tensor | None = None,
         guidance: float | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1): an Euler predictor, then the mean of
    the slopes at both ends. ``last_euler`` makes the final step plain Euler (for a process whose
    network is undefined at the end of the grid, as diffusion's x0/eps conversion at sigma = 0)."""
    velocity_fn = guided(velocity_fn, condition, guidance)
    clock = ts if clock is None else clock
    x = x.float()
    n = len(ts) - 1
    for i in _indices(n, progress, "heun"):
        h = (clock[i + 1] - clock[i]).float()
        d = velocity_fn(x, _at(ts[i], x)).float()
        x_euler = x + h * d
        if last_euler and i == n - 1:
            x = x_euler
        else:
            x = x + h * 0.5 * (d + velocity_fn(x_euler, _at(ts[i + 1], x)).float())
    return x


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def ddim(denoise_fn: DenoiseFn, x: torch.Tensor, ts: torch.Tensor, alpha_sigma: AlphaSigma, eta: float = 0.0,
         generator: torch.Generator | None = None, progress: bool = False, condition: torch.Tensor | None = None,
         guidance: float | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021): x' = a' x0^ + sqrt(s'^2 - c^2) eps^ + c z with
    c = eta (s'/s) sqrt(1 - a^2/a'^2); eta = 0 is deterministic (and, on an increasing grid, the
    inversion), eta = 1 is the DDPM posterior. A step to t = 0 lands on x0^."""
    denoise_fn = guided(denoise_fn, condition, guidance)
    x = x.float()
    if eta < 0 or (eta > 0 and bool((ts[1:] > ts[:-1]).any())):
        raise SandboxError(f"ddim eta must be >= 0, and 0 on an increasing (inversion) grid; got {eta!r}")
    for i in _indices(len(ts) - 1, progress, "ddim"):
        x0, eps = denoise_fn(x, _at(ts[i], x))
        a, s = alpha_sigma(ts[i])
        a2, s2 = alpha_sigma(ts[i + 1])
        if eta == 0:
            x = a2 * x0.float() + s2 * eps.float()
        else:
            c = eta * (s2 / s) * (1 - (a / a2) ** 2).clamp(min=0).sqrt()
            x = a2 * x0.float() + (s2**2 - c**2).clamp(min=0).sqrt() * eps.float() + c * _noise(x, generator)
    return x


def ddpm_ancestral(denoise_fn: DenoiseFn, x: torch.Tensor, ts: torch.Tensor, alpha_sigma: AlphaSigma,
                   generator: torch.Generator | None = None, progress: bool = False,
                   condition: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x0^) (Ho et al. 2020; Kingma et al.
    2021 in continuous time): with a_ts = a_t / a_s and b = s_t^2 - a_ts^2 s_s^2, the mean is
    (a_s b / s_t^2) x0^ + (a_ts s_s^2 / s_t^2) x_t and the variance s_s^2 b / s_t^2 (0 at s = 0)."""
    denoise_fn = guided(denoise_fn, condition, guidance)
    x = x.float()
    if bool((ts[1:] >= ts[:-1]).any()):
        raise SandboxError("ddpm ancestral sampling needs a decreasing time grid (it cannot invert)")
    for i in _indices(len(ts) - 1, progress, "ddpm"):
        x0, _ = denoise_fn(x, _at(ts[i], x))
        a_t, s_t = alpha_sigma(ts[i])
        a_s, s_s = alpha_sigma(ts[i + 1])
        a_ts = a_t / a_s
        b = (s_t**2 - a_ts**2 * s_s**2).clamp(min=0)
        mean = (a_s * b / s_t**2) * x0.float() + (a_ts * s_s**2 / s_t**2) * x
        x = mean + (s_s**2 * b / s_t**2).sqrt() * _noise(x, generator)
    return x

