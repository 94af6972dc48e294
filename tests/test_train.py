import json
import subprocess
import sys

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.analysis.reports import open_run, run_stats
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import read_weights
from sandbox.tracking.metrics_log import WALL_CLOCK, read_metrics
from tests.conftest import ROOT, run_command


def run(overrides, until_epoch=None):
    cfg = load_config(ROOT / "configs/unet_dice.yaml", overrides)
    trainer = build_trainer(cfg)
    trainer.fit(until_epoch=until_epoch)
    return trainer


@pytest.mark.real_figures  # its figures' file sizes or pixels
def test_two_step_run_writes_every_run_file(tmp_path, tiny_overrides):
    trainer = run(tiny_overrides + ["track.wandb=offline"])
    d = tmp_path / "tiny"
    assert trainer.run.path == d
    assert (d / "config.yaml").exists()
    assert load_config(d / "config.yaml").model.depth == 2  # the resolved config reloads
    records = read_metrics(d / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2]  # 8 images / batch 4 = two steps
    for r in train:
        assert {"epoch", "step", "time", "train/loss", "train/loss/mask/dice", "train/loss/mask/bce", "train/lr"} <= set(r)
    assert len(val) == 1 and {"val/loss", "val/dice", "val/iou", "epoch_time"} <= set(val[0])
    assert 0 <= val[0]["val/dice"] <= 1
    for which in ("last", "best"):
        ck = d / "checkpoints" / which
        assert (ck / "model.safetensors").exists() and (ck / "trainer_state.json").exists() and (ck / "config.yaml").exists()
        assert not (ck / "model.pt").exists()  # the weights once
        assert json.loads((ck / "trainer_state.json").read_text())["step"] == 2
    assert (d / "plots" / "loss.png").stat().st_size > 1000 and (d / "plots" / "metrics.png").exists()
    assert (d / "images" / "val_epoch001.png").stat().st_size > 1000
    assert list((d / "wandb").glob("offline-run-*")), "expected an offline W&B run"
    # plain weights load into a freshly built model
    state = read_weights(d / "checkpoints" / "last" / "model.safetensors")
    trainer.unwrapped.load_state_dict(state)


@pytest.mark.parametrize("every, drawn_after", [(0.0, [1, 2, 3, 4]), (1e9, [1, 4])])
def test_plots_are_redrawn_at_most_every_plot_every_s_and_after_the_last_epoch(tmp_path, tiny_overrides, monkeypatch,
                                                                             every, drawn_after):
    import sandbox.engine.trainer as loop

    drawn = []  # the last epoch in the history each redraw gets
    monkeypatch.setattr(loop, "PLOT_EVERY_S", every)
    monkeypatch.setattr(loop, "plot_curves", lambda records, out: drawn.append(
        max(r["epoch"] for r in records if r["split"] == "val")))
    run(tiny_overrides + ["train.epochs=4", "train.num_images=0"])
    assert drawn == drawn_after  # the first epoch at once, then when due, and the last always


def test_an_empty_wandb_mode_in_the_environment_still_gives_an_offline_run(tmp_path, tiny_overrides, monkeypatch):
    """`export WANDB_MODE=` made wandb refuse to start (its settings reject ''): W&B was lost."""
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run([o for o in tiny_overrides if not o.startswith("track.wandb=")] + ["track.wandb=auto"])
    assert list((tmp_path / "tiny" / "wandb").glob("offline-run-*")), "expected an offline W&B run"


