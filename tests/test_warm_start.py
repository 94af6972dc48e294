"""Warm starts (train.init_from), early stopping (train.early_stop) and the AE on dancers.

Every run here is a few 32 px steps on CPU; the runs other tests start from are trained once per module."""
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.build import build_model
from sandbox.engine.state import TrainerState
from sandbox.engine.stops import early_stop
from sandbox.errors import ConfigError, SandboxError
from sandbox.runs.checkpoints import read_state
from sandbox.runs.load import checkpoint_weights
from sandbox.tracking.metrics_log import read_metrics

TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.batch_size=4", "model.width=4", "model.depth=2",
        "train.epochs=1", "train.log_every=1", "train.num_images=0", "track.wandb=disabled",
        "train.mixed_precision=no"]
AE = ["model.name=ae", "model.latent_dim=4", "loss={image: {mse: 1.0}}", "train.monitor=val/loss",
      "train.monitor_mode=min", "train.fid_samples=0", "train.probe_samples=0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cfg(out: Path, name: str, *extra: str):
    return load_config(None, [f"out_dir={out}", f"name={name}", *TINY, *extra])


def train(out: Path, name: str, *extra: str, until_epoch=None):
    trainer = build_trainer(cfg(out, name, *extra))
    trainer.fit(until_epoch=until_epoch)
    return trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained UNet run (segmentation, dancers) and a trained AE run (on dancers: item 4 of issue 17)."""
    out = tmp_path_factory.mktemp("sources")
    train(out, "unet")
    train(out, "ae", *AE)
    return out


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- AE/VAE accept dancers

def test_ae_trains_two_steps_on_dancers_at_32_px(runs):
    records = read_metrics(runs / "ae" / "metrics.jsonl")
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]  # 8 images / batch 4
    assert all(r["train/loss"] > 0 for r in train_rows)
    assert [r["epoch"] for r in records if r["split"] == "val"] == [1]
    assert load_config(None, ["model.name=vae", "loss={image: {mse: 1.0}}"]).data.name == "dancers"  # not refused


# ----------------------------------------------------------------------------- init_from

def test_init_from_copies_every_weight_and_starts_a_fresh_run(runs, tmp_path):
    source = checkpoint_weights(runs / "unet" / "checkpoints" / "best")
    fresh = build_model(cfg(tmp_path, "new", "seed=1")).state_dict()
    assert not equal(fresh, source)  # seed 1 initialises otherwise: equal weights below come from the load
    trainer = build_trainer(cfg(tmp_path, "new", "seed=1", f"train.init_from={runs / 'unet'}"))
    assert equal(trainer.unwrapped.state_dict(), source)
    assert trainer.state.epoch == 0 and trainer.state.step == 0 and trainer.state.best is None
    assert all(not s for s in trainer.optimizers[0][0].state.values())  # no optimizer moments carried over
    trainer.fit()
    assert read_state(tmp_path / "new" / "checkpoints" / "last")["epoch"] == 1  # its own epoch counter


def test_init_from_a_checkpoint_directory_takes_that_checkpoint(runs, tmp_path):
    last = runs / "unet" / "checkpoints" / "last"
    trainer = build_trainer(cfg(tmp_path, "new", f"train.init_from={last}"))
    assert equal(trainer.unwrapped.state_dict(), checkpoint_weights(last))


def test_init_from_a_run_takes_its_best_weights_not_its_last(runs, tmp_path, caplog):
    """best is weights only (no optimizer state): a warm start must still take it, by the run directory or by
    name. The source's best is made to differ from its last (a 1-epoch run has them equal), so a loader that
    silently fell back to last would fail here."""
    src = tmp_path / "src"
    shutil.copytree(runs / "unet", src)
    best = src / "checkpoints" / "best"
    weights = {k: v + 1 if v.is_floating_point() else v for k, v in checkpoint_weights(best).items()}
    from safetensors.torch import save_file

    save_file(weights, str(best / "model.safetensors"))
    assert not equal(weights, checkpoint_weights(src / "checkpoints" / "last"))
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        by_run = build_trainer(cfg(tmp_path, "a", f"train.init_from={src}"))
        by_name = build_trainer(cfg(tmp_path, "b", f"train.init_from={best}"))
    assert equal(by_run.unwrapped.state_dict(), weights) and equal(by_name.unwrapped.state_dict(), weights)
    assert "instead" not in caplog.text  # no fallback warning


def test_init_from_falls_back_to_the_newest_checkpoint_without_best(runs, tmp_path, caplog):
    src = tmp_path / "nobest"
    shutil.copytree(runs / "unet", src)
    shutil.rmtree(src / "checkpoints" / "best")
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        trainer = build_trainer(cfg(tmp_path, "new", f"train.init_from={src}"))
    assert equal(trainer.unwrapped.state_dict(), checkpoint_weights(src / "checkpoints" / "last"))
    assert "using checkpoints/last instead" in caplog.text


def test_strict_mismatch_is_one_line_naming_tensors_and_the_way_out(runs, tmp_path):
    with pytest.raises(ConfigError) as exc:
        build_trainer(cfg(tmp_path, "wide", "model.width=8", f"train.init_from={runs / 'unet'}"))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("train.init_from: ")
    assert "encoder.stages.0.body.0.0.weight: (4, 3, 3, 3) there, (8, 3, 3, 3) here" in msg
    assert msg.endswith("with train.init_from_strict=false")
    assert not (tmp_path / "wide").exists()  # refused before the run directory is made


def test_non_strict_loads_what_matches_and_reports_what_was_skipped(runs, tmp_path, caplog):
    extra = ["loss={mask: {dice: 1.0}, depth: {l1: 1.0}}", "seed=1"]  # a depth head the source lacks
    with pytest.raises(ConfigError, match=r"2 of this model with no match there \(heads\.heads\.depth\.weight"):
        build_trainer(cfg(tmp_path, "depth", *extra, f"train.init_from={runs / 'unet'}"))
    with caplog.at_level(logging.INFO, logger="sandbox"):
        trainer = build_trainer(cfg(tmp_path, "depth", *extra, f"train.init_from={runs / 'unet'}",
                                    "train.init_from_strict=false"))
    got, source = trainer.unwrapped.state_dict(), checkpoint_weights(runs / "unet" / "checkpoints" / "best")
    fresh = build_model(cfg(tmp_path, "x", *extra)).state_dict()
    head = [k for k in got if k.startswith("heads.heads.depth.")]
    assert head == ["heads.heads.depth.weight", "heads.heads.depth.bias"]
    assert all(torch.equal(got[k], source[k]) for k in source)  # every source tensor landed
    assert all(torch.equal(got[k], fresh[k]) for k in head)  # the new head keeps its initialisation
    assert f"loaded {len(source)} of {len(got)} tensors" in caplog.text
    assert "init_from skipped: 2 of this model with no match there (heads.heads.depth.weight, " \
           "heads.heads.depth.bias)" in caplog.text


def test_autoencoder_encoder_lands_in_the_unet_encoder(runs, tmp_path, caplog):
    ae = checkpoint_weights(runs / "ae" / "checkpoints" / "best")
    with pytest.raises(ConfigError, match="train.init_from_strict=false"):
        build_trainer(cfg(tmp_path, "seg", f"train.init_from={runs / 'ae'}"))
    with caplog.at_level(logging.INFO, logger="sandbox"):
        trainer = build_trainer(cfg(tmp_path, "seg", f"train.init_from={runs / 'ae'}", "train.init_from_strict=false"))
    got = trainer.unwrapped.state_dict()
    fresh = build_model(cfg(tmp_path, "x")).state_dict()
    enc = [k for k in got if k.startswith("encoder.")]
    assert len(enc) == 36  # 3 stages x 2 convs x (conv weight + BN weight, bias, mean, var, count)
    for k in enc:  # the AE's core Encoder is encoder.core.<...>, the UNet's encoder.<...>
        assert torch.equal(got[k], ae["encoder.core." + k.removeprefix("encoder.")]), k
    assert all(torch.equal(got[k], fresh[k]) for k in got if not k.startswith("encoder."))
    assert "(36 encoder tensors, 36 of them from its encoder.core.*)" in caplog.text


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_init_from_a_missing_dir_or_a_code_payload_is_refused_cleanly(runs, tmp_path):
    with pytest.raises(ConfigError, match=r"^train.init_from: '[^']*ghost' does not exist; expected runs/<run>"):
        build_trainer(cfg(tmp_path, "new", f"train.init_from={tmp_path / 'ghost'}"))
    src, marker = tmp_path / "planted", tmp_path / "PWNED"
    shutil.copytree(runs / "unet", src)
    for which in ("best", "last"):  # a run of an earlier version: its weights in model.pt (a pickle)
        ck = src / "checkpoints" / which
        (ck / "model.safetensors").unlink()
        torch.save({"state": Payload(marker)}, ck / "model.pt")
        state = json.loads((ck / "trainer_state.json").read_text())
        state["files"] = [f.replace("model.safetensors", "model.pt") for f in state["files"]]
        (ck / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(SandboxError, match=r"model.pt' was refused as unsafe \(it names [\w.]*system"):
        build_trainer(cfg(tmp_path, "new", f"train.init_from={src}"))
    assert not marker.exists() and not (tmp_path / "new").exists()


def test_init_from_with_resume_is_refused_but_a_warm_started_run_resumes(runs, tmp_path):
    train(tmp_path, "warm", "train.epochs=2", f"train.init_from={runs / 'unet'}", until_epoch=1)
    with pytest.raises(ConfigError, match=r"^train.init_from=.*ae with train.resume: a resumed run continues from "
                                          r"its own checkpoint"):
        build_trainer(cfg(tmp_path, "warm", "train.epochs=2", f"train.init_from={runs / 'ae'}",
                          f"train.resume={tmp_path / 'warm'}"))
    # its own config.yaml names the init_from it started with: the resume goes on from its checkpoint
    resumed = build_trainer(load_config(tmp_path / "warm" / "config.yaml", [f"train.resume={tmp_path / 'warm'}"]))
    assert resumed.state.epoch == 1
    resumed.fit()
    assert read_state(tmp_path / "warm" / "checkpoints" / "last")["epoch"] == 2


# ----------------------------------------------------------------------------- early stopping

def test_early_stop_counts_epochs_without_an_improvement_by_min_delta():
    # max mode, min_delta 0.02, patience 2: 0.5 (first: improves), 0.6 (0.58 > 0.5: improves), 0.605 (0.585 < 0.6:
    # wait 1; still the new best), 0.61 (0.59 < 0.605: wait 2) -> stops after epoch 4
    state, waits, stops = TrainerState(), [], []
    for epoch, value in enumerate([0.5, 0.6, 0.605, 0.61], start=1):
        state.epoch = epoch
        stops.append(early_stop(state, value, None, "val/dice", "max", 2, 0.02))
        waits.append(state.early_stop_wait)
        state.best, state.best_epoch = value, epoch  # each is better() than the last: the checkpoint's best
    assert waits == [0, 0, 1, 2] and stops[:3] == [None] * 3
    assert stops[3] == ("stopped early after epoch 4: val/dice has not improved by more than 0.02 for 2 epochs "
                        "(train.early_stop)")
    # min mode, min_delta 0: exactly the best-epoch rule (a lower loss breaks a tie)
    state = TrainerState(best=0.3, best_loss=0.5, best_epoch=1, epoch=2)
    assert early_stop(state, 0.3, 0.4, "val/loss", "min", 1, 0.0) is None and state.early_stop_wait == 0
    assert early_stop(state, 0.3, 0.6, "val/loss", "min", 1, 0.0).startswith("stopped early after epoch 2")
    assert early_stop(TrainerState(epoch=1), None, None, "val/x", "max", 1, 0.0) is None  # a metric not logged stops nothing


# val/loss in max mode beyond a min_delta of 1e6: only the first epoch improves, so patience 2 stops after epoch 3
STOP = ["train.epochs=6", "train.monitor=val/loss", "train.monitor_mode=max", "train.scheduler=none",
        "train.early_stop={patience: 2, min_delta: 1.0e6}"]


def test_early_stop_says_why_and_a_resumed_run_stops_at_the_same_epoch(tmp_path, capsys):
    whole = train(tmp_path, "whole", *STOP)
    out = capsys.readouterr().out
    why = "stopped early after epoch 3: val/loss has not improved by more than 1e+06 for 2 epochs"
    assert why in out
    val = [r for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3] and [r["early_stop_wait"] for r in val] == [0, 1, 2]
    assert val[-1]["stopped_early"].startswith(why)
    assert whole.state.stopped_early.startswith(why)

    train(tmp_path, "parts", *STOP, until_epoch=2)  # stopped after epoch 2, its counter at 1 in the checkpoint
    assert read_state(tmp_path / "parts" / "checkpoints" / "last")["early_stop_wait"] == 1
    resumed = train(tmp_path, "parts", *STOP, f"train.resume={tmp_path / 'parts'}")
    val = [r for r in read_metrics(tmp_path / "parts" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3] and resumed.state.stopped_early.startswith(why)
    capsys.readouterr()
    train(tmp_path, "parts", *STOP, f"train.resume={tmp_path / 'parts'}")  # once stopped, it stays stopped
    assert "nothing to train" in capsys.readouterr().out
    state = json.loads((tmp_path / "parts" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 3


@pytest.mark.parametrize("value,message", [
    ("{patience: 0}", r"train\.early_stop\.patience: got 0, expected an integer in \[1, inf\)"),
    ("{patience: 2, min_delta: -1}", r"train\.early_stop\.min_delta: got -1.0, expected a value in \[0, inf\)"),
    ("{wait: 2}", r"unknown key 'train\.early_stop\.wait'"),
])
def test_early_stop_settings_are_checked(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"train.early_stop={value}"])
