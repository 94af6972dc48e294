"""The one best-epoch rule (sandbox.metrics.selection) and its two users: the trainer's
checkpoints/best (sandbox.engine.state.update_best) and the reports (run_stats, hence compare and sweeps).
A tie at the monitored value goes to the lower val/loss (run_stats took the earliest epoch, so
compare could name another best epoch than checkpoints/best); a NaN val/loss is never best."""
import math
from pathlib import Path

import pytest

from sandbox import build_trainer, load_config
from sandbox.analysis.reports import Run, run_stats
from sandbox.metrics.selection import best_index, better
from sandbox.engine.state import update_best
from tests.conftest import ROOT


def fed(trainer, rows: list[dict]) -> list[bool]:
    """update_best on ``rows`` epoch by epoch (no training): whether each epoch became the best."""
    t = trainer.cfg.train
    return [update_best(trainer.state, {k: v for k, v in row.items() if k != "epoch"}, i, t.monitor, t.monitor_mode)
            for i, row in enumerate(rows)]

NAN = math.nan
# val/dice (and val/rmse) tie in epochs 2-4, epoch 3 with the lowest loss (neither the earliest nor
# the latest of the tie); epoch 5 is better but diverged (NaN loss)
ROWS = [{"epoch": 1, "val/dice": 0.5, "val/loss": 0.5, "val/rmse": 0.30},
        {"epoch": 2, "val/dice": 0.7, "val/loss": 0.4, "val/rmse": 0.20},
        {"epoch": 3, "val/dice": 0.7, "val/loss": 0.3, "val/rmse": 0.20},
        {"epoch": 4, "val/dice": 0.7, "val/loss": 0.35, "val/rmse": 0.20},
        {"epoch": 5, "val/dice": 0.9, "val/loss": NAN, "val/rmse": 0.10},
        {"epoch": 6, "val/dice": 0.6, "val/loss": 0.1, "val/rmse": 0.25}]


def test_better_higher_wins_ties_go_to_the_lower_loss():
    assert better(0.7, 0.3, None, None)  # the first finite epoch is best
    assert better(0.8, 9.0, 0.7, 0.1) and not better(0.6, 0.0, 0.7, 0.1)
    assert better(0.7, 0.3, 0.7, 0.4) and not better(0.7, 0.4, 0.7, 0.3) and not better(0.7, 0.3, 0.7, 0.3)
    assert better(0.7, 0.1, 0.7, None) and not better(0.7, None, 0.7, None)  # no loss counts as +inf
    assert not better(0.7, 0.1, 0.7, 0.0)  # a best loss of 0 is a loss, not "none" (was `best_loss or inf`)


def test_better_never_takes_a_nan_loss_or_a_non_finite_value():
    assert not better(0.9, NAN, None, None) and not better(0.9, NAN, 0.1, 0.1)
    assert not better(NAN, 0.1, None, None) and not better(math.inf, 0.1, 0.5, 0.5) and not better(None, 0.1, None, None)


def test_better_in_min_mode_lower_wins_and_ties_still_go_to_the_lower_loss():
    assert better(0.1, 0.9, 0.2, 0.1, "min") and not better(0.3, 0.0, 0.2, 0.1, "min")
    assert better(0.2, 0.05, 0.2, 0.1, "min") and not better(0.2, 0.2, 0.2, 0.1, "min")
    with pytest.raises(ValueError, match="mode: got 'best'"):
        better(0.1, 0.1, 0.2, 0.2, "best")


def test_best_index_over_rows():
    assert best_index(ROWS, "val/dice") == 2  # epoch 3: the tie's lower loss, epoch 4 diverged
    assert best_index(ROWS, "val/rmse", "min") == 2  # 0.10 has a NaN loss; 0.20 tie -> lower loss
    assert best_index(ROWS, "val/iou") is None and best_index([{"val/dice": 0.5, "val/loss": NAN}], "val/dice") is None


def _run(rows, *overrides):
    """A Run as open_run reads it back, built from rows (seconds since start: 10 per epoch)."""
    rows = [{"time": 10.0 * r["epoch"], "epoch_time": 10.0, **r} for r in rows]
    return Run(Path("nowhere"), load_config(ROOT / "configs/unet_dice.yaml", list(overrides)), "r", rows)