def test_resume_from_last_equals_uninterrupted(tmp_path, tiny_overrides):
    # train.threads=1: threads that follow the free cores may differ between the straight and the resumed run
    # (another xdist worker's load), and so would the float sums; the resume is what is compared bit for bit
    base = [o for o in tiny_overrides if not o.startswith(("name=", "train.epochs="))] + ["train.threads=1"]
    run(base + ["name=straight", "train.epochs=2"])
    run(base + ["name=split", "train.epochs=2"], until_epoch=1)  # as if killed after epoch 1
    resumed = run(base + ["name=ignored", "train.epochs=2", f"train.resume={tmp_path / 'split'}"])
    assert resumed.run.path == tmp_path / "split"  # resume continues the run in place
    a = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    b = [r for r in read_metrics(tmp_path / "split" / "metrics.jsonl")]
    def strip(rs):
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rs]

    assert strip(a) == strip(b)
    wa = read_weights(tmp_path / "straight/checkpoints/last/model.safetensors")
    wb = read_weights(tmp_path / "split/checkpoints/last/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_run_is_never_overwritten(tmp_path, tiny_overrides, tiny_run):
    before = (tmp_path / "tiny" / "metrics.jsonl").read_text()
    with pytest.raises(SandboxError, match=r"already holds a run \(checkpoints/last at step 2\); continue it with: python sandbox/train.py --resume "):
        run(tiny_overrides)
    assert (tmp_path / "tiny" / "metrics.jsonl").read_text() == before


def test_resume_with_other_schedule_is_refused(tmp_path, tiny_overrides, tiny_run):
    with pytest.raises(SandboxError, match=r"different LR schedule \(train.epochs: 1 there, 3 here\)"):
        run([o for o in tiny_overrides if not o.startswith("train.epochs=")]
            + ["train.epochs=3", f"train.resume={tmp_path / 'tiny'}"])


def test_resume_with_other_model_is_refused(tmp_path, tiny_overrides, tiny_run):
    with pytest.raises(SandboxError, match=r"different model \(model.width: 4 there, 8 here\)"):
        run(tiny_overrides + ["model.width=8", f"train.resume={tmp_path / 'tiny'}"])


def test_resume_on_other_data_is_refused(tmp_path, tiny_overrides, tiny_run):
    """More images meant more steps than the restored LR schedule was sized for: the run trained on
    and died at its end ('Tried to step 81 times'); other data is another experiment anyway."""
    with pytest.raises(SandboxError, match=r"trained on other data \(data.num_train: 8 there, 16 here\); resume "
                                           r"with the run's own config: python sandbox/train.py --resume "):
        run(tiny_overrides + ["data.num_train=16", "data.num_workers=1", f"train.resume={tmp_path / 'tiny'}"])


def test_resume_with_other_steps_per_epoch_is_refused(tmp_path, tiny_overrides, tiny_run):
    state = tmp_path / "tiny/checkpoints/last/trainer_state.json"
    saved = json.loads(state.read_text())
    assert saved["steps_per_epoch"] == 2
    state.write_text(json.dumps({**saved, "steps_per_epoch": 1}))  # as if launched on 2 processes
    with pytest.raises(SandboxError, match=r"1 optimizer steps per epoch and process there, 2 here"):
        run(tiny_overrides + [f"train.resume={tmp_path / 'tiny' / 'checkpoints' / 'last'}"])


def test_a_scheduled_run_is_extended_with_scheduler_none(tmp_path, tiny_overrides, tiny_run, capsys):
    """The error above suggests it: the saved scheduler state must not make the checkpoint look corrupt."""
    longer = [o for o in tiny_overrides if not o.startswith("train.epochs=")] + ["train.epochs=2"]
    trainer = run(longer + ["train.scheduler=none", f"train.resume={tmp_path / 'tiny'}"])
    assert trainer.state.epoch == 2
    vals = [r for r in read_metrics(tmp_path / "tiny/metrics.jsonl") if r["split"] == "val"]
    assert [r["epoch"] for r in vals] == [1, 2]
    again = [o for o in longer if not o.startswith("train.epochs=")] + ["train.epochs=3"]
    assert run(again + ["train.scheduler=none", f"train.resume={tmp_path / 'tiny'}"]).state.epoch == 3
    capsys.readouterr()
    run(again + ["train.scheduler=none", f"train.resume={tmp_path / 'tiny'}"])  # finished: says so
    assert "has finished its 3 epochs: nothing to train" in capsys.readouterr().out


def test_cli_resume_uses_the_runs_own_config_and_keeps_its_name(tmp_path, tiny_overrides):
    """`--resume RUN` alone continues RUN with its config.yaml; a resumed run keeps its name even when
    the command line says another (the README form passes configs/unet_dice.yaml, name unet_dice)."""
    base = [o for o in tiny_overrides if not o.startswith("train.epochs=")]
    run(base + ["train.epochs=2"], until_epoch=1)
    res = run_command("train", "--resume", tmp_path / "tiny")
    assert res.code == 0, res.err[-2000:]
    assert "epoch 2/2" in res.out and "epoch 1/2" not in res.out
    cfg = load_config(tmp_path / "tiny" / "config.yaml")
    assert (cfg.name, cfg.data.size, cfg.train.epochs) == ("tiny", 32, 2)
    resumed = run(base + ["name=other", "train.epochs=2", f"train.resume={tmp_path / 'tiny'}"])
    assert resumed.cfg.name == "tiny" and load_config(tmp_path / "tiny" / "config.yaml").name == "tiny"
    res = run_command("train", "train.epochs=2")
    assert res.code != 0 and "--config is required (or --resume RUN" in res.err


def test_an_epoch_shorter_than_log_every_is_still_logged(tmp_path, tiny_overrides):
    """log_every 10 with 2 steps per epoch: each epoch's steps get one train row at its last step
    (they were dropped: a short run's metrics.jsonl and loss plot had no training loss at all)."""
    base = [o for o in tiny_overrides if not o.startswith(("train.epochs=", "train.log_every="))]
    run(base + ["train.epochs=2", "train.log_every=3"])
    train = [r for r in read_metrics(tmp_path / "tiny/metrics.jsonl") if r["split"] == "train"]
    assert [(r["epoch"], r["step"]) for r in train] == [(1, 2), (2, 3), (2, 4)]
    assert all(r["train/loss"] > 0 for r in train)


def test_best_checkpoint_follows_monitor(tmp_path, tiny_overrides):
    trainer = run([o for o in tiny_overrides if not o.startswith("train.epochs=")] + ["train.epochs=3"])
    val = [r for r in read_metrics(tmp_path / "tiny/metrics.jsonl") if r["split"] == "val"]
    # the rule, stated here on its own: highest val/dice; a tie goes to the lower val/loss, then the earlier epoch
    expected = min(val, key=lambda r: (-r["val/dice"], r["val/loss"], r["epoch"]))
    best = json.loads((tmp_path / "tiny/checkpoints/best/trainer_state.json").read_text())
    assert (best["best"], best["best_epoch"]) == (pytest.approx(expected["val/dice"]), expected["epoch"])
    assert (trainer.state.best, trainer.state.best_epoch) == (best["best"], best["best_epoch"])
    assert run_stats(open_run(tmp_path / "tiny"), "val/dice")["best epoch"] == expected["epoch"]  # compare agrees


def test_best_checkpoint_at_a_tie_is_the_lower_val_loss_for_trainer_and_compare(tmp_path, tiny_overrides, monkeypatch):
    """Scripted validation: val/dice ties at 0.7 in epochs 2-4, epoch 3 with the lowest val/loss
    (neither the earliest nor the latest of the tie)."""
    trainer = build_trainer(load_config(ROOT / "configs/unet_dice.yaml", [
        o for o in tiny_overrides if not o.startswith("train.epochs=")] + ["train.epochs=5"]))
    scripted = iter([{"val/dice": 0.5, "val/loss": 0.5}, {"val/dice": 0.7, "val/loss": 0.4},
                     {"val/dice": 0.7, "val/loss": 0.3}, {"val/dice": 0.7, "val/loss": 0.35},
                     {"val/dice": 0.6, "val/loss": 0.2}])
    monkeypatch.setattr(trainer, "evaluate", lambda loader: next(scripted))
    trainer.fit()
    best = json.loads((tmp_path / "tiny/checkpoints/best/trainer_state.json").read_text())
    assert (best["best"], best["best_epoch"], best["best_loss"], best["epoch"]) == (0.7, 3, 0.3, 3)
    stats = run_stats(open_run(tmp_path / "tiny"), "val/dice")
    assert (stats["best val/dice"], stats["best epoch"]) == (0.7, 3)  # earliest-epoch rule: 2, latest: 4


def test_cli_without_accelerate_launch(tmp_path, tiny_overrides):
    """The command file run by a fresh interpreter, as a user types it (the suite's other train.py calls
    run its main() in-process)."""
    res = subprocess.run([sys.executable, "sandbox/train.py", "--config", "configs/unet_dice.yaml", *tiny_overrides],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "epoch 1/1" in res.stdout and "val/dice" in res.stdout
    assert (tmp_path / "tiny" / "checkpoints" / "last" / "model.safetensors").exists()


def test_a_finished_run_says_its_best_and_what_to_run_next(tmp_path, tiny_overrides, monkeypatch, capsys):
    """The last lines of train.py: the run, its wall time, the best monitored value and epoch as
    trainer_state.json records them, and the next commands for that run."""
    import json

    from tests.conftest import command

    monkeypatch.setattr(sys, "argv", ["train.py", "--config", "configs/unet_dice.yaml", *tiny_overrides,
                                      "train.epochs=2"])
    monkeypatch.chdir(ROOT)
    command("train").main()
    out = capsys.readouterr().out.splitlines()
    state = json.loads((tmp_path / "tiny" / "checkpoints" / "last" / "trainer_state.json").read_text())
    done = next(line for line in out if line.startswith("done: "))
    assert done.startswith(f"done: {tmp_path / 'tiny'} in ") and " s; best val/dice " in done
    assert f"val/dice {state['best']:.4f} at epoch {state['best_epoch']} (checkpoints/best)" in done
    after = out[out.index(done) + 1:]
    assert after[0] == "next:" and f"python sandbox/evaluate.py --run {tmp_path / 'tiny'}" in after[1]
