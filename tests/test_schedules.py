"""Schedules (sized per process), the LR range test and progressive resizing."""
import sys

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.analysis.lr_find import lr_range_test, suggest
from sandbox.tracking.metrics_log import read_metrics
from sandbox.engine.optim import lr_lambda, make_scheduler
from tests.conftest import ROOT


def trainer_for(tiny_overrides, *extra):
    keep = [o for o in tiny_overrides if not o.startswith(("train.epochs=", "data.num_train="))]
    return build_trainer(load_config(ROOT / "configs/unet_dice.yaml", keep + ["data.num_train=16", *extra]))


def _onecycle_logged(max_lr: float, total: int, warmup_frac: float) -> list[float]:
    """torch's own OneCycleLR, read as the loop logs it: after optimizer step k (0-based) the lr for step
    k + 1; after the last step the schedule is not stepped past its end."""
    ref = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([torch.zeros(1)], lr=1), max_lr=max_lr,
                                              total_steps=total, pct_start=warmup_frac)
    expected = []
    for _ in range(total):
        ref.optimizer.step()
        ref.step() if len(expected) < total - 1 else None
        expected.append(ref.get_last_lr()[0])
    return expected


def test_onecycle_peaks_at_the_configured_step(tiny_overrides):
    """The schedule the trainer builds for 5 epochs x 4 steps, stepped as the loop steps it (no training)."""
    trainer = trainer_for(tiny_overrides, "train.epochs=5", "train.warmup_frac=0.4", "train.lr=0.01")
    assert trainer.steps_per_epoch == 4 and trainer.total_steps == 20
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    sched = make_scheduler(opt, "onecycle", 0.01, trainer.total_steps, trainer.steps_per_epoch, warmup_frac=0.4)
    lrs = []
    for step in range(20):
        opt.step()
        sched.step() if step < 19 else None
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx(_onecycle_logged(0.01, 20, 0.4), rel=1e-9)
    # OneCycle runs optimizer step index 0.4 * 20 - 1 = 7 (0-based) at the peak; the lr logged after a
    # step is the one for the next step, so the peak shows at logged index 6
    assert max(lrs) == pytest.approx(0.01) and lrs.index(max(lrs)) == int(0.4 * 20) - 2


def test_the_loop_logs_the_lr_of_each_next_step(tmp_path, tiny_overrides):
    """Through fit(): 2 epochs x 4 steps logged as torch's OneCycleLR steps them (the schedule's shape is
    the test above; with two processes each steps half the batches: test_reliability's 2-process test,
    whose train/lr trajectory must equal the one-process run's step for step)."""
    trainer_for(tiny_overrides, "train.epochs=2", "train.warmup_frac=0.4", "train.lr=0.01",
                "train.num_images=0").fit()
    lrs = [r["train/lr"] for r in read_metrics(tmp_path / "tiny/metrics.jsonl") if r["split"] == "train"]
    assert len(lrs) == 8
    assert lrs[:7] == pytest.approx(_onecycle_logged(0.01, 8, 0.4)[:7], rel=1e-9)


def test_cyclic_triangular2_shape():
    f = lr_lambda("cyclic", total=100, steps_per_epoch=10, warmup_frac=0.1, cycle_epochs=1, step_epochs=3, gamma=0.1)
    warm = 10
    assert f(0) == pytest.approx(0.1) and f(warm - 1) == pytest.approx(1.0)
    assert f(warm) == pytest.approx(1.0)  # first peak right after warm-up
    assert f(warm + 10) == pytest.approx(0.1)  # trough after half a cycle (10 steps)
    assert f(warm + 20) == pytest.approx(0.1 + 0.9 / 2)  # triangular2: the next peak is half as high
    assert f(warm + 40) == pytest.approx(0.1 + 0.9 / 4)
    assert all(0.1 - 1e-9 <= f(s) <= 1 for s in range(warm, 100))


def test_step_and_cosine_shapes():
    step = lr_lambda("step", total=60, steps_per_epoch=10, warmup_frac=0.0, cycle_epochs=1, step_epochs=2, gamma=0.5)
    assert [step(s) for s in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    cos = lr_lambda("cosine", total=100, steps_per_epoch=10, warmup_frac=0.2, cycle_epochs=1, step_epochs=1, gamma=1)
    assert cos(19) == pytest.approx(1.0) and cos(60) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)


def test_plateau_steps_per_epoch_on_the_monitor():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_scheduler(opt, "plateau", 1.0, 100, 10, step_epochs=1, gamma=0.1, mode="max")
    lrs = []
    for value in (0.5, 0.6, 0.6, 0.6):  # patience 1: the second epoch without improvement reduces
        sched.step(value)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1])


