"""Diffusion (variance preserving, cosine) and FlowMatching (rectified flow): the training pair, the
loss and the samplers of :mod:`sandbox.diffusion.samplers` wired to one process each."""
from __future__ import annotations

import contextlib

import torch

from sandbox.diffusion import samplers as S
from sandbox.diffusion.schedules import (
    check_prediction, cosine_alpha_sigma, cosine_angle, flow_x0_eps, linear_alpha_sigma, min_snr_weight,
    per_sample, target_of, to_x0_eps,
)
from sandbox.errors import SandboxError
from sandbox.registry import Registry

T_SAMPLINGS = ("uniform", "logit_normal")
SAMPLERS = ("ddim", "ddpm", "euler", "heun")  # every sampler name; each process accepts its .samplers
PROCESSES: Registry = Registry("generative process")


def sample_times(n: int, how: str, generator=None, device=None) -> torch.Tensor:
    """(n,) float32 times in (0, 1]: uniform (1 - U[0, 1)) or logit-normal (sigmoid of N(0, 1),
    Esser et al. 2024, which spends the training on the middle of the path)."""
    if how == "uniform":
        return 1.0 - torch.rand(n, generator=generator, device=device, dtype=torch.float32)
    if how == "logit_normal":
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
        return torch.sigmoid(z).clamp(min=1e-6, max=1.0)
    raise SandboxError(f"unknown t sampling {how!r}; accepted: {', '.join(T_SAMPLINGS)}")


