
import pytest

from sandbox.config.loading import load_config, parse_overrides
from sandbox.errors import ConfigError
from tests.conftest import ROOT, run_command

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from sandbox.models import MODELS

    cfg = load_config(path)
    # a loss section for every model whose trainer takes one; none for the GAN (its objective is the game)
    assert cfg.name and (cfg.loss if MODELS[cfg.model.name].takes_loss else cfg.loss == {})


def test_overrides_apply_and_parse_yaml_values():
    cfg = load_config(ROOT / "configs/unet_dice.yaml",
                      ["train.epochs=3", "model.depth=4", "model.name=hourglass", "track.tags=[a, b]", "train.clip=null"])
    assert cfg.train.epochs == 3 and cfg.model.depth == 4 and cfg.model.name == "hourglass"
    assert cfg.track.tags == ["a", "b"] and cfg.train.clip is None
    assert parse_overrides(["a.b=1e-3"]) == [("a.b", 1e-3)]


def test_int_widens_to_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("overrides,message", [
    (["train.epochz=3"], r"unknown key 'train.epochz'; accepted keys under train: epochs"),
    (["colour=red"], r"unknown key 'colour'; accepted keys: name, seed"),
    (["train.epochs=three"], r"train.epochs: got 'three', expected an integer"),
    (["train.epochs=-1"], r"train.epochs: got -1, expected a positive number"),
    (["train.lr=[1]"], r"train.lr: got \[1\], expected a number"),
    (["model.name=resnet9000"], r"model.name: unknown model 'resnet9000'; accepted: .*hourglass, simpleconv, unet"),
    (["data.name=mnist"], r"data.name: unknown dataset 'mnist'; accepted: .*dancers"),
    (["loss.mask={dcie: 1.0}"], r"loss.mask.dcie: unknown loss; accepted: bce, ce, dice"),
    (["loss.segm={dice: 1.0}"], r"loss.segm: dataset 'dancers' has no target 'segm'; accepted: mask, depth"),
    (["train.optimizer=adamax"], r"train.optimizer: got 'adamax', expected one of 'adam', 'adamw', 'sgd'"),
    (["model.upsample=nearest"], r"model.upsample: got 'nearest', expected one of 'transpose'"),
    (["data.size=100", "model.depth=3"], r"model.depth: 3 halves data.size=100 to a non-integer side .*accepted depths for this size: \[0, 1, 2\]"),
    (["data.size=32", "model.depth=5"], r"model.depth: 5 shrinks data.size=32 below 2 px"),
    (["model.widths=[8, 16]", "model.depth=3"], r"model.widths: got 2 widths for model.depth=3; expected depth \+ 1 = 4"),
    (["train.mixed_precision=fp8"], r"train.mixed_precision: got 'fp8', expected one of 'auto', 'no', 'fp16', 'bf16'"),
    (["train.channels_last=maybe"], r"train.channels_last: got 'maybe', expected true or false"),
    (["epochs3"], r"override 'epochs3' is not of the form key.path=value"),
])
def test_bad_config_names_key_and_accepted_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/unet_dice.yaml", overrides)


def test_missing_config_file_lists_available(tmp_path):
    with pytest.raises(ConfigError, match=r"config file 'nope.yaml' not found"):
        load_config("nope.yaml")


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: unet\n  width: [16\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/nope.yaml"], "error: config file 'configs/nope.yaml' not found; available: configs/"),
    (["--config", "configs/unet_dice.yaml", "train.epochz=3"], "error: configs/unet_dice.yaml: unknown key 'train.epochz'"),
    (["--config", "configs/unet_dice.yaml", "model.name=vit"], "error: configs/unet_dice.yaml: model.name: unknown model 'vit'"),
    (["--config", "configs/unet_dice.yaml", "loss.mask={focal2: 1}"], "error: configs/unet_dice.yaml: loss.mask.focal2: unknown loss"),
    (["--config", "configs/unet_dice.yaml", "data.batch_size=big"], "error: configs/unet_dice.yaml: data.batch_size: got 'big', expected an integer"),
])
def test_cli_bad_config_is_one_line_exit_2(args, message, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config paths as a user types them, from the checkout
    res = run_command("train", *args)
    assert res.code == 2
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith(message), lines[0]
