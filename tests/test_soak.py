"""Soak: 20 SIGKILLs at random instants (many inside checkpoint writes: one is written after every
step) and 5 SIGTERMs, each followed by a resume; the result equals the uninterrupted run bit for bit."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import checkpoint_candidates, read_weights
from sandbox.tracking.metrics_log import WALL_CLOCK, read_metrics
from tests.conftest import ROOT

TRAIN = [sys.executable, str(ROOT / "sandbox" / "train.py"), "--config", str(ROOT / "configs" / "unet_dice.yaml")]
VOLATILE = WALL_CLOCK  # timings: all else must match bit for bit


def _complete_checkpoints(run_dir):
    try:
        return checkpoint_candidates(run_dir)
    except SandboxError:  # none complete yet
        return []


def _last_step(path):
    try:
        return max((r["step"] for r in read_metrics(path)), default=0)
    except OSError:
        return 0


@pytest.mark.slow
def test_twenty_kills_and_five_terms_resume_bit_identically(tmp_path, tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith(("train.epochs=", "data.num_train="))]
    # 96 steps, so that 25 interruptions (each after >= 1 new step) end well before the last one
    # train.threads=1: with the default (threads follow the free cores) a resumed process may run on another
    # thread count than the straight run (the other xdist worker's load changes), and a conv's float sums in
    # another order differ in the 7th digit: the resume is what is tested bit for bit, not the thread count
    cfg = base + ["train.epochs=3", "data.num_train=128", "train.checkpoint_every=1", "model.dropout=0.1",
                  "train.threads=1"]
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(TRAIN + cfg + ["name=straight"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rng, run_dir = random.Random(7), tmp_path / "killed"
    metrics, signals, codes = run_dir / "metrics.jsonl", [signal.SIGKILL] * 20 + [signal.SIGTERM] * 5, []
    rng.shuffle(signals)
    for i, sig in enumerate(signals):
        resume = ["--resume", str(run_dir)] if i else []
        before = _last_step(metrics)
        proc = subprocess.Popen(TRAIN + cfg + ["name=killed"] + resume, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        # the first interruption waits for the first complete checkpoint too: a run killed before it has
        # nothing to resume (it restarts in place: tests/test_run_stops.py), and on a loaded machine the
        # write can outlast the random delay below
        while proc.poll() is None and time.time() < deadline and (
                _last_step(metrics) <= before or (i == 0 and not _complete_checkpoints(run_dir))):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.06))  # any instant of the next step: compute, log or checkpoint write
        assert proc.poll() is None, f"the run ended before interruption {i + 1}: {proc.stderr.read()[-2000:]}"
        proc.send_signal(sig)
        codes.append((sig, proc.wait(timeout=120)))
    assert [c for s, c in codes if s == signal.SIGTERM] == [143] * 5, codes
    assert all(c == -signal.SIGKILL for s, c in codes if s == signal.SIGKILL), codes
    assert _last_step(metrics) < 96  # interrupted every time before the end
    done = subprocess.run(TRAIN + cfg + ["name=killed", "--resume", str(run_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    strip = [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(tmp_path / "straight/metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(metrics)]
    for which in ("last", "best"):
        a = read_weights(tmp_path / f"straight/checkpoints/{which}/model.safetensors")
        b = read_weights(run_dir / f"checkpoints/{which}/model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), which
