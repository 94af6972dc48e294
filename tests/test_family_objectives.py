"""Each family computes its own training loss (issue 27): ``model.loss(batch, step)``, the adversarial players'
``d_loss`` / ``g_loss``, checked on fixed tiny batches against closed forms or an independent computation; the
engine's shape (no class over 15 methods, at most 2 levels of trainers under the engine's base); the trainer
state written with the keys the state files of earlier versions hold."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sandbox.engine.state import TrainerState
from sandbox.engine.trainer import Trainer
from sandbox.models import MODELS
from sandbox.models.objective import Step
from sandbox.nn.ema import update_ema

TINY = dict(width=4, depth=2)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Recorder:
    """A ``Step.draw`` that draws as one process does and keeps what it drew."""

    def __init__(self, replace=None):
        self.drawn, self.replace = [], replace

    def __call__(self, fn, n):
        value = fn(n) if self.replace is None else self.replace(fn(n))
        self.drawn.append(value)
        return value


def images(n=4, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _bce(logit: float, label: float) -> float:
    sig = 1 / (1 + math.exp(-logit))
    return -(label * math.log(sig) + (1 - label) * math.log(1 - sig))


def test_flow_loss_is_the_velocity_error_of_a_known_net():
    """Identity net (prediction = x_t): loss = mean_b mean((x_t - (eps - x0))^2), x_t = (1 - t) x0 + t eps,
    from the eps and t the model drew."""
    torch.manual_seed(0)
    model = MODELS["flow"](size=16, norm="group", **TINY)
    x, draw = images(), Recorder()
    loss, parts = model.loss({"image": x}, Step(forward=lambda x_t, t: x_t, draw=draw))
    eps, t = draw.drawn
    x0, tt = 2 * x - 1, t.view(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    expected = ((x_t - (eps - x0)) ** 2).flatten(1).mean(1).mean()
    assert parts == {} and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert eps.shape == x.shape and t.shape == (4,) and bool(((t > 0) & (t <= 1)).all())


@pytest.mark.parametrize("prediction, target", [("eps", lambda x0, eps: eps), ("x0", lambda x0, eps: x0)])
def test_ddpm_loss_of_a_zero_net_is_the_mean_square_of_its_target(prediction, target):
    """A net that predicts 0: the loss is mean(target^2) whatever the schedule (weight 1 without min-SNR)."""
    torch.manual_seed(0)
    model = MODELS["ddpm"](size=16, norm="group", prediction=prediction, **TINY)
    x, draw = images(), Recorder()
    loss, _ = model.loss({"image": x}, Step(forward=lambda x_t, t: torch.zeros_like(x_t), draw=draw))
    eps, _t = draw.drawn
    assert loss.item() == pytest.approx(float(target(2 * x - 1, eps).square().mean()), rel=1e-6)


def test_denoising_loss_runs_the_forward_the_engine_gives():
    """The loss goes through ``step.forward`` (the engine's DDP wrapper), not around it."""
    model = MODELS["flow"](size=16, norm="group", **TINY)
    seen = []
    model.loss({"image": images()}, Step(forward=lambda x_t, t: seen.append(x_t.shape) or model(x_t, t)))
    assert seen == [(4, 3, 16, 16)]


def test_gan_players_losses_are_the_bce_of_known_logits():
    """A discriminator whose logit is the first pixel: real images at 2, fakes at -1; label smoothing 0.1."""
    gan = MODELS["dcgan"](size=16, latent_dim=3, **TINY)
    gan.discriminator = Lambda(lambda x: x.flatten(1)[:, :1])
    x, fake = torch.full((4, 3, 16, 16), 2.0), torch.full((4, 3, 16, 16), -1.0, requires_grad=True)
    d, parts = gan.d_loss(x, fake, smoothing=0.1)
    assert d.item() == pytest.approx(_bce(2.0, 0.9) + _bce(-1.0, 0.0), rel=1e-6)
    assert parts["d_real"].item() == pytest.approx(1 / (1 + math.exp(-2)), rel=1e-6)
    assert parts["d_fake"].item() == pytest.approx(1 / (1 + math.exp(1)), rel=1e-6)
    assert not d.requires_grad  # the fakes are detached for D's loss
    g, gparts = gan.g_loss(fake, x)
    assert g.item() == pytest.approx(_bce(-1.0, 1.0), rel=1e-6) and set(gparts) == {"loss/gan/g"}
    assert g.requires_grad  # the generator's loss reaches the fakes


def test_gan_with_parameters_adds_the_weighted_mse_and_inverts():
    gan = MODELS["dcgan"](size=16, latent_dim=3, cond_dim=2, invert=True, **TINY)
    gan.discriminator = Lambda(lambda x: x.flatten(1)[:, :1])
    x, fake = torch.zeros(2, 3, 16, 16), torch.full((2, 3, 16, 16), 0.5)
    g, parts = gan.g_loss(fake, x, param_mse=2.5)
    assert parts["loss/gan/param_mse"].item() == pytest.approx(0.25)
    assert g.item() == pytest.approx(_bce(0.5, 1.0) + 2.5 * 0.25, rel=1e-6)
    u = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0, 0.0]])
    gan.inverter = Lambda(lambda x: torch.zeros(len(x), 5))
    loss, parts = gan.invert_loss(fake, u)
    assert loss.item() == pytest.approx(14 / 10) and parts["loss/invert/params"].item() == pytest.approx(5 / 4)
    assert parts["loss/invert/noise"].item() == pytest.approx(9 / 6)


