"""No dead ends when a run stops: restart in place after a failed start, true stop messages,
SIGTERM/SIGINT save and say how to resume, a diverging loss is noticed."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from sandbox.tracking.metrics_log import read_metrics
from tests.conftest import ROOT, command

CONFIG = str(ROOT / "configs" / "unet_dice.yaml")
VOLATILE = ("time", "epoch_time", "images_per_s")


def strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def run(overrides, until_epoch=None):
    trainer = build_trainer(load_config(CONFIG, overrides))
    trainer.fit(until_epoch=until_epoch)
    return trainer


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """``python sandbox/train.py *args`` in this process: (exit status, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["sandbox/train.py", *args])
    try:
        command("train").main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


def nan_at(m, step: int):
    """The training loss of optimizer step ``step`` (1-based, batch 4 = one step) becomes NaN."""
    from sandbox.losses import DiceLoss

    real, calls = DiceLoss.forward, {"n": 0}

    def forward(self, pred, target):
        out = real(self, pred, target)
        if torch.is_grad_enabled():  # training only, validation runs without grad
            calls["n"] += 1
            if calls["n"] == step:
                return out * float("nan")
        return out

    m.setattr(DiceLoss, "forward", forward)


# ----------------------------------------------------------------------------- restart in place

def test_a_start_that_failed_before_its_first_checkpoint_restarts_in_place(tmp_path, tiny_overrides,
                                                                          monkeypatch, capsys):
    args = ["--config", CONFIG, *tiny_overrides]
    run_dir = tmp_path / "tiny"
    with monkeypatch.context() as m:
        nan_at(m, 2)
        code, out = cli(monkeypatch, capsys, *args)
    assert code == 2 and "non-finite loss" in out
    (run_dir / "checkpoints" / ".last.tmp").mkdir()  # and a first save killed half way
    (run_dir / "checkpoints" / ".last.tmp" / "model.pt").write_bytes(b"torn")
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()

    code, out = cli(monkeypatch, capsys, *args)  # the same command again
    assert code == 2
    assert "--restart" in out and "resume" not in out.replace("nothing to resume", ""), out
    code, out = cli(monkeypatch, capsys, "--resume", str(run_dir))
    assert code == 2 and f"--config {run_dir / 'config.yaml'} --restart" in out, out

    code, out = cli(monkeypatch, capsys, *args, "--restart")
    assert code == 0, out
    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]  # one run's records, not the failed start's too
    assert not (run_dir / "checkpoints" / ".last.tmp").exists()
    assert json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())["step"] == 2


def test_restart_is_refused_where_a_checkpoint_exists(tmp_path, tiny_overrides, monkeypatch, capsys):
    args = ["--config", CONFIG, *tiny_overrides]
    run_dir = tmp_path / "tiny"
    assert cli(monkeypatch, capsys, *args)[0] == 0
    before = (run_dir / "metrics.jsonl").read_text()

    code, out = cli(monkeypatch, capsys, *args)
    assert code == 2 and f"python sandbox/train.py --resume {run_dir}" in out and "--restart" not in out, out
    code, out = cli(monkeypatch, capsys, *args, "--restart")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert f"python sandbox/train.py --resume {run_dir}" in out
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert (run_dir / "checkpoints" / "last" / "model.pt").exists()


# ----------------------------------------------------------------------------- true stop messages

def test_nonfinite_stop_before_any_checkpoint_says_so(tmp_path, tiny_overrides, monkeypatch):
    nan_at(monkeypatch, 2)
    with pytest.raises(SandboxError) as exc:
        run(tiny_overrides)
    msg = str(exc.value)
    assert "non-finite loss at epoch 1, step 2" in msg
    assert "no checkpoint was written yet" in msg and "last good model" not in msg, msg
    assert "--restart" in msg


def test_nonfinite_stop_after_epoch_1_names_what_last_and_best_hold(tmp_path, tiny_overrides, monkeypatch):
    nan_at(monkeypatch, 3)  # the first step of epoch 2
    base = [o for o in tiny_overrides if not o.startswith("train.epochs=")] + ["train.epochs=2"]
    with pytest.raises(SandboxError) as exc:
        run(base)
    msg = str(exc.value)
    assert "non-finite loss at epoch 2, step 3" in msg
    assert "checkpoints/last holds epoch 1 (step 2), best epoch 1 (step 2)" in msg, msg
    assert "nothing was saved at or after that step" in msg and "no checkpoint" not in msg


def test_nonfinite_stop_says_when_last_holds_diverged_weights(tmp_path, tiny_overrides, monkeypatch):
    from sandbox.losses import DiceLoss

    real, calls = DiceLoss.forward, {"n": 0}

    def forward(self, pred, target):  # step 2 (the end of epoch 1) poisons the weights with NaN gradients
        out = real(self, pred, target)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 2:
                return out + _poison(pred)
        return out

    monkeypatch.setattr(DiceLoss, "forward", forward)
    base = [o for o in tiny_overrides if not o.startswith("train.epochs=")] + ["train.epochs=2"]
    with pytest.raises(SandboxError) as exc:
        run(base)
    msg = str(exc.value)
    assert "non-finite loss at epoch 2, step 3" in msg
    assert "checkpoints/last holds epoch 1 (step 2) with non-finite weights" in msg, msg
    assert "no best" in msg and "last good model" not in msg


def _poison(x: torch.Tensor) -> torch.Tensor:
    """Adds 0 to the loss, NaN to the gradient of ``x``."""
    class Poison(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.shape = t.shape
            return t.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return torch.full(ctx.shape, float("nan"))

    return Poison.apply(x)
