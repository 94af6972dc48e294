"""The seed's comparisons (issue 16, study 5): every study file loads and expands; the DCGAN's latent
correspondence (train.param_mse: the generator takes the attractors' parameters; model.invert: an
encoder trained to invert G, read by the latent probe)."""
import pytest
import torch

from sandbox import build_model, build_trainer, load_config
from sandbox.errors import ConfigError
from sandbox.tracking.metrics_log import read_metrics
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
SEED_STUDIES = {"seed_blocks_upsampling", "mask_losses", "dcgan_stride", "latent_correspondence"}


# ----------------------------------------------------------------------------- study files

def test_the_seed_studies_are_among_the_study_files():
    assert SEED_STUDIES <= {p.stem for p in STUDIES}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_study_file_loads_and_expands_to_valid_runs(path, tmp_path, capsys):
    """The study's keys and protocol parse, every cell's config loads with the study's overrides (plan loads
    each), and the report split's metrics are produced by every cell (check_study), as sweep.py does."""
    from sandbox.analysis.sweep import check_study, load_study, make_cells, plan, study_overrides

    study = load_study(str(path))
    cells = make_cells(study["grid"])
    seeds = study.get("seeds", 1)
    specs = plan(study["config"], cells, seeds, study_overrides(study), path.stem, tmp_path)
    check_study(study, str(path), study["config"], specs)
    n_seeds = seeds if isinstance(seeds, int) else len(seeds)
    assert len(specs) == len(cells) * n_seeds and len({s.name for s in specs}) == len(specs)
    assert isinstance(study.get("expected_minutes"), (int, float)) and study.get("title") and study.get("description")
    if path.stem in SEED_STUDIES:  # the protocol: 3 seeds, picked on val
        assert study["seeds"] == [0, 1, 2] and study["protocol"]["select_on"].startswith("val")
        assert study["protocol"]["pairs"]  # comparisons named up front
    assert not tmp_path.joinpath(path.stem).exists()  # planning writes nothing


# ----------------------------------------------------------------------------- latent correspondence

def tiny_gan(tmp_path, *extra):
    return load_config(str(ROOT / "configs/dcgan_attractors.yaml"), [
        f"out_dir={tmp_path}", "name=lc", "data.size=16", "data.num_train=8", "data.num_val=4", "data.batch_size=4",
        "model.width=4", "model.depth=2", "model.latent_dim=3", "train.epochs=1", "train.log_every=1",
        "train.num_images=0", "track.wandb=disabled", "train.mixed_precision=no", "train.fid_samples=8",
        "train.probe_samples=8", *extra])


