"""ddpm and flow on the shared core: time conditioning, the models, their trainer, EMA warm-up.

The processes' own math (schedules, samplers, inversion) is tested with sandbox/diffusion; here: the
network is today's core when not time-conditioned, its time layers start as the identity, a tiny
model learns, EMA follows its closed-form recurrence and survives a stop and resume bit for bit,
sampling gives images, and configs refuse what these models cannot take."""
import hashlib

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.analysis.interpolation import interpolate
from sandbox.errors import ConfigError, SandboxError
from sandbox.models import MODELS
from sandbox.models.denoising import TimeUNet
from sandbox.nn.core import Decoder, Encoder
from sandbox.nn.ema import ema_decay_now, update_ema
from sandbox.nn.timestep import ScaleShift, modulation

NAMES = ["ddpm", "flow"]
TINY = dict(size=16, width=8, depth=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def images(n: int = 8, size: int = 16) -> torch.Tensor:
    """``n`` fixed images in [0, 1]: smooth colour blobs, one per seed (learnable structure, not noise)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres, colours = torch.rand(n, 2, generator=g) * 1.2 - 0.6, torch.rand(n, 3, 1, 1, generator=g)
    blob = torch.exp(-((xx - centres[:, :1, None]) ** 2 + (yy - centres[:, 1:, None]) ** 2) / 0.15)
    return (colours * blob[:, None]).clamp(0, 1)


# ----------------------------------------------------------------------------- the core, time-conditioned or not

# recorded on main before time conditioning existed (seed 0, width 4, depth 2, eval mode, input seed 1):
# (number of keys, sha256 of "key:shape;..." [:16], sum and absolute sum of the mask logits)
TODAY = {"default": (66, "24224aaab60cea0c", 185.69534301757812, 185.69534301757812),
         "group-residual-add": (39, "f962a44f965082e3", 218.4170684814453, 263.54766845703125)}
TODAY_OPTS = {"default": {}, "group-residual-add": dict(norm="group", block="residual", skip="add")}


@pytest.mark.parametrize("which", TODAY)
def test_a_unet_without_time_is_todays_unet(which):
    """Same keys and shapes, same output as before the core took a time embedding: segmentation models and
    their checkpoints are untouched."""
    torch.manual_seed(0)
    m = MODELS["unet"](targets={"mask": 1}, width=4, depth=2, **TODAY_OPTS[which]).eval()
    sd = m.state_dict()
    digest = hashlib.sha256(";".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items()).encode()).hexdigest()[:16]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = m(x)["mask"]
    n, key_hash, total, abs_total = TODAY[which]
    assert (len(sd), digest) == (n, key_hash)
    assert not any("film" in k or "time" in k for k in sd)
    assert float(y.sum()) == pytest.approx(total, rel=1e-5) and float(y.abs().sum()) == pytest.approx(abs_total, rel=1e-5)


def test_time_layers_are_the_identity_at_init():
    """A fresh TimeUNet computes what the same UNet without time conditioning computes, for every t; once
    its scale-shift weights move, t matters (so the comparison can fail)."""
    torch.manual_seed(0)
    net = TimeUNet(3, [8, 16, 32], norm="group").eval()
    enc = Encoder(3, [8, 16, 32], norm="group")
    dec = Decoder(enc.out_channels, [8, 16, 32], "concat", "transpose", norm="group")
    plain = torch.nn.ModuleDict({"encoder": enc, "decoder": dec, "out": torch.nn.Conv2d(8, 3, 1)}).eval()
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(".film." in k or k.startswith("time.") for k in unexpected)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = plain["out"](plain["decoder"](plain["encoder"](x)))
        for t in (torch.tensor([0.01, 0.01]), torch.tensor([0.5, 0.99]), 1.0):
            assert torch.equal(net(x, t), ref)
        film = net.encoder.stages[0].body[0].film.proj
        film.weight.normal_(0, 0.1)
        assert not torch.allclose(net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.9, 0.9])))


# recorded on main before the scale-shifts were batched (TimeUNet(3, [8, 16, 32]) state dict): (keys, sha256
# of "key:shape;..." [:16]); the same keys and shapes mean checkpoints of ddpm/flow runs load as they are
TIME_UNET_KEYS = (60, "8c63b06fdfe86295")


class CountLinear(torch.overrides.TorchFunctionMode):
    """Counts ``F.linear`` calls (nn.Linear's and any direct one) inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.nn.functional.linear
        return func(*args, **(kwargs or {}))


def test_every_blocks_scale_shift_comes_from_one_matmul():
    """One forward of a depth-3 TimeUNet runs 3 Linears whatever its depth: the time MLP's two and one for all
    14 blocks' scale-shifts (2 + 14 when each block ran its own). Each block still gets exactly what its own
    Linear gives: (1 + s, b) = (1, 0) + Linear(SiLU(emb)).chunk(2), as (B, C, 1, 1), in the activations' dtype."""
    torch.manual_seed(0)
    net = TimeUNet(3, [8, 16, 32, 64]).eval()
    films = [m for m in net.modules() if isinstance(m, ScaleShift)]
    assert len(films) == 14  # 2 blocks in each of 4 encoder and 3 decoder stages
    sd = TimeUNet(3, [8, 16, 32]).state_dict()
    digest = hashlib.sha256(";".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items()).encode()).hexdigest()[:16]
    assert (len(sd), digest) == TIME_UNET_KEYS
    with torch.no_grad():
        for film in films:
            film.proj.weight.normal_(0, 0.1)
            film.proj.bias.normal_(0, 0.1)
        emb = torch.randn(5, net.time.mlp[2].out_features)
        mod = modulation(net, emb)
        for film in films:
            s, b = torch.nn.functional.linear(torch.nn.functional.silu(emb), film.proj.weight, film.proj.bias).chunk(2, 1)
            scale, shift = mod.of(film, torch.float32)
            assert scale.shape == shift.shape == (5, film.proj.out_features // 2, 1, 1)
            torch.testing.assert_close(scale[:, :, 0, 0], 1 + s, rtol=0, atol=1e-6)
            torch.testing.assert_close(shift[:, :, 0, 0], b, rtol=0, atol=1e-6)
            assert mod.of(film, torch.bfloat16)[0].dtype == torch.bfloat16
        with CountLinear() as count:
            net(torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.7]))
    assert count.calls == 3