class Process:
    """What both processes share: x_t = alpha(t) x0 + sigma(t) eps, a per-sample weighted MSE, and
    sample/invert through the pure samplers."""

    name = ""
    samplers: tuple[str, ...] = ()
    default_sampler = ""

    def __init__(self, t_sampling: str = "uniform"):
        if t_sampling not in T_SAMPLINGS:
            raise SandboxError(f"unknown t sampling {t_sampling!r}; accepted: {', '.join(T_SAMPLINGS)}")
        self.t_sampling = t_sampling

    # -- training -------------------------------------------------------------------------------
    def sample_t(self, n: int, generator=None, device=None) -> torch.Tensor:
        return sample_times(n, self.t_sampling, generator, device)

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def training_pair(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
        """(x_t, target, weight): the network input at time t, what it should predict, and the (B,)
        per-sample loss weight. All float32."""
        if eps.shape != x0.shape or t.shape != x0.shape[:1]:
            raise SandboxError(f"training_pair wants eps shaped like x0 {tuple(x0.shape)} and t of shape "
                               f"({x0.shape[0]},); got eps {tuple(eps.shape)}, t {tuple(t.shape)}")
        t = t.float()
        a, s = self.alpha_sigma(t)
        x0, eps = x0.float(), eps.float()
        x_t = per_sample(a, x0) * x0 + per_sample(s, x0) * eps
        return x_t, self._target(x0, eps, a, s), self._weight(t, a, s)

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """mean over the batch of weight * the per-sample mean squared error (float32)."""
        per = ((pred.float() - target.float()) ** 2).reshape(pred.shape[0], -1).mean(dim=1)
        return (per if weight is None else weight.float() * per).mean()

    def _target(self, x0, eps, a, s):
        raise NotImplementedError

    def _weight(self, t, a, s) -> torch.Tensor:
        return torch.ones_like(t)

    # -- sampling ---------------------------------------------------------------------------------
    def _choose(self, sampler: str | None, allowed: tuple[str, ...], what: str) -> str:
        sampler = self.default_sampler if sampler is None else sampler
        if sampler not in allowed:
            raise SandboxError(f"unknown {what} {sampler!r} for model {self.name}; accepted: {', '.join(allowed)}")
        return sampler

    def sample(self, model, noise: torch.Tensor, steps: int = 20, sampler: str | None = None, eta: float = 0.0,
               generator: torch.Generator | None = None, progress: bool = False,
               condition: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
        """x0 from ``noise`` ~ N(0, I) by integrating t = 1 -> 0 in ``steps`` uniform steps
        (``model(x, t)`` -> the network's prediction, t a (B,) float32 tensor). float32.
        ``condition`` (B, F) or (F,): the model is called ``model(x, t, c)`` and guided with ``guidance``
        (None: 1; :func:`sandbox.diffusion.samplers.guided`)."""
        sampler = self._choose(sampler, self.samplers, "sampler")
        if (eta != 0 and sampler != "ddim") or eta < 0:
            raise SandboxError(f"eta {eta!r} applies to the ddim sampler only (eta >= 0); sampler is {sampler!r}")
        ts = S.time_grid(steps, 1.0, 0.0, device=noise.device)
        with _no_grad():
            return self._run(model, noise, ts, sampler, eta, generator, progress, _guide(condition, guidance))

    def invert(self, model, x0: torch.Tensor, steps: int = 20, sampler: str | None = None,
               progress: bool = False, condition: torch.Tensor | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """The noise that ``sample`` (same sampler, steps, condition and guidance) maps back to ``x0``: the
        deterministic sampler run from t = 0 to t = 1."""
        allowed = tuple(n for n in self.samplers if n != "ddpm")
        sampler = self._choose(sampler, allowed, "inversion sampler (deterministic)")
        ts = S.time_grid(steps, 0.0, 1.0, device=x0.device)
        with _no_grad():
            return self._run(model, x0, ts, sampler, 0.0, None, progress, _guide(condition, guidance))

    def _run(self, model, x, ts, sampler, eta, generator, progress, guide):
        raise NotImplementedError


def _guide(condition, guidance) -> dict:
    """The samplers' guidance keywords: none at all without a condition (today's calls exactly)."""
    S.guided(lambda x, t, c: x, condition, guidance)  # checks guidance (and that it has a condition) upfront
    return {} if condition is None else {"condition": condition, "guidance": guidance}


def _call(model, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None):
    """``model(x, t)``, or ``model(x, t, condition)`` when there is one."""
    return model(x, t) if condition is None else model(x, t, condition)


def _no_grad():
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


@PROCESSES.register("ddpm")
class Diffusion(Process):
    """Variance-preserving diffusion on the continuous cosine schedule; the network predicts eps, x0
    or v (default; Salimans & Ho 2022). ``min_snr``: gamma of the min-SNR loss weighting (Hang et al.
    2023), None for none. Times are kept >= ``t_min`` for training and for the network (sigma > 0)."""

    name = "ddpm"
    samplers = ("ddim", "ddpm", "euler", "heun")
    default_sampler = "ddim"
    t_min = 1e-4

    def __init__(self, prediction: str = "v", min_snr: float | None = None, t_sampling: str = "uniform"):
        super().__init__(t_sampling)
        self.prediction = check_prediction(prediction)
        if min_snr is not None and not (isinstance(min_snr, (int, float)) and min_snr > 0):
            raise SandboxError(f"min_snr must be a number > 0 or None, got {min_snr!r}")
        self.min_snr = None if min_snr is None else float(min_snr)

    def sample_t(self, n: int, generator=None, device=None) -> torch.Tensor:
        return super().sample_t(n, generator, device).clamp(min=self.t_min)

    def alpha_sigma(self, t):
        return cosine_alpha_sigma(t)

    def _target(self, x0, eps, a, s):
        return target_of(x0, eps, a, s, self.prediction)

    def _weight(self, t, a, s):
        if self.min_snr is None:
            return torch.ones_like(t)
        return min_snr_weight(a**2 / s**2, self.min_snr, self.prediction)

    def denoise(self, model, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None):
        """(x0^, eps^) from the network at (x, t); t is kept >= t_min (the trained range, sigma > 0)."""
        t = t.float().clamp(min=self.t_min)
        a, s = cosine_alpha_sigma(t)
        return to_x0_eps(_call(model, x, t, condition), x, a, s, self.prediction)

    def velocity(self, model, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """dx/dtau = v^ = alpha eps^ - sigma x0^ (tau: the angle clock, :func:`cosine_angle`)."""
        x0, eps = self.denoise(model, x, t, condition)
        a, s = cosine_alpha_sigma(t.float().clamp(min=self.t_min))
        return per_sample(a, x) * eps - per_sample(s, x) * x0

    def _run(self, model, x, ts, sampler, eta, generator, progress, guide):
        def denoise(x, t, c=None):
            return self.denoise(model, x, t, c)

        def velocity(x, t, c=None):
            return self.velocity(model, x, t, c)

        if sampler == "ddim":
            return S.ddim(denoise, x, ts, cosine_alpha_sigma, eta, generator, progress, **guide)
        if sampler == "ddpm":
            return S.ddpm_ancestral(denoise, x, ts, cosine_alpha_sigma, generator, progress, **guide)
        clock = cosine_angle(ts)
        if sampler == "euler":
            return S.euler(velocity, x, ts, clock, progress, **guide)
        return S.heun(velocity, x, ts, clock, last_euler=bool(ts[-1] == 0), progress=progress, **guide)


@PROCESSES.register("flow")
class FlowMatching(Process):
    """Conditional flow matching on the straight path x_t = (1 - t) x0 + t eps (rectified flow); the
    network predicts the velocity u = eps - x0. "ddim" is accepted and is Euler (the same update)."""

    name = "flow"
    samplers = ("euler", "heun", "ddim")
    default_sampler = "euler"

    def alpha_sigma(self, t):
        return linear_alpha_sigma(t)

    def _target(self, x0, eps, a, s):
        return eps - x0

    def velocity(self, model, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return _call(model, x, t.float(), condition).float()

    def denoise(self, model, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None):
        """(x0^, eps^) = (x - t u^, x + (1 - t) u^)."""
        return flow_x0_eps(self.velocity(model, x, t, condition), x, t)

    def _run(self, model, x, ts, sampler, eta, generator, progress, guide):
        def velocity(x, t, c=None):
            return self.velocity(model, x, t, c)

        if sampler == "heun":
            return S.heun(velocity, x, ts, progress=progress, **guide)
        return S.euler(velocity, x, ts, progress=progress, **guide)
