"""Generative models, their trainers, the attractors dataset, fid_own, the latent probe and interpolation."""
import math
from pathlib import Path
import sys

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.config.loading import save_config
from sandbox.data import DATASETS
from sandbox.data.attractors import CHECK_GRID, MIN_COVERAGE, PARAM_HIGH, PARAM_LOW, Attractors, density
from sandbox.errors import ConfigError, SandboxError
from sandbox.analysis.interpolation import lerp, path, slerp
from sandbox.models import MODELS
from sandbox.models.autoencoders import VAE
from sandbox.nn.ema import update_ema
from sandbox.metrics.generative import frechet_distance
from sandbox.metrics.probe import kernel_probe, latent_probe, ridge_probe
from sandbox.tracking.metrics_log import read_metrics
from tests.conftest import ROOT

# models with a latent code (ddpm and flow, whose latent is image-shaped noise: tests/test_denoising.py)
GENERATIVE = [n for n in MODELS.names() if MODELS[n].task == "generative" and MODELS[n].trainer != "denoising"]
TINY = dict(width=4, depth=2, latent_dim=6)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_run(tmp_path, model: str, extra=()):
    return load_config(None, [f"out_dir={tmp_path}", f"name={model}", f"model.name={model}", "data.name=attractors",
                              "data.size=32", "data.num_train=8", "data.num_val=4", "data.batch_size=4",
                              "model.width=4", "model.depth=2", "model.latent_dim=4", "train.epochs=1",
                              "train.log_every=1", "train.num_images=2", "track.wandb=disabled",
                              "train.mixed_precision=no", "loss={image: {mse: 1.0}}", "train.monitor=val/loss",
                              "train.monitor_mode=min", "train.fid_samples=8", "train.probe_samples=8", *extra])