# ----------------------------------------------------------------------------- the models

@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_8_fixed_images(name):
    """30 Adam steps on 8 fixed 16 px images: the process's loss on a fixed (t, eps) set falls by a third,
    and every output stays finite."""
    torch.manual_seed(0)
    model = MODELS[name](**TINY, ema=None)
    proc, x0 = model.process, 2 * images() - 1
    g = torch.Generator().manual_seed(1)
    fixed_eps, fixed_t = torch.randn(x0.shape, generator=g), proc.sample_t(len(x0), generator=g)

    def held_out() -> float:
        with torch.no_grad():
            x_t, target, w = proc.training_pair(x0, fixed_eps, fixed_t)
            return float(proc.loss(model(x_t, fixed_t), target, w))

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = held_out()
    for _ in range(30):
        eps, t = torch.randn_like(x0), proc.sample_t(len(x0))
        x_t, target, w = proc.training_pair(x0, eps, t)
        pred = model(x_t, t)
        assert torch.isfinite(pred).all()
        loss = proc.loss(pred, target, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    assert after < 0.67 * before, (before, after)


@pytest.mark.parametrize("name", NAMES)
def test_sampling_gives_images_and_inversion_gives_noise_shaped_codes(name):
    torch.manual_seed(0)
    model = MODELS[name](**TINY, sample_steps=3).eval()
    s = model.sample(3, torch.Generator().manual_seed(0))
    assert s.shape == (3, 3, 16, 16) and torch.isfinite(s).all() and 0 <= s.min() and s.max() <= 1
    again = model.sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)  # fixed noise, fixed samples (what the per-epoch grid relies on)
    z = model.encode(images(2))
    assert z.shape == (2, 3, 16, 16) and torch.isfinite(z).all()
    assert model.decode(z).shape == (2, 3, 16, 16)
    with pytest.raises(SandboxError, match="latent noise of shape"):
        model.decode(torch.randn(2, 6))


def test_interpolation_between_noises_is_slerp_only():
    torch.manual_seed(0)
    model = MODELS["flow"](**TINY, sample_steps=2).eval()
    frames, labels, images = interpolate(model, None, None, 2, steps=3, mode="slerp")
    assert frames.shape == (3, 3, 16, 16) and images is None  # random endpoints: no real images
    with pytest.raises(SandboxError, match="--mode lerp.*use --mode slerp"):
        interpolate(model, None, None, 2, steps=3, mode="lerp")
    model.set_sample_steps(4)
    assert model.sample_steps == 4
    with pytest.raises(SandboxError, match="--steps: VAE samples in one pass"):
        MODELS["vae"](size=16, width=4, depth=2, latent_dim=4).set_sample_steps(4)


