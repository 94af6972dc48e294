"""sandbox.diffusion (issue 15): the schedule and the eps/x0/v conversions, every sampler against the
closed-form optimal predictor of Gaussian data, Heun against Euler, inversion, a learned 2-D toy, and
bad input. The analytic tests need no training: for x0 ~ N(MU, SD^2 I) and x_t = a x0 + s eps,
E[x0 | x_t] = MU + a SD^2 / (a^2 SD^2 + s^2) (x_t - a MU) and E[eps | x_t] = s (x_t - a MU) / (a^2 SD^2 + s^2)
(Gaussian conditioning: cov(x0, x_t) = a SD^2, cov(eps, x_t) = s, var(x_t) = a^2 SD^2 + s^2), and every
prediction the networks make is a linear combination of those two."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sandbox.diffusion import PROCESSES, SAMPLERS, Diffusion, FlowMatching
from sandbox.diffusion import samplers as S
from sandbox.diffusion.schedules import (
    PREDICTIONS, convert, cosine_alpha_bar, cosine_alpha_sigma, flow_x0_eps, min_snr_weight, target_of,
    to_x0_eps,
)
from sandbox.errors import SandboxError

MU, SD = 2.0, 0.5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny ops, one thread is faster


def posterior(x, a, s):
    """(E[x0 | x_t], E[eps | x_t]) for Gaussian data, written without dividing by s (finite at t = 0)."""
    a, s = a.reshape(-1, 1), s.reshape(-1, 1)
    var = a**2 * SD**2 + s**2
    return MU + a * SD**2 / var * (x - a * MU), s * (x - a * MU) / var


def optimal(proc):
    """The network that minimises the training loss of ``proc`` on N(MU, SD^2) data."""
    def model(x, t):
        a, s = proc.alpha_sigma(t)
        x0, eps = posterior(x, a, s)
        if isinstance(proc, FlowMatching):
            return eps - x0  # u* = E[eps - x0 | x_t]
        return target_of(x0, eps, a, s, proc.prediction)
    return model


def exact_map(proc, noise):
    """Where the probability-flow ODE takes ``noise`` (as x at t = 1): every marginal is Gaussian
    and the flow is affine and increasing per dimension, so it is the monotone map between
    N(a1 MU, a1^2 SD^2 + s1^2) and N(MU, SD^2): MU + SD (x1 - a1 MU) / sqrt(a1^2 SD^2 + s1^2)."""
    a1, s1 = proc.alpha_sigma(torch.tensor(1.0))
    return MU + SD * (noise - a1 * MU) / torch.sqrt(a1**2 * SD**2 + s1**2)


def noise(n=20000, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


# -- schedule and conversions ------------------------------------------------------------------------


def test_cosine_schedule_decreases_from_one_and_alpha_sigma_are_a_unit_pair():
    t = torch.linspace(0, 1, 2001)
    ab = cosine_alpha_bar(t)
    assert (ab[1:] < ab[:-1]).all()
    assert abs(ab[0].item() - 1) < 1e-6 and abs(ab[-1].item() - 1e-5) < 1e-7
    a, s = cosine_alpha_sigma(t)
    assert a.dtype == s.dtype == torch.float32
    assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-6)
    # sigma is accurate at tiny t (not the rounding noise of 1 - alpha_bar in float32): float64 reference
    tiny = torch.tensor([1e-7, 1e-5, 1e-3], dtype=torch.float64)
    phi = math.pi / 2 * (tiny + 0.008) / 1.008
    ref = torch.sqrt(1 - (1e-5 + (1 - 1e-5) * torch.cos(phi) ** 2 / math.cos(math.pi / 2 * 0.008 / 1.008) ** 2))
    assert torch.allclose(cosine_alpha_sigma(tiny.float())[1].double(), ref, rtol=1e-4)


@pytest.mark.parametrize("source", PREDICTIONS)
@pytest.mark.parametrize("dest", PREDICTIONS)
def test_predictions_convert_into_each_other_and_back(source, dest):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(64, 3, 4, 4, generator=g), torch.randn(64, 3, 4, 4, generator=g)
    t = torch.linspace(0.01, 0.95, 64)
    a, s = cosine_alpha_sigma(t)
    x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps
    src = target_of(x0, eps, a, s, source)
    there = convert(src, x_t, a, s, source, dest)
    assert torch.allclose(there, target_of(x0, eps, a, s, dest), atol=1e-5)
    assert torch.allclose(convert(there, x_t, a, s, dest, source), src, atol=1e-5)
    x0_back, eps_back = to_x0_eps(src, x_t, a, s, source)
    assert torch.allclose(x0_back, x0, atol=1e-5) and torch.allclose(eps_back, eps, atol=1e-5)


def test_flow_velocity_gives_back_x0_and_eps():
    g = torch.Generator().manual_seed(2)
    x0, eps, t = torch.randn(32, 5, generator=g), torch.randn(32, 5, generator=g), torch.rand(32, generator=g)
    x_t, u, w = FlowMatching().training_pair(x0, eps, t)
    assert torch.allclose(x_t, (1 - t[:, None]) * x0 + t[:, None] * eps) and torch.equal(u, eps - x0)
    assert torch.equal(w, torch.ones(32))
    x0_back, eps_back = flow_x0_eps(u, x_t, t)
    assert torch.allclose(x0_back, x0, atol=1e-5) and torch.allclose(eps_back, eps, atol=1e-5)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weight_makes_every_loss_min_snr_times_the_x0_error(prediction):
    """weight * ||pred - target||^2 == min(snr, 5) * ||x0^ - x0||^2 for any prediction error, where
    x0^ is the x0 the prediction implies at that x_t (Hang et al. 2023)."""
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    t = torch.linspace(0.02, 0.98, 16)  # snr from ~2400 down to ~1e-3: both sides of gamma = 5
    proc = Diffusion(prediction=prediction, min_snr=5.0)
    x_t, target, weight = proc.training_pair(x0, eps, t)
    pred = target + 0.1 * torch.randn(16, 6, generator=g)
    a, s = cosine_alpha_sigma(t)
    x0_hat, _ = to_x0_eps(pred, x_t, a, s, prediction)
    snr = a**2 / s**2
    lhs = weight * ((pred - target) ** 2).sum(1)
    rhs = snr.clamp(max=5.0) * ((x0_hat - x0) ** 2).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-3)
    assert (snr > 5).any() and (snr < 5).any()
    assert torch.equal(Diffusion(prediction=prediction).training_pair(x0, eps, t)[2], torch.ones(16))
    assert min_snr_weight(torch.tensor([math.inf]), 5.0, prediction).isfinite().all()


def test_loss_is_the_weighted_mean_of_per_sample_mse():
    pred, target = torch.zeros(2, 3), torch.tensor([[1.0, 1, 1], [2, 2, 2]])
    # per-sample MSE (1, 4); weights (1, 0.5): (1 * 1 + 0.5 * 4) / 2 = 1.5
    assert Diffusion.loss(pred, target, torch.tensor([1.0, 0.5])).item() == pytest.approx(1.5)


@pytest.mark.parametrize("how", ["uniform", "logit_normal"])
def test_sample_t_is_float32_in_the_open_closed_unit_interval(how):
    g = torch.Generator().manual_seed(4)
    t = FlowMatching(t_sampling=how).sample_t(50000, generator=g)
    assert t.shape == (50000,) and t.dtype == torch.float32 and (t > 0).all() and (t <= 1).all()
    if how == "uniform":
        assert abs(t.mean().item() - 0.5) < 0.01
    else:  # logit(t) ~ N(0, 1)
        z = torch.logit(t.double())
        assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert (Diffusion().sample_t(1000, generator=g) >= Diffusion.t_min).all()


def test_the_pure_ode_samplers_take_their_textbook_steps():
    """On dx/dt = x from t = 0 to 1 in n steps of h = 1/n: Euler multiplies by (1 + h) per step,
    Heun by 1 + h + h^2/2 (its predictor-corrector on a linear ODE), Heun with a last Euler step by
    (1 + h + h^2/2)^(n-1) (1 + h)."""
    ts = S.time_grid(4, 0.0, 1.0)
    assert torch.allclose(ts, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    x = torch.ones(3, 2)
    def f(x, t):
        assert t.shape == (3,) and t.dtype == torch.float32
        return x
    assert torch.allclose(S.euler(f, x, ts), x * 1.25**4)
    assert torch.allclose(S.heun(f, x, ts), x * (1 + 0.25 + 0.25**2 / 2) ** 4)
    assert torch.allclose(S.heun(f, x, ts, last_euler=True), x * (1 + 0.25 + 0.25**2 / 2) ** 3 * 1.25)
    clock = ts**2  # integrating in another clock: Euler steps of clock differences 1/16, 3/16, 5/16, 7/16
    assert torch.allclose(S.euler(f, x, ts, clock), x * (17 / 16) * (19 / 16) * (21 / 16) * (23 / 16))


# -- every sampler on the closed form ------------------------------------------------------------------

# steps per sampler so that the discretisation error of the std is well under 2 % (measured: DDIM
# 20 steps is 7 % low, 200 steps 0.6 %; Euler on flow 50 steps 2.7 %, 200 steps 0.7 %)
CASES = [("ddpm", p, smp, eta, steps) for p in PREDICTIONS
         for smp, eta, steps in [("ddim", 0.0, 200), ("ddim", 1.0, 400), ("ddpm", 0.0, 400), ("euler", 0.0, 200),
                                 ("heun", 0.0, 40)]]
CASES += [("flow", None, "euler", 0.0, 200), ("flow", None, "heun", 0.0, 20), ("flow", None, "ddim", 0.0, 200)]


@pytest.mark.parametrize("name,prediction,sampler,eta,steps", CASES)
def test_every_sampler_turns_noise_into_the_data_distribution(name, prediction, sampler, eta, steps):
    proc = Diffusion(prediction=prediction) if name == "ddpm" else FlowMatching()
    out = proc.sample(optimal(proc), noise(), steps=steps, sampler=sampler, eta=eta,
                      generator=torch.Generator().manual_seed(5))
    assert out.dtype == torch.float32 and out.shape == (20000, 2)
    assert abs(out.mean().item() - MU) < 0.02 * MU
    assert abs(out.std().item() - SD) < 0.02 * SD


def test_ddpm_ancestral_is_ddim_with_eta_one():
    """Two formulas for the same posterior step (DDIM paper, eta = 1): equal on the same noise."""
    proc = Diffusion(prediction="v")
    runs = [proc.sample(optimal(proc), noise(500), steps=10, sampler=smp, eta=eta,
                        generator=torch.Generator().manual_seed(6)) for smp, eta in [("ddpm", 0.0), ("ddim", 1.0)]]
    assert torch.allclose(*runs, atol=1e-4)
    assert not torch.allclose(runs[0], proc.sample(optimal(proc), noise(500), steps=10), atol=1e-2)


def _error(proc, sampler, steps, z):
    return (proc.sample(optimal(proc), z, steps=steps, sampler=sampler) - exact_map(proc, z)).pow(2).mean().sqrt()


@pytest.mark.parametrize("proc,steps", [(FlowMatching(), (4, 8, 16)), (Diffusion(), (8, 16, 32))])
def test_heun_beats_euler_at_equal_steps_and_converges_faster(proc, steps):
    """RMS distance to the exact ODE map on the same noise. Heun is far closer at every step count
    (measured, flow: 0.005 vs 0.16 at 4 steps); Euler is first order (doubling the steps halves the
    error: ratio ~0.5), Heun second (ratio ~0.25-0.32 measured)."""
    z = noise(2000)
    euler = [_error(proc, "euler", n, z).item() for n in steps]
    heun = [_error(proc, "heun", n, z).item() for n in steps]
    assert all(h < 0.3 * e for h, e in zip(heun, euler)), (heun, euler)
    assert heun[2] / heun[1] < 0.4 < euler[2] / euler[1], (heun, euler)


# -- inversion ---------------------------------------------------------------------------------------------

# A first-order round trip (DDIM, Euler) errs by O(1/steps), and float32 rounding over thousands of
# steps floors its worst case near 2e-3 (DDIM 8000 steps: max 1.7e-3), so those are held to a mean
# error of 1e-3 (DDIM 2000 steps measured 6.5e-4 mean, 3.1e-3 max); Heun's O(1/steps^2) to a max of 1e-3.
@pytest.mark.parametrize("name,sampler,steps,worst", [("ddpm", "ddim", 2000, "mean"), ("flow", "euler", 2000, "mean"),
                                                       ("ddpm", "heun", 300, "max"), ("flow", "heun", 30, "max")])
def test_inverting_then_sampling_gives_the_input_back(name, sampler, steps, worst):
    proc = PROCESSES[name]()
    x0 = MU + SD * noise(256, seed=7)
    z = proc.invert(optimal(proc), x0, steps=steps, sampler=sampler)
    assert abs(z.mean().item()) < 0.15 and abs(z.std().item() - 1) < 0.1  # it is noise
    assert (z - noise(256, seed=7)).abs().max() < 0.1  # the exact inverse of the affine ODE map x0 = MU + SD * z
    err = (proc.sample(optimal(proc), z, steps=steps, sampler=sampler) - x0).abs()
    assert getattr(err, worst)().item() < 1e-3 and err.max().item() < 5e-3


# -- a learned 2-D toy -------------------------------------------------------------------------------------

CENTERS = 2.0 * torch.stack([torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], 1)


def eight_gaussians(n, g):
    return CENTERS[torch.randint(0, 8, (n,), generator=g)] + 0.1 * torch.randn(n, 2, generator=g)


class ToyNet(nn.Module):
    """An MLP on (x, sin/cos features of t)."""

    def __init__(self, width=128):
        super().__init__()
        self.register_buffer("freq", torch.arange(1, 9, dtype=torch.float32) * math.pi)
        self.net = nn.Sequential(nn.Linear(18, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))

    def forward(self, x, t):
        e = t[:, None] * self.freq
        return self.net(torch.cat([x, e.sin(), e.cos()], 1))


def energy_distance(x, y):
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


@pytest.mark.parametrize("proc,sampler,steps", [(FlowMatching(), "heun", 15), (Diffusion(prediction="v"), "ddim", 30),
                                                (Diffusion(prediction="x0", min_snr=5.0), "heun", 15)])
def test_a_small_net_learns_eight_gaussians(proc, sampler, steps):
    """400 Adam steps of batch 256 (measured ~3 s each): energy distance to the data ~0.02 against
    ~0.24 for N(0, I); every mode holds 10-15 % of the samples (12.5 % each in the data)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = ToyNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(400):
        x0, eps, t = eight_gaussians(256, g), torch.randn(256, 2, generator=g), proc.sample_t(256, g)
        x_t, target, weight = proc.training_pair(x0, eps, t)
        loss = proc.loss(net(x_t, t), target, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = proc.sample(net.eval(), torch.randn(2000, 2, generator=g), steps=steps, sampler=sampler)
    data = eight_gaussians(2000, g)
    assert energy_distance(out, data) < 0.25 * energy_distance(torch.randn(2000, 2, generator=g), data)
    share = torch.bincount(torch.cdist(out, CENTERS).argmin(1), minlength=8) / len(out)
    assert (share >= 0.05).all(), share


# -- precision and bad input ---------------------------------------------------------------------------------


def test_sampling_is_float32_under_autocast_and_with_a_half_precision_net():
    net = nn.Linear(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for proc in (FlowMatching(), Diffusion()):
            out = proc.sample(lambda x, t: net(x), noise(8), steps=3, sampler="heun")
            assert out.dtype == torch.float32
            x_t, target, weight = proc.training_pair(noise(8).bfloat16(), noise(8, 1).bfloat16(), torch.rand(8))
            assert x_t.dtype == target.dtype == weight.dtype == torch.float32
    out = Diffusion().sample(lambda x, t: net(x).bfloat16(), noise(8), steps=3, sampler="ddpm")
    assert out.dtype == torch.float32


def _raises(match, fn, *args, **kw):
    with pytest.raises(SandboxError, match=match):
        fn(*args, **kw)


def test_bad_input_is_one_clear_error_naming_what_is_accepted():
    net = optimal(FlowMatching())
    _raises(r"unknown sampler 'ddpm' for model flow; accepted: euler, heun, ddim", FlowMatching().sample, net, noise(4),
            sampler="ddpm")
    _raises(r"unknown sampler 'rk4' for model ddpm; accepted: ddim, ddpm, euler, heun", Diffusion().sample, net,
            noise(4), sampler="rk4")
    _raises(r"inversion sampler .*'ddpm'.*accepted: ddim, euler, heun", Diffusion().invert, net, noise(4), sampler="ddpm")
    _raises(r"unknown diffusion prediction 'score'; accepted: eps, x0, v", Diffusion, prediction="score")
    _raises(r"unknown t sampling 'beta'; accepted: uniform, logit_normal", FlowMatching, t_sampling="beta")
    _raises(r"unknown generative process 'gan'; accepted: ddpm, flow", PROCESSES.__getitem__, "gan")
    _raises(r"eta .* ddim sampler only", Diffusion().sample, net, noise(4), sampler="euler", eta=1.0)
    _raises(r"min_snr must be a number > 0", Diffusion, min_snr=0)
    _raises(r"steps must be a whole number >= 1, got 0", FlowMatching().sample, net, noise(4), steps=0)
    _raises(r"eps shaped like x0", FlowMatching().training_pair, noise(4), noise(3), torch.rand(4))
    assert set(SAMPLERS) == set(Diffusion.samplers) >= set(FlowMatching.samplers)
    assert (Diffusion().default_sampler, FlowMatching().default_sampler) == ("ddim", "euler")
    assert (Diffusion().name, FlowMatching().name) == ("ddpm", "flow")