def interpolate_cli(monkeypatch, capsys, *args):
    """``sandbox/interpolate.py ARGS --no-wandb`` in this process: ``(exit code, stdout, stderr)``."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["interpolate.py", *args, "--no-wandb"])
    try:  # run as the command runs (commands are not imported)
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "sandbox" / "interpolate.py"), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- models

def test_generative_panel_is_redrawn_under_the_training_plots_throttle(tmp_path, monkeypatch):
    """plots/generative.png redraws the whole history: it follows the training curves' throttle (once at the
    last epoch here, with the interval huge), not every epoch."""
    import sandbox.engine.trainer as loop
    import sandbox.trainers.sampling as sampling

    drawn = []  # the last epoch in the history each redraw gets
    monkeypatch.setattr(loop, "PLOT_EVERY_S", 1e9)
    monkeypatch.setattr(sampling, "plot_generative", lambda records, out: drawn.append(
        max(r["epoch"] for r in records if r["split"] == "val")))
    build_trainer(tiny_run(tmp_path, "ae", ["train.epochs=3"])).fit()
    assert drawn == [1, 3]  # the first epoch (nothing drawn yet), then only the last


def test_every_generative_model_is_registered_with_its_trainer():
    from sandbox.trainers import TRAINERS

    # a family added in its own file joins GENERATIVE (and every test parametrized over it) by registering
    assert {n: MODELS[n].trainer for n in ("ae", "vae", "dcgan", "aae")} == {
        "ae": "autoencoder", "vae": "vae", "dcgan": "gan", "aae": "aae"}
    assert {"ae", "vae", "dcgan", "aae"} <= set(GENERATIVE) and {MODELS[n].trainer for n in GENERATIVE} <= set(TRAINERS.names())
    assert {MODELS[n].trainer for n in ("ddpm", "flow")} == {"denoising"} <= set(TRAINERS.names())


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", GENERATIVE)
def test_shapes_and_gradients(name, size):
    torch.manual_seed(0)
    # model_kwargs passes every ModelConfig key; segmentation-only ones at their unused values are accepted
    model = MODELS[name](targets={"image": 1}, size=size, skip=None, encoder="core", **TINY)
    x = torch.rand(3, 3, size, size)
    z = torch.randn(3, TINY["latent_dim"])
    assert model.decode(z).shape == (3, 3, size, size)
    samples = model.sample(5)
    assert samples.shape == (5, 3, size, size) and 0 <= samples.min() and samples.max() <= 1
    if name == "dcgan":
        logits = model.discriminator(x)
        assert logits.shape == (3, 1) and model(z)["image"].shape == (3, 3, size, size)
        loss = logits.mean() + model(z)["image"].mean()
    else:
        out = model(x)
        assert out["image"].shape == x.shape and out["z"].shape == (3, TINY["latent_dim"])
        assert model.encode(x).shape == (3, TINY["latent_dim"])
        loss = out["image"].mean() + (out["mu"].mean() if "mu" in out else 0)
    # the flatten size is measured from the encoder: depth 2 halves twice, widths 4, 8, 16
    enc = model.discriminator if name == "dcgan" else model.encoder
    assert enc.bottleneck == (16, size // 4, size // 4) and enc.flat == 16 * (size // 4) ** 2
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_vae_kl_matches_closed_form_and_torch_distributions():
    mu = torch.tensor([[1.0, 0.0], [0.5, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])
    # 0.5 * (mu² + var - 1 - log var) per dimension, by hand
    by_hand = torch.tensor([0.5 * 1 + 0.5 * (4 - 1 - math.log(4)), 0.5 * (0.25 + 0.25 - 1 - math.log(0.25)) + 0.5 * 4])
    assert torch.allclose(VAE.kl(mu, logvar), by_hand, atol=1e-6)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(VAE.kl(mu, logvar), ref, atol=1e-6)


def test_vae_reparameterises_in_train_mode_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    vae = MODELS["vae"](size=32, **TINY)
    x = torch.rand(2, 3, 32, 32)
    out = vae.train()(x)
    assert not torch.allclose(out["z"], out["mu"])
    out = vae.eval()(x)
    assert torch.equal(out["z"], out["mu"]) and torch.equal(vae.encode(x), out["mu"])


def test_ema_copy_follows_the_generator_and_is_used_in_eval():
    torch.manual_seed(0)
    gan = MODELS["dcgan"](size=32, ema=0.5, **TINY)
    live, ema = gan.generator, gan.generator_ema
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    before = [e.clone() for e in ema.parameters()]
    update_ema(gan)
    for b, e, p in zip(before, ema.parameters(), live.parameters()):
        assert torch.allclose(e, 0.1 * b + 0.9 * p)  # the first update warms up: min(0.5, (1 + 0) / (10 + 0))
    gan.ema_updates.fill_(100)  # past the warm-up: min(0.5, 101 / 110) = 0.5
    before = [e.clone() for e in ema.parameters()]
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    update_ema(gan)
    for b, e, p in zip(before, ema.parameters(), live.parameters()):
        assert torch.allclose(e, 0.5 * b + 0.5 * p)  # decay 0.5: halfway
    assert gan.train().image_generator is live and gan.eval().image_generator is ema
    assert not any(p.requires_grad for p in ema.parameters())


def test_dcgan_discriminator_norm_can_differ_from_the_generator():
    gan = MODELS["dcgan"](size=32, d_norm="none", **TINY)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in gan.generator.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gan.discriminator.modules())


def test_aae_mixture_prior_has_its_components():
    aae = MODELS["aae"](size=32, prior="mixture", prior_components=3, **TINY)
    means = aae.mixture_means
    assert means.shape == (3, TINY["latent_dim"]) and torch.allclose(means.norm(dim=1), torch.full((3,), 2.0))
    z = aae.prior(3000, torch.Generator().manual_seed(0))
    nearest = torch.cdist(z, means).min(1).values
    assert nearest.median() < 0.5 * math.sqrt(TINY["latent_dim"])  # std 0.5 around a mean


# ----------------------------------------------------------------------------- bad input

def test_a_latent_that_does_not_fit_the_decoder_is_one_clear_line():
    model = MODELS["vae"](size=32, **TINY)
    with pytest.raises(SandboxError, match=r"^latent codes of shape \(2, 5\) do not fit this decoder; expected "
                                           r"\(N, 6\) \(model.latent_dim=6\)$"):
        model.decode(torch.zeros(2, 5))


@pytest.mark.parametrize("overrides,message", [
    (["model.latent_dim=8"], r"model\.latent_dim: unknown option for unet"),
    (["model.name=vae", "loss={mask: {dice: 1.0}}"], r"loss: vae reconstructs images; expected loss\.image only"),
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.size=32", "data.size=64"],
     r"model\.size: 32 px but data\.size is 64"),
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.skip=concat"],
     r"model\.skip: unknown option for vae \(got 'concat'\); accepted: in_channels, width, "),
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.prior=mixture"],
     r"model\.prior: unknown option for vae"),
    (["model.name=aae", "data.name=attractors", "loss={image: {mse: 1}}", "model.prior_components=4"],
     r"model\.prior_components: only the mixture prior"),
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.d_norm=none"],
     r"model\.d_norm: unknown option for vae"),
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.latent_dim=0"],
     r"model\.latent_dim: got 0, expected an integer in \[1, 65536\]"),
    (["model.name=aae", "data.name=attractors", "loss={image: {mse: 1}}", "train.grad_accum=2"],
     r"train\.grad_accum: got 2; the aae trainer steps the encoder in two phases"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_image_folder_without_images_is_one_clear_line(tmp_path):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "notes.txt").write_text("no images here")
    cfg = load_config(ROOT / "configs/dcgan_faces.yaml", [f"data.root={tmp_path / 'faces'}", f"out_dir={tmp_path}",
                                                          "track.wandb=disabled"])
    with pytest.raises(SandboxError) as err:
        build_trainer(cfg)
    assert "\n" not in str(err.value) and "faces" in str(err.value) and "image" in str(err.value)


def test_interpolate_refuses_a_segmentation_run(tmp_path, monkeypatch, capsys):
    from sandbox.build import build_model

    cfg = load_config(None, ["data.size=32", "model.width=4", "model.depth=2"])
    run = tmp_path / "seg"
    (run / "checkpoints" / "best").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    torch.save(build_model(cfg).state_dict(), run / "checkpoints" / "best" / "model.pt")
    code, _, err = interpolate_cli(monkeypatch, capsys, "--run", str(run))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "is a unet run" in lines[0] and "expected a generative run" in lines[0]


# ----------------------------------------------------------------------------- interpolation

def test_slerp_keeps_the_norm_and_hits_both_endpoints_exactly():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    b = b * a.norm() / b.norm()
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    for t in (0.1, 0.37, 0.5, 0.9):
        assert slerp(a, b, t).norm() == pytest.approx(float(a.norm()), rel=1e-5)
        assert lerp(a, b, t).norm() < a.norm()  # the chord dips inside the sphere; slerp does not
    mid = slerp(a, b, 0.5)
    assert torch.nn.functional.cosine_similarity(mid, a, 0) == pytest.approx(
        float(torch.nn.functional.cosine_similarity(mid, b, 0)), abs=1e-6)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel codes: lerp fallback, no NaN


def test_path_goes_through_the_endpoints_and_cycle_returns_to_the_first():
    codes = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    frames = path(codes, steps=5, mode="slerp", cycle=True)
    assert frames.shape == (3 * 4 + 1, 8)
    assert torch.equal(frames[0], codes[0]) and torch.equal(frames[4], codes[1]) and torch.equal(frames[8], codes[2])
    assert torch.equal(frames[-1], frames[0])
    open_path = path(codes, steps=5, mode="lerp")
    assert open_path.shape == (2 * 4 + 1, 8) and torch.equal(open_path[-1], codes[2])


def test_gif_keeps_every_frame_and_loops(tmp_path):
    from PIL import Image

    from sandbox.viz.grids import save_gif

    frames = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 3, 8, 8)
    with Image.open(save_gif(frames, tmp_path / "a.gif", scale=1)) as im:
        assert im.n_frames == 5 and im.info["loop"] == 0 and im.size == (8, 8)


# ----------------------------------------------------------------------------- data

def test_attractors_are_deterministic_valid_and_carry_their_parameters():
    assert DATASETS["attractors"] is Attractors and Attractors.targets == ("image",)
    a, b = Attractors("train", num=6, size=32, seed=3, cache=False), Attractors("train", num=6, size=64, seed=3)
    val = Attractors("val", num=6, size=32, seed=3)
    for i in range(6):
        s = a[i]
        assert s["image"].shape == (3, 32, 32) and 0 <= s["image"].min() and s["image"].max() <= 1
        assert torch.equal(s["params"], b[i]["params"])  # the same attractor at every size
        assert torch.equal(s["image"], a[i]["image"])
        assert not torch.equal(s["params"], val[i]["params"])  # splits draw from their own streams
        p = s["params"].double().numpy()
        assert (p >= PARAM_LOW).all() and (p <= PARAM_HIGH).all()
        params, x, y = a.draw(i)
        assert (density(x, y, params, CHECK_GRID) > 0).mean() >= MIN_COVERAGE


def test_attractors_reject_degenerate_draws():
    from sandbox.data.attractors import clifford_points

    fixed_point = torch.tensor([0.3, 0.3, 0.3, 0.3]).double().numpy()  # contracting: one point
    x, y = clifford_points(fixed_point, __import__("numpy").random.default_rng(0))
    assert (density(x, y, fixed_point, CHECK_GRID) > 0).mean() < MIN_COVERAGE


# ----------------------------------------------------------------------------- metrics

def test_fid_features_are_fixed_and_leave_the_global_rng_alone():
    """Built lazily at a run's first evaluation: drawing from the global RNG there shifted the
    run's training noise from then on, so a run trained differently after another in one process."""
    from sandbox.metrics.generative import OwnFeatures

    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b = OwnFeatures(), OwnFeatures()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.convs[0].weight.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.15)
    assert a.convs[0].bias.abs().max().item() == 0