def test_aae_regularisation_losses_are_the_bce_of_known_codes():
    """Codes = the first 2 pixels of each image, the discriminator's logit = the first coordinate; prior
    samples from the draw the trainer passes."""
    aae = MODELS["aae"](size=16, latent_dim=2, **TINY)
    aae.encoder = Lambda(lambda x: x.flatten(1)[:, :2])
    aae.discriminator = Lambda(lambda z: z[:, :1])
    x = torch.full((3, 3, 16, 16), -0.5)
    draw = Recorder(replace=lambda z: torch.full_like(z, 1.5))
    d, parts = aae.d_loss(x, draw, smoothing=0.0)
    assert draw.drawn[0].shape == (3, 2)
    assert d.item() == pytest.approx(_bce(1.5, 1.0) + _bce(-0.5, 0.0), rel=1e-6)
    assert parts["d_code"].item() == pytest.approx(1 / (1 + math.exp(0.5)), rel=1e-6)
    g, _ = aae.g_loss(x)
    assert g.item() == pytest.approx(_bce(-0.5, 1.0), rel=1e-6)


def _mse(out, batch):
    loss = F.mse_loss(out["image"], batch["image"])
    return loss, {"image/mse": loss}


def test_ae_loss_is_its_criterion_on_its_reconstruction():
    torch.manual_seed(0)
    ae = MODELS["ae"](size=16, latent_dim=4, **TINY).eval()  # eval: no code statistics move
    x = images()
    loss, parts = ae.loss({"image": x}, Step(criterion=_mse))
    expected = F.mse_loss(ae.decode(ae.encode(x)), x)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and set(parts) == {"loss/image/mse"}


def test_vae_loss_adds_the_weighted_kl_per_value():
    """Zero reparameterisation noise (z = mu): recon MSE of decode(mu) + w * KL(N(mu, s^2) || N(0, I)) / (C*H*W)."""
    torch.manual_seed(0)
    vae = MODELS["vae"](size=16, latent_dim=4, **TINY)  # train mode: the reparameterised path, noise from the draw
    x, w = images(), 0.7
    loss, parts = vae.loss({"image": x}, Step(criterion=_mse, weight=w, draw=Recorder(replace=torch.zeros_like)))
    mu, logvar = vae.encode_stats(x)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
    expected = F.mse_loss(vae.decode(mu), x) + w * kl / (3 * 16 * 16)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["loss/vae/kl"].item() == pytest.approx(kl.item(), rel=1e-6) and float(parts["kl_weight"]) == pytest.approx(w)


