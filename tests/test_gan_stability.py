"""The DCGAN's stabilisers (issue 28 item 2): hinge loss, spectral normalisation of D, the R1 penalty on real
images (lazy every ``r1_every`` steps), each opt-in; the defaults keep the non-saturating BCE GAN as it was."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sandbox import build_trainer, load_config
from sandbox.errors import ConfigError, SandboxError
from sandbox.models import MODELS
from sandbox.models.objective import r1_penalty
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = dict(size=32, width=4, depth=2, latent_dim=6, d_norm="none")


def tiny_gan(tmp_path, extra=()):
    return load_config(None, [f"out_dir={tmp_path}", "name=gan", "model.name=dcgan", "data.name=attractors",
                              "data.size=32", "data.num_train=8", "data.num_val=4", "data.batch_size=4",
                              "model.width=4", "model.depth=2", "model.latent_dim=4", "model.ema=0.9",
                              "train.epochs=1", "train.log_every=1", "train.num_images=2", "track.wandb=disabled",
                              "train.mixed_precision=no", "train.fid_samples=8", "train.probe_samples=0", *extra])


def with_discriminator(gan, discriminator: nn.Module):
    gan.discriminator = discriminator
    return gan


# ----------------------------------------------------------------------------- the losses by hand

def test_hinge_losses_equal_hand_values_from_known_logits():
    """Identity D, so the logits are the inputs: D(x) = (2, 0.5, -1), D(G(z)) = (-2, 0, 3).
    D: mean relu(1 - D(x)) = (0 + 0.5 + 2) / 3, mean relu(1 + D(G(z))) = (0 + 1 + 4) / 3: 7.5 / 3 = 2.5.
    G: -mean D(G(z)) = -1 / 3."""
    gan = with_discriminator(MODELS["dcgan"](gan_loss="hinge", **TINY), nn.Identity())
    real, fake = torch.tensor([[2.0], [0.5], [-1.0]]), torch.tensor([[-2.0], [0.0], [3.0]])
    d, parts = gan.d_loss(real, fake)
    g, g_parts = gan.g_loss(fake, real)
    assert d.item() == pytest.approx(2.5, abs=1e-6) and parts["loss/gan/d"].item() == pytest.approx(2.5, abs=1e-6)
    assert g.item() == pytest.approx(-1 / 3, abs=1e-6) and g_parts["loss/gan/g"].item() == pytest.approx(-1 / 3)
    assert parts["d_real"].item() == pytest.approx(torch.sigmoid(real).mean().item())  # still what D says
    with pytest.raises(SandboxError, match="hinge loss has no labels"):
        gan.d_loss(real, fake, smoothing=0.1)


def test_default_options_give_the_non_saturating_bce_losses_by_hand():
    """The default (gan_loss null): D: -(0.9 log s(r) + 0.1 log s(-r)) - log s(-f) averaged (one-sided smoothing
    0.1), G: -log s(f), with s the sigmoid; no R1 part; the same numbers as gan_loss: bce, r1: 0 set explicitly."""
    real, fake = torch.tensor([[2.0], [0.5], [-1.0]]), torch.tensor([[-2.0], [0.0], [3.0]])
    d_hand = -(0.9 * F.logsigmoid(real) + 0.1 * F.logsigmoid(-real)).mean() - F.logsigmoid(-fake).mean()
    g_hand = -F.logsigmoid(fake).mean()
    for options in ({}, {"gan_loss": "bce", "spectral_norm": False, "r1": 0.0}):
        gan = with_discriminator(MODELS["dcgan"](**TINY, **options), nn.Identity())
        d, parts = gan.d_loss(real, fake, 0.1, step=0)
        g, _ = gan.g_loss(fake, real)
        assert d.item() == pytest.approx(d_hand.item(), abs=1e-6) and g.item() == pytest.approx(g_hand.item(), abs=1e-6)
        assert "loss/gan/r1" not in parts


def test_default_training_steps_are_those_of_the_options_set_off(tmp_path):
    """Three GAN steps of a default config and of one with every stabiliser named and off: the same losses,
    probabilities and EMA weights to the bit, and the same parameter names (no spectral-norm parametrization):
    the defaults train as before. (Against main at fc4f886 the same script's numbers were identical too.)"""
    def steps(path, extra):
        tr = build_trainer(tiny_gan(path, ["train.label_smoothing=0.1", *extra]))
        out = []
        for i, batch in enumerate(tr.train_loader):
            tr.state.step = i
            out.append({k: v.item() for k, v in tr.train_step(tr.fit_batch(batch)).items()})
        return out, tr.unwrapped

    default, m0 = steps(tmp_path / "a", [])
    off, m1 = steps(tmp_path / "b", ["model.gan_loss=bce", "model.spectral_norm=false", "model.r1=0"])
    assert default == off and all("loss/gan/r1" not in s for s in default)
    assert list(m0.state_dict()) == list(m1.state_dict()) and not any("parametrizations" in k for k in m0.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(m0.generator_ema.parameters(), m1.generator_ema.parameters()))


# ----------------------------------------------------------------------------- R1

class Linear(nn.Module):
    """D(x) = w . x + b: its input gradient is w for every image, so R1 = ||w||^2."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, n))
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(1, keepdim=True) + self.b


def test_r1_of_a_linear_discriminator_is_gamma_half_w_squared_and_its_gradient_is_gamma_w():
    torch.manual_seed(0)
    x, fake = torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4)
    gamma, d = 0.7, Linear(48)
    w2 = d.w.detach().square().sum().item()  # sum of squares of linspace(-1, 1, 48)
    assert w2 == pytest.approx(sum((-1 + 2 * i / 47) ** 2 for i in range(48)))
    gan = with_discriminator(MODELS["dcgan"](r1=gamma, **TINY), d)
    plain = with_discriminator(MODELS["dcgan"](**TINY), d)
    loss, parts = gan.d_loss(x, fake)
    adversarial, _ = plain.d_loss(x, fake)
    assert parts["loss/gan/r1"].item() == pytest.approx(w2, rel=1e-6)
    assert (loss - adversarial).item() == pytest.approx(gamma / 2 * w2, rel=1e-5)
    # create_graph: the penalty's gradient reaches D's weights, d/dw (gamma / 2 ||w||^2) = gamma w
    (gamma / 2 * r1_penalty(d, x)).backward()
    assert torch.allclose(d.w.grad, gamma * d.w.detach(), atol=1e-6)
    assert d.b.grad is None  # the penalty does not depend on the bias


def test_lazy_r1_every_k_steps_weighted_k_and_exact_under_autocast():
    """r1_every 4: no penalty on steps 1-3, on step 4 the term gamma / 2 * 4 * ||w||^2; under bfloat16 autocast
    the penalty is still the float32 value (its own forward with autocast off)."""
    x, fake, d = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), Linear(48)
    w2 = d.w.detach().square().sum().item()
    gan = with_discriminator(MODELS["dcgan"](r1=0.5, r1_every=4, **TINY), d)
    adversarial = gan.d_loss(x, fake, step=1)
    assert "loss/gan/r1" not in adversarial[1]
    loss, parts = gan.d_loss(x, fake, step=4)
    assert (loss - adversarial[0]).item() == pytest.approx(0.5 / 2 * 4 * w2, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, parts16 = gan.d_loss(x, fake, step=8)
    assert parts16["loss/gan/r1"].dtype == torch.float32 and parts16["loss/gan/r1"].item() == pytest.approx(w2, rel=1e-6)


# ----------------------------------------------------------------------------- spectral norm

def _sigma(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2).item()


def test_spectral_norm_makes_each_discriminator_weight_of_largest_singular_value_one():
    """Every conv and linear weight of D re-drawn N(0, 1) (largest singular values ~5-40), then a few training
    forwards (one power iteration each): the weights D uses have largest singular value 1 (a conv's read as
    (out, in * k * k)); the generator is untouched, and without the option D's weights keep theirs."""
    torch.manual_seed(0)
    gan = MODELS["dcgan"](spectral_norm=True, **TINY).train()
    layers = [m for m in gan.discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) >= 5 and all(hasattr(m, "parametrizations") for m in layers)
    with torch.no_grad():
        for m in layers:
            m.parametrizations.weight.original.normal_()
    for _ in range(10):
        gan.discriminator(torch.rand(4, 3, 32, 32))
    raw = [_sigma(m.parametrizations.weight.original) for m in layers]
    assert min(raw) > 4
    assert [_sigma(m.weight) for m in layers] == pytest.approx([1.0] * len(layers), abs=0.02)
    assert not any(hasattr(m, "parametrizations") for m in gan.generator.modules())
    plain = MODELS["dcgan"](**TINY)
    with torch.no_grad():
        for m in plain.discriminator.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_()
    assert min(_sigma(m.weight) for m in plain.discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Linear))) > 4


