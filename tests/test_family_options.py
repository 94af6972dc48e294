"""Per-family model options (issue 27 item 3): the config's ``model:`` section is read into the options class of
the family ``model.name`` names; every committed config builds the model with the options the flat schema of
earlier versions gave it; a run directory written with that flat schema still loads, resumes and evaluates; an
unknown or out-of-range key is one line."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from sandbox import build_trainer, load_config
from sandbox.analysis.sweep import Cell, Spec, load_study, make_cells, override, run_state, study_overrides
from sandbox.build import model_kwargs
from sandbox.config.loading import _set_dotted, parse_overrides, read_yaml
from sandbox.errors import ConfigError
from sandbox.models import MODELS
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# The flat ModelConfig of main before this change (sandbox/config/schema.py at 3c2155c), read off the schema:
# every family's key, with its default. A config.yaml of that version holds all of them.
FLAT_DEFAULTS = {
    "name": "unet", "in_channels": 3, "width": 16, "widths": None, "depth": 3, "blocks": 2, "block": "plain",
    "norm": "batch", "upsample": None, "skip": None, "downsample": None, "dilation": 1, "dropout": 0.0,
    "encoder": "core", "weights": None, "freeze_encoder": False, "latent_dim": None, "size": None, "prior": None,
    "prior_components": None, "ema": None, "d_norm": None, "invert": None, "prediction": None, "min_snr": None,
    "t_sampling": None, "sampler": None, "sample_steps": None, "eta": None, "attention": None}
# main's sandbox/build.py model_kwargs: keys at these values were not passed to the builder
NOT_PASSED = {"encoder": "core", "weights": None, "freeze_encoder": False}
GENERATIVE_THEN = {"ae", "vae", "dcgan", "aae", "ddpm", "flow"}  # main's generative families (resolve: model.size)
FAMILIES_THEN = {"unet", "hourglass", "simpleconv", *GENERATIVE_THEN}  # a config of a later family has no "then"

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))


def options_then(config: Path, overrides: list[str]) -> dict:
    """The builder options main gave the model of ``config`` with ``overrides``, derived as main did: the raw
    YAML with the overrides set, over the flat defaults; ``model.size`` = ``data.size`` for a generative family
    (main's resolve.py); without ``name``, ``None``s and the keys main did not pass at their defaults."""
    raw = read_yaml(config) or {}
    for key, value in parse_overrides(overrides):
        _set_dotted(raw, key, value)
    model = {**FLAT_DEFAULTS, **(raw.get("model") or {})}
    if model["name"] in GENERATIVE_THEN and model["size"] is None:
        model["size"] = (raw.get("data") or {}).get("size", 128)
    return {k: v for k, v in model.items()
            if k != "name" and v is not None and not (k in NOT_PASSED and v == NOT_PASSED[k])}


def options_now(cfg) -> dict:
    """``model_kwargs`` of today without the arguments that are not config options, and without the keys at the
    values main left out (the segmentation builders get ``encoder: core`` explicitly now: the same model)."""
    kw = {k: v for k, v in model_kwargs(cfg).items() if k not in ("targets", "cond_dim", "factors")}
    return {k: v for k, v in kw.items() if not (k in NOT_PASSED and v == NOT_PASSED[k])}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_committed_config_builds_the_options_main_built(config):
    cfg = load_config(config)
    if cfg.model.name not in FAMILIES_THEN:
        pytest.skip(f"{cfg.model.name} is a family added since: main built no model of it")
    assert isinstance(cfg.model, MODELS[cfg.model.name].options)
    assert options_now(cfg) == options_then(config, [])


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.stem)
def test_every_study_cell_builds_the_options_main_built(study):
    """Each cell of each committed study (the study's overrides, then the cell's), as the sweep loads it."""
    s = load_study(str(study))
    for cell in make_cells(s["grid"]):
        over = study_overrides(s) + [override(k, v) for k, v in cell.overrides.items()]
        cfg = load_config(s["config"], over)
        assert options_now(cfg) == options_then(ROOT / s["config"], over), cell.name


def test_a_family_reads_only_its_own_keys_and_drops_other_families_nulls():
    cfg = load_config(None, ["model.name=vae", "data.name=attractors", "data.size=32", "loss={image: {mse: 1}}",
                             "model.prior=null", "model.d_norm=null", "model.encoder=core", "model.skip=none",
                             "model.freeze_encoder=false", "model.sampler=null", "model.latent_dim=8"])
    names = {f.name for f in dataclasses.fields(cfg.model)}
    assert {"latent_dim", "size", "ema"} <= names and not names & {"prior", "d_norm", "encoder", "skip", "sampler"}
    assert cfg.model.latent_dim == 8 and cfg.model.size == 32
    unet = load_config(None, ["model.latent_dim=null", "model.prior=null", "model.eta=null"]).model
    assert not hasattr(unet, "latent_dim") and unet.encoder == "core"