def test_frechet_distance_matches_the_closed_form():
    a = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 1], [0, 0, -1]])
    b = 2 * a + 3  # mean +3 in every dimension, covariance x4
    cov = torch.cov(a.double().T)
    # |3·1|² + Tr(S + 4S - 2 (4 S²)^½) = 27 + Tr(S)
    assert frechet_distance(a, b) == pytest.approx(27 + float(cov.trace()), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_probes_recover_linear_and_nonlinear_maps():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, generator=g) * 4 - 2
    y = torch.stack([x[:, 0] * 2 - x[:, 1], torch.sin(2 * x[:, 2])], 1)
    r = latent_probe(x[:300], y[:300], x[300:], y[300:])
    assert r["linear_per_param"][0] > 0.999 and r["linear_per_param"][1] < 0.5  # sin is not linear
    assert r["kernel"] > 0.95
    assert ridge_probe(x[:300], y[:300], x[300:]).shape == kernel_probe(x[:300], y[:300], x[300:]).shape == (100, 2)


# ----------------------------------------------------------------------------- trainers

@pytest.mark.parametrize("name", GENERATIVE)
def test_two_training_steps_write_the_run_files(tmp_path, name, monkeypatch, capsys):
    extra = ["model.ema=0.9"] if name == "dcgan" else ["train.kl_warmup_frac=0.5"] if name == "vae" else []
    trainer = build_trainer(tiny_run(tmp_path, name, extra))
    assert trainer.kind in ("generative", "gan", "aae")
    trainer.fit()
    d = tmp_path / name
    train = [r for r in read_metrics(d / "metrics.jsonl") if r["split"] == "train"]
    val = [r for r in read_metrics(d / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2] and len(val) == 1
    expected = {"dcgan": {"train/loss/gan/d", "train/loss/gan/g", "train/d_real", "train/d_fake"},
                "aae": {"train/loss/image/mse", "train/loss/aae/d", "train/loss/aae/g", "train/d_prior", "train/d_code"},
                "vae": {"train/loss/image/mse", "train/loss/vae/kl", "train/kl_weight"},
                "ae": {"train/loss/image/mse"}}.get(name, {"train/loss"})  # a new family: its total at least
    assert expected <= set(train[0])
    assert {"val/fid_own", "val/diversity", "val/kid_own", "val/precision", "val/recall"} <= set(val[0])
    if name != "dcgan":
        assert {"val/mse", "val/psnr", "val/ssim", "val/probe_r2_linear", "val/probe_r2_kernel"} <= set(val[0])
        assert (d / "images" / "recon_epoch001.png").stat().st_size > 500
    if name == "vae":
        assert {"val/elbo", "val/bpd", "val/kl"} <= set(val[0])
        assert train[0]["train/kl_weight"] == 0.0 and train[1]["train/kl_weight"] == 1.0  # 50 % of 2 steps
    assert (d / "images" / "samples_epoch001.png").stat().st_size > 500
    assert (d / "plots" / "loss.png").exists() and (d / "plots" / "generative.png").exists()
    assert (d / "checkpoints" / "best" / "model.safetensors").exists() and (d / "checkpoints" / "last" / "model.safetensors").exists()
    # interpolate.py on the run: random endpoints for all, encoded validation images where there is an encoder
    how = ["--random", "3"] if name == "dcgan" else ["--from", "0", "1", "2"]
    code, out, err = interpolate_cli(monkeypatch, capsys, "--run", str(d), *how, "--steps", "3", "--cycle")
    assert code == 0, err
    gif = next((d / "images").glob("interp_slerp_cycle_*.gif"))
    from PIL import Image

    tiles = 7 if name == "dcgan" else 9  # encoded images: the real endpoint images at both ends of the 7 frames
    with Image.open(gif.with_suffix(".png")) as strip:  # one row of 32 px tiles, 2 px gaps, upscaled x2
        assert "7 frames" in out and strip.size == (2 * (tiles * 34 + 2), 2 * 36)


def test_discriminator_bce_takes_logits_and_smooths_real_labels_only():
    from sandbox.models.objective import bce_logits

    x = torch.tensor([[2.0], [-1.0]])
    sig = torch.sigmoid(x)
    assert bce_logits(x, True).item() == pytest.approx(float(-sig.log().mean()), rel=1e-6)
    assert bce_logits(x, False).item() == pytest.approx(float(-(1 - sig).log().mean()), rel=1e-6)
    smoothed = -(0.9 * sig.log() + 0.1 * (1 - sig).log()).mean()
    assert bce_logits(x, True, 0.1).item() == pytest.approx(float(smoothed), rel=1e-6)
    assert bce_logits(x, False, 0.1).item() == pytest.approx(float(-(1 - sig).log().mean()), rel=1e-6)
    big = torch.tensor([[200.0]])  # log-sum-exp form: finite where sigmoid + log would give inf
    assert torch.isfinite(bce_logits(big, False)) and bce_logits(big, False).item() == pytest.approx(200.0)


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def test_aae_phases_update_only_their_parameters(tmp_path):
    trainer = build_trainer(tiny_run(tmp_path, "aae"))
    m = trainer.unwrapped
    batch = trainer.fit_batch(next(iter(trainer.train_loader)))
    parts = {"encoder": m.encoder, "decoder": m.decoder, "discriminator": m.discriminator}

    def run(phase):
        before = {k: _snapshot(v) for k, v in parts.items()}
        phase()
        return {k for k, v in parts.items() if _changed(before[k], v)}

    assert run(lambda: trainer.reconstruction_step(batch)) == {"encoder", "decoder"}
    assert run(lambda: trainer.disc_phase(batch["image"])) == {"discriminator"}
    assert run(lambda: trainer.gen_phase(batch["image"])) == {"encoder"}
    assert all(p.requires_grad for p in m.discriminator.parameters())  # unfrozen after the encoder's phase


@pytest.mark.parametrize("extra,reg_lr", [((), 1e-4), (("train.d_lr=5e-4",), 5e-4)])
def test_aae_regularisation_phase_runs_at_d_lr_default_a_tenth_of_lr(tmp_path, extra, reg_lr):
    """Discriminator and encoder-as-generator share the regularisation rate; at the full rate the
    prior matching overrode reconstruction on attractors (PSNR 13.5 vs 17.0 dB)."""
    trainer = build_trainer(tiny_run(tmp_path, "aae", ["train.lr=1e-3", "train.scheduler=none", *extra]))
    lrs = [opt.param_groups[0]["lr"] for opt, _ in trainer.optimizers]
    assert lrs == pytest.approx([1e-3, reg_lr, reg_lr])
    gan = build_trainer(tiny_run(tmp_path / "gan", "dcgan", ["train.lr=1e-3", "train.scheduler=none"]))
    assert [opt.param_groups[0]["lr"] for opt, _ in gan.optimizers] == pytest.approx([1e-3, 1e-3])  # GAN: d_lr = lr


def test_compile_says_it_does_little_for_the_gan(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model: model)  # importing dynamo alone takes ~10 s
    build_trainer(tiny_run(tmp_path, "dcgan", ["train.compile=true"]))
    assert "the gan trainer calls its sub-modules directly" in caplog.text


def test_gan_generator_step_leaves_the_discriminator_alone(tmp_path):
    """Each optimizer step of one batch, watched: the D step (detached fakes) changes D and leaves G's
    weights and gradients alone; the G step (D frozen) changes G and leaves D's weights unchanged and
    its gradients unset (none left to leak into the next D step)."""
    trainer = build_trainer(tiny_run(tmp_path, "dcgan"))
    m = trainer.unwrapped
    batch = trainer.fit_batch(next(iter(trainer.train_loader)))
    steps, step = [], trainer.backward_and_step

    def watched(loss, index=0, model=None, parts=None):
        g, d = _snapshot(m.generator), _snapshot(m.discriminator)
        done = step(loss, index=index, model=model, parts=parts)
        grads = {k: any(p.grad is not None for p in v.parameters()) for k, v in (("g", m.generator), ("d", m.discriminator))}
        steps.append((index, _changed(g, m.generator), _changed(d, m.discriminator), grads))
        return done

    trainer.backward_and_step = watched
    trainer.train_step(batch)  # D step then G step
    assert [s[0] for s in steps] == [1, 0]
    (_, g_in_d, d_in_d, grads_d), (_, g_in_g, d_in_g, grads_g) = steps
    assert d_in_d and not g_in_d and grads_d == {"g": False, "d": False}
    assert g_in_g and not d_in_g and grads_g == {"g": False, "d": False}
    assert all(p.requires_grad for p in m.discriminator.parameters())  # unfrozen after the G step
    # not a generator batch (n_critic 2, step 1): G is not touched at all
    trainer2 = build_trainer(tiny_run(tmp_path / "b", "dcgan", ["train.n_critic=2", "name=dcgan2"]))
    trainer2.state.step = 1  # not a generator batch
    m2 = trainer2.unwrapped
    g1 = _snapshot(m2.generator)
    trainer2.train_step(trainer2.fit_batch(next(iter(trainer2.train_loader))))
    assert not _changed(g1, m2.generator)


def test_probe_cli_writes_json_and_prints_the_same_numbers(tmp_path, monkeypatch, capsys):
    import json

    from tests.conftest import command

    probe = command("probe")
    build_trainer(tiny_run(tmp_path, "vae")).fit()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["probe.py", "--run", str(tmp_path / "vae"), "--split", "val", "--samples", "8",
                                      "--fit", "8"])
    probe.main()
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "vae" / "eval" / "probe_val.json").read_text())
    assert res["n_real"] == 4 and res["n_generated"] == 8 and res["probe_fit_images"] == 8
    for key in ("fid_own_samples", "fid_own_noise_channel", "fid_own_noise_pixel", "fid_own_real_train_vs_heldout"):
        assert math.isfinite(res[key]) and f"{res[key]:11.3f}" in out
    # 4 held-out images: the floor has 4 (k = 3 needs 4), the samples 8
    for row in ("samples", "noise_channel", "noise_pixel", "real_train_vs_heldout"):
        assert f"{res['kid_own_' + row]:11.5f}" in out and 0 <= res["recall_" + row] <= 1
        assert f"{res['precision_' + row]:11.3f}" in out
        assert f"{res['spectral_l1_' + row]:11.3f}" in out and f"{res['hf_log_ratio_' + row]:11.3f}" in out
    assert res["nearest_train_images"] == 8
    for key in ("nearest_features_samples", "nearest_features_heldout", "nearest_pixels_samples",
                "nearest_pixels_heldout"):
        assert res[key] > 0 and f"{res[key]:11.{4 if 'pixels' in key else 3}f}" in out
    assert "fid_inception_samples" not in res
    for label in ("trained", "untrained"):
        assert f"{res['probe_' + label]['kernel']:11.3f}" in out and res["probe_" + label]["linear"] <= 1.0
    assert "NOT Inception FID" in out and "probe_val.json" in out