# ----------------------------------------------------------------------------- the trainer and the recipe

def test_stabilised_gan_trains_logs_r1_and_samples_from_the_ema(tmp_path):
    """hinge + spectral norm + lazy R1 (every 2nd step) for one epoch: finite losses, train/loss/gan/r1 logged;
    the sample grid and metrics decode with the EMA copy of G (eval mode), not the live G."""
    from sandbox.trainers.sampling import samples
    from sandbox.tracking.metrics_log import read_metrics

    cfg = tiny_gan(tmp_path, ["model.gan_loss=hinge", "model.spectral_norm=true", "model.r1=0.1",
                              "model.r1_every=2", "train.d_lr=4e-4", "train.lr=1e-4", "train.scheduler=none",
                              "train.monitor=val/kid_own", "train.monitor_mode=min"])
    tr = build_trainer(cfg)
    tr.fit()
    rows = read_metrics(tmp_path / "gan" / "metrics.jsonl")
    train = [r for r in rows if "train/loss/gan/r1" in r]
    assert train and all(math.isfinite(r["train/loss/gan/r1"]) and r["train/loss/gan/r1"] > 0 for r in train)
    assert [g["lr"] for opt, _ in tr.optimizers for g in opt.param_groups][:2] == pytest.approx([1e-4, 4e-4])
    m = tr.unwrapped
    with torch.no_grad():  # the live G moved away from its EMA (two short steps leave them nearly equal)
        for p in m.generator.parameters():
            p.add_(0.1 * torch.randn_like(p))
    drawn = samples(tr, 3)  # as the grid and val/* draw them: eval mode, fixed noise of the run's seed
    m.eval()
    z = m.prior(3, torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        ema, live = torch.sigmoid(m.generator_ema(z)), torch.sigmoid(m.generator(z))
    assert torch.allclose(drawn, ema, atol=1e-6) and not torch.allclose(ema, live, atol=1e-2)


@pytest.mark.parametrize("override,message", [
    ("model.gan_loss=wgan", "model.gan_loss: got 'wgan', expected one of 'bce', 'hinge'"),
    ("model.spectral_norm=maybe", "model.spectral_norm: got 'maybe', expected bool or null"),
    ("model.r1=-1", "model.r1: got -1.0, expected a value in [0, 1000000]"),
    ("model.r1_every=0", "model.r1_every: got 0, expected an integer in [1, 10000]"),
    ("model.r1_every=4", "model.r1_every: got 4, but model.r1 (the R1 penalty's gamma) is None"),
    ("train.label_smoothing=0.1", "train.label_smoothing: got 0.1, but model.gan_loss: hinge has no labels"),
])
def test_bad_stabiliser_values_are_one_line(tmp_path, override, message):
    extra = ["model.gan_loss=hinge"] if override.startswith("train.") else []
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"out_dir={tmp_path}", "model.name=dcgan", "data.name=attractors", "data.size=32",
                           *extra, override])
    assert "\n" not in str(err.value) and message in str(err.value)


def test_the_stable_recipe_builds_sn_hinge_r1_ttur_and_ema():
    cfg = load_config(ROOT / "configs/dcgan_attractors_stable.yaml")
    m, t = cfg.model, cfg.train
    assert (m.gan_loss, m.spectral_norm, m.d_norm) == ("hinge", True, "none") and m.r1 > 0 and m.ema
    assert t.d_lr > t.lr and t.label_smoothing == 0 and cfg.data.size == 32