# ----------------------------------------------------------------------------- EMA

@pytest.mark.parametrize("name", NAMES + ["vae"])
def test_ema_follows_the_warm_up_recurrence(name):
    """decay_n = min(d, (1 + n) / (10 + n)): the first two updates use 1/10 and 2/11, so from the initial
    weights e0 (the EMA copy starts equal to them) and live weights p1, p2 after each step:
    e2 = 2/11 * (1/10 * e0 + 9/10 * p1) + 9/11 * p2. The same warm-up for the older models' ``model.ema``."""
    torch.manual_seed(0)
    opts = dict(latent_dim=4, size=16, width=4, depth=2, ema=0.999) if name == "vae" else dict(TINY, ema=0.999)
    model = MODELS[name](**opts)
    live, ema = getattr(model, model.generator_name), model.generator_ema
    e0 = [p.detach().clone() for p in ema.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(e0, live.parameters()))
    seen = []
    for _ in range(2):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
        seen.append([p.detach().clone() for p in live.parameters()])
        update_ema(model)
    assert int(model.ema_updates) == 2 and "ema_updates" in model.state_dict()
    for e, a, p1, p2 in zip(ema.parameters(), e0, *seen):
        expected = 2 / 11 * (0.1 * a + 0.9 * p1) + 9 / 11 * p2
        assert torch.allclose(e, expected, atol=1e-6)
        assert not torch.allclose(e, p2)  # the EMA is not the live net
    assert ema_decay_now(model.ema_decay, int(model.ema_updates)) == pytest.approx(3 / 12)


def test_a_checkpoint_of_an_earlier_version_loads_as_warmed_up():
    """An EMA state dict without ``ema_updates`` (saved before the warm-up existed) loads, counted as
    warmed up, so its EMA keeps the full decay it always had."""
    model = MODELS["vae"](latent_dim=4, size=16, width=4, depth=2, ema=0.99)
    old = {k: v for k, v in model.state_dict().items() if k != "ema_updates"}
    fresh = MODELS["vae"](latent_dim=4, size=16, width=4, depth=2, ema=0.99)
    fresh.load_state_dict(old)
    assert ema_decay_now(fresh.ema_decay, int(fresh.ema_updates)) == 0.99


# ----------------------------------------------------------------------------- the trainer

def tiny(tmp_path, name: str, run: str, extra=()):
    return load_config(None, [f"out_dir={tmp_path}", f"name={run}", f"model.name={name}", "data.name=attractors",
                              "data.size=16", "data.num_train=8", "data.num_val=4", "data.batch_size=4",
                              "model.width=8", "model.depth=2", "model.norm=group", "model.sample_steps=2",
                              "train.epochs=2", "train.log_every=1", "train.num_images=2", "track.wandb=disabled",
                              "train.mixed_precision=no", "train.monitor=val/loss", "train.monitor_mode=min",
                              "train.fid_samples=8", *extra])