@pytest.mark.parametrize("overrides,family,absent", [
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.colour=3"], "vae", "prior"),
    (["model.colour=3"], "unet", "latent_dim"),
    (["model.name=ddpm", "data.name=attractors", "model.norm=group", "model.colour=3"], "ddpm", "t_sampling"),
])
def test_an_unknown_key_is_one_line_naming_the_keys_of_that_family(overrides, family, absent):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    msg = str(err.value)
    assert "\n" not in msg and "unknown key 'model.colour'; accepted keys under model: name, in_channels" in msg
    accepted = msg.split("accepted keys under model: ")[1].split(", ")
    assert accepted == ["name", *MODELS[family].accepted()] and absent not in accepted


@pytest.mark.parametrize("overrides,message", [
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.prior=mixture"],
     "model.prior: unknown option for vae (got 'mixture'); accepted: in_channels, width, widths, depth, blocks, "
     "block, norm, upsample, downsample, dilation, dropout, latent_dim, size, ema"),
    (["model.encoder=core", "model.name=ae", "data.name=attractors", "loss={image: {mse: 1}}", "model.freeze_encoder=true"],
     "model.freeze_encoder: unknown option for ae (got True); accepted: in_channels,"),
])
def test_another_familys_key_set_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("overrides,message", [
    (["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.latent_dim=0"],
     "model.latent_dim: got 0, expected an integer in [1, 65536]"),
    (["model.name=ddpm", "data.name=attractors", "model.norm=group", "model.sample_steps=0"],
     "model.sample_steps: got 0, expected an integer in [1, 10000]"),
    (["model.name=ddpm", "data.name=attractors", "model.norm=group", "model.sampler=ddim", "model.eta=1.5"],
     "model.eta: got 1.5, expected a value in [0, 1]"),
    (["model.name=ddpm", "data.name=attractors", "model.norm=group", "model.min_snr=0"],
     "model.min_snr: got 0.0, expected a value in (0, inf)"),
    (["model.width=0"], "model.width: got 0"),
])
def test_an_out_of_range_option_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value) and message in str(err.value)


def test_the_python_api_takes_the_same_options_and_refuses_the_same_keys():
    MODELS["vae"](size=16, width=4, depth=2, latent_dim=4, prior=None, encoder="core")  # unused values: fine
    with pytest.raises(ConfigError, match=r"^model\.prior: unknown option for vae"):
        MODELS["vae"](size=16, width=4, depth=2, prior="mixture")
    with pytest.raises(ConfigError, match=r"^model\.latent_dim: got 0, expected an integer in \[1, 65536\]$"):
        MODELS["ae"](size=16, width=4, depth=2, latent_dim=0)


def flatten_config_files(run: Path) -> None:
    """Rewrite every config.yaml of ``run`` as main wrote it: the model section with every family's key."""
    for f in run.rglob("config.yaml"):
        raw = yaml.safe_load(f.read_text())
        raw["model"] = {**FLAT_DEFAULTS, **raw["model"]}
        f.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_run_directory_of_the_flat_schema_loads_resumes_and_evaluates(tiny_run):
    from sandbox.analysis.evaluation import evaluate_run

    flatten_config_files(tiny_run)
    assert read_yaml(tiny_run / "config.yaml")["model"]["prior"] is None  # as main wrote it
    res = evaluate_run(str(tiny_run), "best", "val")
    assert res["val"]["n"] == 4 and 0 <= res["val"]["means"]["dice"] <= 1
    cfg = load_config(tiny_run / "config.yaml")
    spec = Spec(Cell("tiny", {}, {}, {}), cfg.seed, "tiny", tiny_run, [], cfg.train.epochs)
    assert run_state(spec, str(tiny_run / "config.yaml")) == "done"  # a sweep finds it done, not "other settings"
    trainer = build_trainer(load_config(tiny_run / "config.yaml", [f"train.resume={tiny_run}", "train.epochs=2",
                                                                    "train.scheduler=none"]))
    assert trainer.state.epoch == 1
    trainer.fit()
    assert trainer.state.epoch == 2


def test_a_generative_run_of_the_flat_schema_loads_and_resumes(tmp_path, tiny_overrides):
    """A vae run's flat config.yaml holds the segmentation keys at their unused non-null values too
    (``encoder: core``, ``freeze_encoder: false``)."""
    from sandbox.runs.load import load_run

    build_trainer(load_config(ROOT / "configs" / "vae_attractors.yaml", tiny_overrides + [
        "data.size=16", "model.latent_dim=4", "train.fid_samples=0", "train.probe_samples=0"])).fit()
    run = tmp_path / "tiny"
    flatten_config_files(run)
    assert read_yaml(run / "config.yaml")["model"]["encoder"] == "core"
    cfg, model = load_run(str(run))
    assert cfg.model.latent_dim == 4 and model.sample(2).shape == (2, 3, 16, 16)
    trainer = build_trainer(load_config(run / "config.yaml", [f"train.resume={run}", "train.epochs=2", "train.scheduler=none"]))
    trainer.fit()
    assert trainer.state.epoch == 2