def test_segmentation_loss_is_the_criterion_on_the_engines_forward():
    model = MODELS["unet"](targets={"mask": 1}, **TINY)
    x = images()
    batch = {"image": x, "mask": (x[:, :1] > 0.5).float()}
    calls = []

    def forward(images):
        calls.append(images)
        return model(images)

    def criterion(out, b):
        loss = F.binary_cross_entropy_with_logits(out["mask"], b["mask"])
        return loss, {"mask/bce": loss}

    loss, parts = model.loss(batch, Step(forward=forward, criterion=criterion))
    assert len(calls) == 1 and calls[0] is x and set(parts) == {"mask/bce"}
    assert loss.item() == pytest.approx(criterion(model(x), batch)[0].item(), rel=1e-6)


def test_ema_is_an_opt_in_utility():
    """Any module opts in (sandbox.nn.ema); update_ema does nothing for one that keeps none."""
    seg = MODELS["unet"](targets={"mask": 1}, **TINY)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    update_ema(seg)
    assert all(torch.equal(v, before[k]) for k, v in seg.state_dict().items())
    ae = MODELS["ae"](size=16, latent_dim=4, ema=0.9, **TINY)
    with torch.no_grad():
        for p in ae.decoder.parameters():
            p.add_(1.0)
    update_ema(ae)
    live, copy = next(ae.decoder.parameters()), next(ae.generator_ema.parameters())
    assert torch.allclose(copy, live - 0.1)  # first update: decay min(0.9, 1 / 10) = 0.1, 90 % of the +1 taken
    assert int(ae.ema_updates) == 1


def _trainers():
    from sandbox.trainers import TRAINERS

    return {TRAINERS[n] for n in TRAINERS.names()}


def test_the_engine_has_no_mixin_and_trainers_are_at_most_two_levels_under_it():
    assert Trainer.__bases__ == (object,)
    for cls in _trainers():
        depth = cls.__mro__.index(Trainer)
        assert 1 <= depth <= 2, f"{cls.__name__} is {depth} levels under Trainer"
        assert all(len(c.__bases__) == 1 for c in cls.__mro__[:depth]), f"{cls.__name__} mixes in a class"


def test_no_engine_or_trainer_class_has_more_than_15_methods():
    from sandbox.engine import checkpoint, runtime, setup, state, stops, sums, trainer
    from sandbox.trainers import adversarial, denoising, reconstruction, supervised

    modules = (checkpoint, runtime, setup, state, stops, sums, trainer, adversarial, denoising, reconstruction,
               supervised)
    for module in modules:
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                own = [k for k, v in vars(cls).items() if inspect.isfunction(v) or isinstance(v, property)]
                assert len(own) <= 15, f"{name} has {len(own)} methods: {own}"


def test_the_state_file_keeps_the_format_of_earlier_versions():
    """A state file as today's main writes it (fields set lazily are absent until set; a later version's
    field is carried over) reads back to the same object, without the checkpoint's own keys."""
    written = {"epoch": 2, "step": 4, "batch": 0, "best": 0.25, "best_epoch": 1, "best_loss": 0.5, "wandb_id": None,
               "elapsed": 3.5, "skipped": 0, "sums": {}, "count": 0, "epoch_sums": {}, "epoch_count": 0,
               "steps_per_epoch": 2, "loss_min": 0.1, "loss_min_step": 3, "early_stop_wait": 1,
               "from_a_later_version": [1, 2]}
    state = TrainerState.from_dict({**written, "files": ["model.safetensors"], "weights_only": True})
    assert state.to_dict() == written and list(state.to_dict()) == list(written)
    fresh = TrainerState(steps_per_epoch=3).to_dict()
    assert list(fresh) == list(written)[:14] and fresh["steps_per_epoch"] == 3