@pytest.mark.slow  # 3 tiny runs with checkpoints: 40-70 s on 2 shared cores
@pytest.mark.parametrize("name", NAMES)
def test_a_stopped_and_resumed_run_keeps_its_ema_bit_for_bit(tmp_path, name, monkeypatch, capsys):
    """2 epochs straight vs 1 epoch, stop, resume: the same EMA weights, update count and validation
    metrics (val/loss, its t-buckets, fid_own of EMA samples)."""
    one = ["train.threads=1"]  # a fixed thread count: the free-core default could change the float sums' order
    straight = build_trainer(tiny(tmp_path, name, "straight", one))
    straight.fit()
    first = build_trainer(tiny(tmp_path, name, "stopped", one))
    first.fit(until_epoch=1)
    resumed = build_trainer(tiny(tmp_path, name, "stopped", [*one, f"train.resume={tmp_path / 'stopped'}"]))
    assert int(resumed.unwrapped.ema_updates) == 2  # 8 images / batch 4: two steps in epoch 1
    resumed.fit()
    a, b = straight.unwrapped, resumed.unwrapped
    assert int(a.ema_updates) == int(b.ema_updates) == 4
    for (k, v), (_, w) in zip(a.generator_ema.state_dict().items(), b.generator_ema.state_dict().items()):
        assert torch.equal(v, w), k
    assert not all(torch.equal(v, w) for v, w in zip(a.generator_ema.parameters(), a.net.parameters()))
    from sandbox.tracking.metrics_log import read_metrics

    def vals(run):
        return [{k: v for k, v in r.items() if k.startswith("val/")} for r in read_metrics(tmp_path / run /
                                                                                          "metrics.jsonl")
                if r["split"] == "val"]
    assert vals("straight") == vals("stopped") and "val/loss_t0" in str(vals("straight"))
    assert (tmp_path / "stopped" / "images" / "samples_epoch002.png").is_file()
    # interpolate.py on the run: validation images inverted to noise, slerp between them, 2 sampling steps
    from tests.test_generative import interpolate_cli

    code, out, err = interpolate_cli(monkeypatch, capsys, "--run", str(tmp_path / "straight"), "--from", "0", "1",
                                     "--split", "val", "--steps", "3", "--sample-steps", "2")
    assert code == 0 and "3 frames (slerp)" in out, err
    code, out, err = interpolate_cli(monkeypatch, capsys, "--run", str(tmp_path / "straight"), "--random", "2",
                                     "--mode", "lerp")
    assert code == 2 and "use --mode slerp" in err


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("overrides, match", [
    (["model.name=ddpm", "model.norm=batch"], "model.norm: ddpm takes group or none"),
    (["model.name=flow"], "model.norm: flow takes group or none"),  # the schema's default norm is batch
    (["model.name=unet", "model.prediction=v"], "model.prediction: unknown option for unet"),
    (["model.name=ae", "model.sampler=euler", "loss={image: {mse: 1.0}}"], "model.sampler: unknown option for ae"),
    (["model.name=flow", "model.norm=group", "model.sampler=ddpm"], "model.sampler: flow samples with"),
    (["model.name=flow", "model.norm=group", "model.eta=0.5"], "model.eta: only ddpm's ddim sampler"),
    (["model.name=flow", "model.norm=group", "model.prediction=eps"], "model.prediction: unknown option for flow"),
    (["model.name=ddpm", "model.norm=group", "model.t_sampling=uniform"], "model.t_sampling: unknown option"),
    (["model.name=ddpm", "model.norm=group", "model.sampler=ddpm", "model.eta=0.5"], "model.eta: only ddpm's ddim"),
    (["model.name=ddpm", "model.norm=group", "model.sample_steps=0"], r"model.sample_steps: got 0"),
    (["model.name=ddpm", "model.norm=group", "model.min_snr=-1"], r"model.min_snr: got -1"),
    (["model.name=flow", "model.norm=group", "model.latent_dim=8"], "model.latent_dim: flow has no latent code"),
])
def test_config_errors_name_the_key(overrides, match):
    base = ["data.name=attractors", "data.size=32", "model.depth=2", "train.monitor=val/loss"]
    with pytest.raises(ConfigError, match=match):
        load_config(None, base + overrides)


@pytest.mark.parametrize("sampler, warns", [("ddim", True), ("heun", True), ("ddpm", False)])
def test_eps_prediction_with_a_deterministic_sampler_warns(caplog, sampler, warns):
    """eps-prediction sampled deterministically amplifies the net's error ~1/alpha(1) ~ 300-fold near t = 1
    (measured on the toy of test_diffusion.py); the config says so, and ancestral ddpm sampling does not warn."""
    base = ["data.name=attractors", "data.size=32", "model.depth=2", "train.monitor=val/loss", "model.name=ddpm",
            "model.norm=group", "model.prediction=eps", f"model.sampler={sampler}"]
    with caplog.at_level("WARNING", logger="sandbox"):
        load_config(None, base)
    assert ("badly conditioned" in caplog.text) is warns, caplog.text


def test_the_latent_probe_reads_inverted_noise_as_flat_codes():
    """encode_dataset flattens the image-shaped codes of ddpm/flow to (N, C*S*S) for the ridge and kernel probes."""
    from sandbox.metrics.probe import encode_dataset

    torch.manual_seed(0)
    model = MODELS["flow"](**TINY, sample_steps=2)
    data = [{"image": img, "params": torch.rand(4)} for img in images(5)]
    codes, params = encode_dataset(model, data, list(range(5)), batch=2)
    assert codes.shape == (5, 3 * 16 * 16) and params.shape == (5, 4) and model.training
