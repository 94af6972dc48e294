"""train.stop_at: a run stops after the first epoch whose metric reaches a target (time-to-target runs).

Runs are a few 32 px steps of a tiny UNet on dancers, on CPU."""
import pytest

from sandbox import build_trainer, load_config
from sandbox.engine.stops import reached, stop_at
from sandbox.errors import ConfigError
from sandbox.runs.checkpoints import read_state
from sandbox.tracking.metrics_log import read_metrics
from sandbox.engine.state import TrainerState

TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.batch_size=4", "model.width=4", "model.depth=2",
        "train.epochs=3", "train.log_every=1", "train.num_images=0", "track.wandb=disabled",
        "train.mixed_precision=no", "train.scheduler=none"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def train(out, name, *extra):
    trainer = build_trainer(load_config(None, [f"out_dir={out}", f"name={name}", *TINY, *extra]))
    trainer.fit()
    return trainer


def val_records(out, name):
    return [r for r in read_metrics(out / name / "metrics.jsonl") if r["split"] == "val"]


def test_reached_is_a_closed_comparison_by_mode_and_never_on_nan():
    assert reached(0.9, 0.9, "max") and reached(0.91, 0.9, "max") and not reached(0.8999, 0.9, "max")
    assert reached(0.01, 0.01, "min") and reached(-0.5, 0.01, "min") and not reached(0.0101, 0.01, "min")
    assert not reached(None, 0.9, "max") and not reached(float("nan"), 0.9, "min")
    assert not reached(float("inf"), 0.9, "max")


def test_stop_at_says_why_and_records_it_in_the_state():
    state = TrainerState(epoch=4)
    assert stop_at(state, 0.85, "val/dice", 0.9, "max") is None and state.stopped_early is None
    why = stop_at(state, 0.9123, "val/dice", 0.9, "max")
    assert why == "stopped after epoch 4: val/dice 0.9123 reached the target >= 0.9 (train.stop_at)"
    assert state.stopped_early == why
    assert stop_at(TrainerState(epoch=2), 0.004, "val/kid_own", 0.01, "min").endswith("reached the target <= 0.01 (train.stop_at)")


def test_a_reachable_target_stops_after_the_first_epoch_and_the_run_stays_stopped(tmp_path, capsys):
    # val/loss (Dice + BCE of a sigmoid output) is finite and below 1e6 after any epoch: reached at epoch 1
    trainer = train(tmp_path, "hit", "train.stop_at={metric: val/loss, value: 1.0e6, mode: min}")
    val = val_records(tmp_path, "hit")
    assert [r["epoch"] for r in val] == [1]
    assert val[0]["stopped_early"].startswith("stopped after epoch 1: val/loss ")
    assert "reached the target <= 1e+06 (train.stop_at)" in capsys.readouterr().out
    assert trainer.state.epoch == 1 and read_state(tmp_path / "hit" / "checkpoints" / "last")["epoch"] == 1
    train(tmp_path, "hit", "train.stop_at={metric: val/loss, value: 1.0e6, mode: min}",
          f"train.resume={tmp_path / 'hit'}")
    assert "nothing to train" in capsys.readouterr().out
    assert [r["epoch"] for r in val_records(tmp_path, "hit")] == [1]


def test_an_unreachable_target_trains_every_epoch(tmp_path):
    # a Dice is at most 1: a target of 1.5 is never reached; the mode defaults to train.monitor_mode (max)
    train(tmp_path, "miss", "train.stop_at={metric: val/dice, value: 1.5}")
    val = val_records(tmp_path, "miss")
    assert [r["epoch"] for r in val] == [1, 2, 3] and not any("stopped_early" in r for r in val)


def test_the_mode_defaults_to_the_monitor_mode(tmp_path):
    # the monitor's mode (min) is the default for the monitored metric: val/loss <= 1e6 holds at epoch 1 (in max
    # mode it would not); a metric other than the monitor must say its mode (test_stop_at_settings_are_checked)
    train(tmp_path, "min", "train.monitor=val/loss", "train.monitor_mode=min",
          "train.stop_at={metric: val/loss, value: 1.0e6}")
    assert [r["epoch"] for r in val_records(tmp_path, "min")] == [1]


def test_a_metric_that_is_never_logged_warns_and_trains_on(tmp_path, caplog):
    train(tmp_path, "absent", "train.epochs=2", "train.stop_at={metric: val/nothing, value: 0.5, mode: max}")
    assert [r["epoch"] for r in val_records(tmp_path, "absent")] == [1, 2]
    assert "train.stop_at.metric=val/nothing is not logged by this trainer" in caplog.text


@pytest.mark.parametrize("value,message", [
    ("{metric: val/dice}", r"train\.stop_at\.value: missing; expected the target of the metric, e\.g\. train\.stop_at=\{metric: val/dice, value: 0\.9\}"),
    ("{metric: dice, value: 0.9}", r"train\.stop_at\.metric: got .?dice.?, expected a logged metric"),
    ("{metric: val/dice, value: 0.9, mode: up}", r"train\.stop_at\.mode"),
    ("{metric: val/dice, target: 0.9}", r"unknown key 'train\.stop_at\.target'"),
    # a metric other than the monitor (val/dice, max) needs its own direction: a loss target would be "reached"
    # at epoch 1 by any loss above it
    ("{metric: val/loss, value: 0.05}", r"train\.stop_at\.mode: missing for val/loss \(not train\.monitor val/dice"),
])
def test_stop_at_settings_are_checked(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"train.stop_at={value}"])