def test_run_stats_names_the_trainers_best_epoch():
    stats = run_stats(_run(ROWS), "val/dice")
    assert (stats["best val/dice"], stats["best epoch"]) == (0.7, 3)  # the earliest-epoch rule said 2
    stats = run_stats(_run(ROWS), "val/rmse")  # lower is better by name
    assert (stats["best val/rmse"], stats["best epoch"]) == (0.2, 3)
    stats = run_stats(_run(ROWS), "val/loss")  # min by name; NaN is never best
    assert (stats["best val/loss"], stats["best epoch"]) == (0.1, 6)


def test_run_stats_follows_the_runs_monitor_mode_for_its_monitor():
    rows = [{"epoch": 1, "val/score": 0.2, "val/loss": 0.5}, {"epoch": 2, "val/score": 0.4, "val/loss": 0.4}]
    assert run_stats(_run(rows), "val/score")["best epoch"] == 2  # by name: higher is better
    minimised = _run(rows, "train.monitor=val/score", "train.monitor_mode=min")
    assert run_stats(minimised, "val/score")["best epoch"] == 1  # as that run's checkpoints/best chose


@pytest.mark.parametrize("mode,metric", [("max", "val/dice"), ("min", "val/rmse")])
def test_the_trainers_update_best_agrees_with_run_stats(tmp_path, tiny_overrides, mode, metric):
    """update_best fed ROWS epoch by epoch keeps the epoch run_stats names (no training)."""
    trainer = build_trainer(load_config(ROOT / "configs/unet_dice.yaml", tiny_overrides + [
        f"train.monitor={metric}", f"train.monitor_mode={mode}"]))
    saved = fed(trainer, ROWS)
    assert saved == [True, True, True, False, False, False]
    assert trainer.state.best_epoch == 3 == run_stats(_run(ROWS, f"train.monitor={metric}",
                                                              f"train.monitor_mode={mode}"), metric)["best epoch"]
    assert trainer.state.best == ROWS[2][metric] and trainer.state.best_loss == 0.3


# a GAN's validation: sample metrics only, no val/loss (its monitor in a study that selects on val/loss);
# epoch 3 logged nothing (train.fid_samples: 0 gives a GAN an empty validation)
GAN_ROWS = [{"epoch": 1, "val/fid_own": 3.0}, {"epoch": 2, "val/fid_own": 1.0}, {"epoch": 3}]


def test_a_monitor_never_logged_selects_the_last_epoch_as_checkpoints_best_does(tmp_path, tiny_overrides):
    """The trainer keeps the last epoch as checkpoints/best when its monitor is never logged; the reports
    (run_stats, a study's selected epoch) name that epoch too, not none, and not the best fid_own."""
    assert best_index(GAN_ROWS, "val/loss", "min", monitor=True) == 2
    assert best_index(GAN_ROWS, "val/loss", "min") is None  # not the monitor: a metric the run lacks
    stats = run_stats(_run(GAN_ROWS, "train.monitor=val/loss", "train.monitor_mode=min"), "val/loss")
    assert stats["best epoch"] == 3 and math.isnan(stats["best val/loss"])
    trainer = build_trainer(load_config(ROOT / "configs/unet_dice.yaml", tiny_overrides + [
        "train.monitor=val/loss", "train.monitor_mode=min"]))
    saved = fed(trainer, GAN_ROWS)
    assert saved == [True, True, True] and trainer.state.best is None


def test_once_the_monitor_was_logged_an_epoch_without_it_is_not_best(tmp_path, tiny_overrides):
    # epoch 2 logs the monitor; epoch 3 lacks it: checkpoints/best stays at epoch 2 (it used to take
    # every epoch without the value)
    rows = [{"epoch": 1}, {"epoch": 2, "val/dice": 0.5, "val/loss": 0.4}, {"epoch": 3}]
    assert best_index(rows, "val/dice", "max", monitor=True) == 1
    trainer = build_trainer(load_config(ROOT / "configs/unet_dice.yaml", tiny_overrides))
    saved = fed(trainer, rows)
    assert saved == [True, True, False] and trainer.state.best_epoch == 2