def test_plateau_run_end_to_end(tmp_path, tiny_overrides, monkeypatch):
    """Through the loop: the monitor (scripted val/dice) plateaus from epoch 2; with patience 1 the
    lr stays put through epoch 4's evaluation, then epoch 5 trains at lr * gamma."""
    trainer = trainer_for(tiny_overrides, "train.epochs=5", "train.scheduler=plateau", "train.step_epochs=1",
                          "train.gamma=0.5", "train.lr=0.01")
    dice = iter([0.5, 0.6, 0.6, 0.6, 0.6])
    monkeypatch.setattr(trainer, "evaluate", lambda loader: {"val/dice": next(dice), "val/loss": 0.5})
    trainer.fit()
    by_epoch = {}
    for r in read_metrics(tmp_path / "tiny/metrics.jsonl"):
        if r["split"] == "train":
            by_epoch.setdefault(r["epoch"], set()).add(r["train/lr"])
    assert by_epoch == {1: {0.01}, 2: {0.01}, 3: {0.01}, 4: {0.01}, 5: {0.005}}
    assert (tmp_path / "tiny/checkpoints/last/model.safetensors").exists()


def test_lr_finder_suggests_the_steepest_descent_before_the_minimum():
    lrs = [10 ** (-5 + i / 4) for i in range(21)]  # 1e-5 .. 1, 4 per decade
    losses = [2.0] * 6 + [1.9, 1.8, 1.7, 1.6, 1.1, 1.0, 0.9, 0.8, 1.0, 3.0, 1.5, 2.5, 4.0, 6.0, 8.0]
    # steepest descent: 1.6 -> 1.1 from index 9; minimum 0.8 at 13; the drop 3.0 -> 1.5 after it is no descent
    assert suggest(lrs, losses) == (9, 13)
    # the slope is per log lr, not per step: 0.05 over 1.1x is steeper than 0.4 over 10x
    assert suggest([1e-4, 1e-3, 1.1e-3, 1e-2, 1e-1], [1.0, 0.6, 0.55, 0.5, 2.0]) == (1, 3)
    assert suggest([1e-3, 1e-2, 1e-1], [0.5, 0.9, 2.0]) == (0, 0)  # rising from the start
    assert suggest([1e-3, 1e-2, 1e-1], [0.9, 0.7, 0.7]) == (0, 1)  # the first of equal minima


def test_lr_finder_suggests_inside_the_range(tmp_path, tiny_overrides):
    trainer = trainer_for(tiny_overrides, "train.epochs=1", "train.scheduler=none")
    result = lr_range_test(trainer, min_lr=1e-5, max_lr=1.0, steps=24)
    assert len(result["lrs"]) == len(result["losses"]) >= 5
    assert result["lrs"] == sorted(result["lrs"]) and 1e-5 <= result["lrs"][0] <= result["lrs"][-1] <= 1.0
    k, stop = suggest(result["lrs"], result["losses"])  # the test's pick is suggest's on its own curve
    assert (result["suggestion"], result["min_over_10"]) == (result["lrs"][k], result["lrs"][stop] / 10)


def test_lr_finder_says_when_the_loss_never_turned(tmp_path, tiny_overrides, monkeypatch, capsys):
    """A loss still falling at --max-lr: the suggestion (and minimum / 10) come from an incomplete curve."""
    import sandbox.analysis.lr_find
    from tests.conftest import command

    lr_find = command("lr_find")
    lrs = [10 ** (-6 + i / 4) for i in range(12)]
    fake = {"lrs": lrs, "losses": [1 - i / 20 for i in range(12)], "suggestion": lrs[3], "min_over_10": lrs[-1] / 10,
            "stopped_early": False, "still_falling": True}
    monkeypatch.setattr(sandbox.analysis.lr_find, "lr_range_test", lambda *a, **k: fake)
    monkeypatch.setattr(sys, "argv", ["lr_find.py", "--config", str(ROOT / "configs/unet_dice.yaml"),
                                      "--out", str(tmp_path / "lr"), *tiny_overrides])
    lr_find.main()
    assert "the loss was still falling at --max-lr 5.6e-04" in capsys.readouterr().out


def test_progressive_resizing_follows_the_schedule(tmp_path, tiny_overrides):
    trainer = trainer_for(tiny_overrides, "train.epochs=2", "data.size_schedule={0: 16, 1: 32}")
    seen = []
    trainer.unwrapped.register_forward_hook(lambda m, inp, out: seen.append((m.training, inp[0].shape[-1])))
    trainer.fit()
    train_sizes = [s for training, s in seen if training]
    assert train_sizes[:4] == [16] * 4 and train_sizes[4:] == [32] * 4
    val_sizes = sorted({s for training, s in seen if not training})
    assert val_sizes == [16, 32]  # evaluation follows the schedule too


def test_onecycle_with_a_one_step_warmup_trains_instead_of_dividing_by_zero():
    """10 steps at warmup_frac 0.1: torch's OneCycleLR would end its warm-up at step 0.1 * 10 - 1 = 0 and divide
    by it. The warm-up becomes 2 steps: the lr rises from max_lr / 25 (div_factor) to max_lr at step 1, then falls."""
    import torch

    from sandbox.engine.optim import make_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_scheduler(opt, "onecycle", lr=1.0, total=10, steps_per_epoch=10, warmup_frac=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(9):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1.0 / 25) and lrs[1] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))  # annealed after the peak