@pytest.mark.slow  # two 2-step GAN runs with samples and the probe: 17-24 s measured at load 7 on the 2 cores
def test_param_mse_feeds_the_parameters_to_the_generator_and_adds_the_weighted_mse(tmp_path):
    plain = build_model(tiny_gan(tmp_path))
    assert plain.generator.latent_dim == 3 and plain.prior(5).shape == (5, 3) and not plain.encodes
    cfg = tiny_gan(tmp_path, "train.param_mse=2.5", "model.invert=true")
    trainer = build_trainer(cfg)
    m = trainer.unwrapped
    assert m.generator.latent_dim == 4 + 3 and m.inverter.head.out_features == 4 + 3  # u = (a, b, c, d, z)
    # v is standardised by the training split's own parameters (read here from the dataset itself)
    params = torch.stack([trainer.datasets["train"][i]["params"] for i in range(8)])
    torch.testing.assert_close(m.param_mean, params.mean(0))
    torch.testing.assert_close(m.param_std, params.std(0))
    u = m.prior(4096, torch.Generator().manual_seed(0))  # v ~ U(-sqrt 3, sqrt 3): mean 0, std 1, |v| <= 1.732
    assert u.shape == (4096, 7) and u[:, :4].abs().max() <= 3**0.5 and u[:, :4].std(0).sub(1).abs().max() < 0.05
    trainer.fit()
    rows = read_metrics(tmp_path / "lc" / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"][0]
    for r in train:  # train/loss = D's loss + G's adversarial loss + 2.5 * MSE + the inverter's loss
        assert r["train/loss/gan/param_mse"] > 0
        expected = r["train/loss/gan/d"] + r["train/loss/gan/g"] + 2.5 * r["train/loss/gan/param_mse"] \
            + r["train/loss/invert"]
        assert r["train/loss"] == pytest.approx(expected, rel=1e-5)
        # the inverter's MSE is the mean of its 4 parameter and 3 noise dimensions' squared errors
        mixed = (4 * r["train/loss/invert/params"] + 3 * r["train/loss/invert/noise"]) / 7
        assert r["train/loss/invert"] == pytest.approx(mixed, rel=1e-5)
    assert {"val/probe_r2_linear", "val/probe_r2_kernel", "val/kid_own"} <= set(val)
    # plain DCGAN (param_mse 0): no parameters, no MSE term
    build_trainer(tiny_gan(tmp_path, "name=plain")).fit()
    plain_rows = read_metrics(tmp_path / "plain" / "metrics.jsonl")
    assert not any("train/loss/gan/param_mse" in r or "val/probe_r2_kernel" in r for r in plain_rows)


def test_the_inverter_step_changes_only_the_inverter(tmp_path):
    trainer = build_trainer(tiny_gan(tmp_path, "train.param_mse=1", "model.invert=true"))
    m = trainer.unwrapped
    u = m.prior(4)
    with torch.no_grad():
        fake = m.decode(u)  # (in train mode: G's BatchNorm statistics move here, before the snapshot)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainer.invert_step(fake, u)
    changed = {k.split(".")[0] for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"inverter"}


@pytest.mark.slow  # 30 inverter steps at batch 32: 48-59 s at load 12 on the 2 cores (a few seconds idle)
def test_the_inverter_recovers_the_input_of_a_fixed_generator(tmp_path):
    """Closed-form yardstick: u ~ N(0, I), so the best constant guess has MSE exactly Var u = 1. A fixed
    random generator (eval mode, never stepped) is smooth and, for 2 inputs, injective in practice. Every
    step draws a fresh batch, so each step's loss, taken before its update, is an error on samples the
    inverter has not seen: it starts near 1 and its last 5 steps of 30 must average below 0.15 (measured
    0.012 / 0.024 / 0.016 for model seeds 0 / 1 / 2; the inverter's BatchNorm lifts G's tiny spread at
    init, ~1e-3 per pixel, to unit scale: without norms it stays at 1 for 120 steps)."""
    trainer = build_trainer(tiny_gan(tmp_path, "model.invert=true", "model.latent_dim=2", "data.batch_size=32",
                                     "train.lr=3e-3"))
    m = trainer.unwrapped
    m.generator.eval()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        u = m.prior(32, g)
        with torch.no_grad():
            fake = m.decode(u)
        losses.append(float(trainer.invert_step(fake, u)["loss/invert"]))
    assert losses[0] > 0.5 and sum(losses[-5:]) / 5 < 0.15, losses


@pytest.mark.parametrize("extra, message", [
    (["data.name=dancers"], "train.param_mse: dataset dancers has no generating parameters"),
    (["model.name=vae", "model.d_norm=null", "loss={image: {mse: 1.0}}"], "train.param_mse: only the gan trainer (dcgan) takes it"),
    (["train.param_mse=-1"], "train.param_mse: got -1"),
    (["data.augment=[{HorizontalFlip: {p: 0.5}}]"], "train.param_mse: data.augment changes the training images"),
])
def test_param_mse_where_it_cannot_apply_is_one_line(tmp_path, extra, message):
    with pytest.raises(ConfigError) as exc:
        tiny_gan(tmp_path, "train.param_mse=1.0", *extra)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_invert_is_a_dcgan_option_only(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.invert: unknown option for vae"):
        tiny_gan(tmp_path, "model.name=vae", "model.d_norm=null", "loss={image: {mse: 1.0}}", "model.invert=true")
    with pytest.raises(ConfigError, match=r"model\.invert: unknown option for unet"):
        load_config(str(ROOT / "configs/unet_dice.yaml"), ["model.invert=true"])
