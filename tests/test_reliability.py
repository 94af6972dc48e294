"""Reliability: exact resume after SIGKILL, torn/corrupt checkpoints, NaN guard, 2 processes."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import read_weights
from sandbox.tracking.metrics_log import WALL_CLOCK, read_metrics
from tests.conftest import ROOT

TRAIN = [sys.executable, str(ROOT / "sandbox" / "train.py"), "--config", str(ROOT / "configs" / "unet_dice.yaml")]
VOLATILE = WALL_CLOCK  # timings: all else must match bit for bit


def strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def run(overrides, until_epoch=None):
    trainer = build_trainer(load_config(ROOT / "configs/unet_dice.yaml", overrides))
    trainer.fit(until_epoch=until_epoch)
    return trainer


@pytest.fixture
def killable(tmp_path, tiny_overrides):
    """A tiny run with a checkpoint after every step: 3 epochs x 4 steps, dropout on (RNG matters)."""
    base = [o for o in tiny_overrides if not o.startswith(("train.epochs=", "data.num_train="))]
    return base + ["train.epochs=3", "data.num_train=16", "train.checkpoint_every=1", "model.dropout=0.1"]


def _last_step(metrics_path):
    try:
        lines = metrics_path.read_text().splitlines()
        return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path, killable):
    env = dict(os.environ, PYTHONHASHSEED="0")
    # the reference runs the same way as the killed one (a fresh process): oneDNN may pick
    # other kernels inside a long-lived pytest process, which is not what is under test
    done = subprocess.run(TRAIN + killable + ["name=straight"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    rng = random.Random(1234)
    run_dir = tmp_path / "killed"
    kills = []
    for attempt in range(3):
        resume = [f"train.resume={run_dir}"] if attempt else []
        target = _last_step(run_dir / "metrics.jsonl") + rng.randint(1, 3)
        proc = subprocess.Popen(TRAIN + killable + ["name=killed"] + resume, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while proc.poll() is None and _last_step(run_dir / "metrics.jsonl") < target and time.time() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(_last_step(run_dir / "metrics.jsonl"))
    assert kills == sorted(kills) and kills[-1] < 12, kills  # killed mid-run each time, never restarted at 0
    done = subprocess.run(TRAIN + killable + ["name=killed", f"train.resume={run_dir}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    a = strip(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    b = strip(read_metrics(run_dir / "metrics.jsonl"))
    assert a == b  # every logged number, bit for bit
    wa = read_weights(tmp_path / "straight/checkpoints/last/model.safetensors")
    wb = read_weights(run_dir / "checkpoints/last/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_failure_during_checkpoint_swap_falls_back(tmp_path, tiny_overrides, monkeypatch):
    base = [o for o in tiny_overrides if not o.startswith("train.epochs=")] + ["train.epochs=2"]
    run(base, until_epoch=1)
    import sandbox.runs.checkpoints as rundir

    real_replace = os.replace
    calls = {"n": 0}

    def torn_replace(src, dst):  # the save of epoch 2 dies after moving last -> last.old
        calls["n"] += 1
        if str(dst).endswith("last.old"):
            real_replace(src, dst)
            raise KeyboardInterrupt("killed mid-swap")
        return real_replace(src, dst)

    monkeypatch.setattr(rundir.os, "replace", torn_replace)
    with pytest.raises(KeyboardInterrupt):
        run(base + [f"train.resume={tmp_path / 'tiny'}"])
    monkeypatch.setattr(rundir.os, "replace", real_replace)
    ck = tmp_path / "tiny" / "checkpoints"
    assert not (ck / "last").exists() and (ck / "last.old").exists()
    resumed = run(base + [f"train.resume={tmp_path / 'tiny'}"])  # falls back to last.old (epoch 1)
    vals = [r for r in read_metrics(tmp_path / "tiny" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["epoch"] for r in vals] == [1, 2] and resumed.state.epoch == 2
    assert (ck / "last").exists() and not (ck / "last.old").exists()


def test_corrupt_last_falls_back_to_an_older_checkpoint(tmp_path, tiny_overrides, caplog):
    base = [o for o in tiny_overrides if not o.startswith("train.epochs=")] + ["train.epochs=3", "train.keep_last_n=2"]
    run(base, until_epoch=2)
    ck = tmp_path / "tiny" / "checkpoints"
    assert sorted(p.name for p in ck.glob("epoch_*")) == ["epoch_001", "epoch_002"]
    weights = next((ck / "last").glob("model*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a dying disk
    trainer = build_trainer(load_config(ROOT / "configs/unet_dice.yaml", base + [f"train.resume={tmp_path / 'tiny'}"]))
    assert trainer.state.epoch == 2  # epoch_002 holds the same state as the torn last
    assert any("could not be loaded" in r.message for r in caplog.records)


def test_resume_of_a_run_without_checkpoints_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SandboxError, match="has no complete checkpoint"):
        from sandbox.runs.checkpoints import find_checkpoint
        find_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_guard(tmp_path, tiny_overrides, policy, monkeypatch):
    from sandbox.losses import DiceLoss

    real = DiceLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, pred, target):  # the 2nd training batch blows up
        calls["n"] += 1
        out = real(self, pred, target)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(DiceLoss, "forward", sometimes_nan)
    overrides = tiny_overrides + [f"train.nonfinite={policy}"]
    if policy == "stop":
        with pytest.raises(SandboxError, match=r"non-finite loss at epoch 1, step 2 \(mask/dice=nan\)"):
            run(overrides)
        assert not (tmp_path / "tiny" / "checkpoints" / "best").exists()  # nothing non-finite became best
    else:
        trainer = run(overrides)
        assert trainer.state.skipped == 1
        val = [r for r in read_metrics(tmp_path / "tiny" / "metrics.jsonl") if r["split"] == "val"][0]
        assert val["skipped_batches"] == 1
        w = read_weights(tmp_path / "tiny/checkpoints/best/model.safetensors")
        assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


def free_port() -> int:
    """A port nobody listens on now (a fixed one can be held by another job or in TIME_WAIT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What a lost race for a port or a slow rendezvous looks like: not the code under test.
LAUNCH_FLAKES = ("Address already in use", "EADDRINUSE", "Connection reset by peer", "Connection refused",
                 "Socket Timeout", "timed out", "DistNetworkError")


def launch_two(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """``accelerate launch`` of two gloo processes on CPU with a fresh port; launched once more (on
    another port) if the first attempt died of a rendezvous or socket problem."""
    for attempt in (1, 2):
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode == 0 or attempt == 2 or not any(f in done.stderr for f in LAUNCH_FLAKES):
            return done
        print(f"launch attempt 1 died of a rendezvous problem, retrying:\n{done.stderr[-800:]}")
    return done


def _ddp_common(tiny_overrides):
    """GroupNorm: BatchNorm statistics are per process on CPU, where SyncBatchNorm does not exist."""
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not on PATH")
    common = [o for o in tiny_overrides if not o.startswith(("data.batch_size=", "train.epochs=", "data.num_train="))]
    return common + ["model.norm=group", "model.width=8", "data.num_train=16", "train.epochs=2", "train.threads=1"]


# fid_own, diversity and the latent probe of a barely trained tiny model are ill-conditioned (sqrtm of
# an 8-sample covariance, distances between near-identical samples, ridge regression on 8 codes): they
# amplify the last-bit weight differences of another batch split to ~1e-4 relative
LOOSE = ("val/fid_own", "val/diversity", "val/probe_r2_linear", "val/probe_r2_kernel", "val/kid_own")


def _assert_same_metrics(one_dir, two_dir):
    one, two = strip(read_metrics(one_dir / "metrics.jsonl")), strip(read_metrics(two_dir / "metrics.jsonl"))
    assert [(r["split"], r["step"]) for r in one] == [(r["split"], r["step"]) for r in two]
    for a, b in zip(one, two):
        for k, v in a.items():
            if isinstance(v, float):
                tol = 1e-3 if k in LOOSE else 1e-5
                assert b[k] == pytest.approx(v, abs=tol, rel=tol), (k, a["step"])


GENERATIVE_OVERRIDES = ["data.name=attractors", "loss={image: {mse: 1.0}}", "model.latent_dim=4",
                        "train.monitor_mode=min", "train.fid_samples=8", "train.probe_samples=8",
                        "data.num_val=8"]  # a batch of 4 per process: each sees different validation images
# Adam's first steps are lr * sign(g): near-zero gradients (the discriminators', the VAE's KL on
# logvar) take the sign of their last-bit rounding, which differs with the batch split (measured:
# GAN d_fake 0.403 vs 0.410 after two steps, VAE KL 1.4e-4 relative after three). SGD's update is
# linear in the gradient, so a wrong average (a sum, one process's) still shows.
LINEAR_STEPS = ["train.optimizer=sgd", "train.lr=0.01"]
KIND_OVERRIDES = {"segmentation": [],
                  "autoencoder": ["model.name=ae", "train.monitor=val/loss", *GENERATIVE_OVERRIDES],
                  "vae": ["model.name=vae", "train.monitor=val/loss", *GENERATIVE_OVERRIDES, *LINEAR_STEPS],
                  "gan": ["model.name=dcgan", "train.monitor=val/fid_own", *GENERATIVE_OVERRIDES, *LINEAR_STEPS],
                  "aae": ["model.name=aae", "train.monitor=val/loss", *GENERATIVE_OVERRIDES, *LINEAR_STEPS],
                  # ddpm/flow: eps and t drawn for the global batch and sliced per process, as the VAE's noise
                  "denoising": ["model.name=flow", "train.monitor=val/loss", "train.monitor_mode=min",
                                "data.name=attractors", "data.num_val=8", "train.fid_samples=8",
                                "model.sample_steps=2", *LINEAR_STEPS]}


@pytest.mark.multiproc
@pytest.mark.parametrize("kind", KIND_OVERRIDES)
def test_two_processes_match_one_process(tmp_path, tiny_overrides, kind):
    """gloo on CPU: 2 processes x batch 4 == 1 process x batch 8, for the supervised trainer (DDP), the
    generative one (DDP; its fid_own and latent probe gather features from both processes; the VAE's
    reparameterisation noise and validation ELBO samples are sliced per process) and the
    GAN and AAE, which average their optimizers' gradients themselves and slice the global batch's
    noise per process."""
    common = _ddp_common(tiny_overrides) + KIND_OVERRIDES[kind]
    run(common + ["name=one", "data.batch_size=8"])
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    done = launch_two([*TRAIN[1:], *common, "name=two", "data.batch_size=4"], env)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    assert "x2 processes" in done.stdout
    _assert_same_metrics(tmp_path / "one", tmp_path / "two")


@pytest.mark.multiproc
@pytest.mark.parametrize("model", ["dcgan", "aae"])
def test_trainers_without_ddp_keep_their_processes_in_sync(tmp_path, tiny_overrides, model):
    """GAN and AAE with BatchNorm (statistics differ per process) on 2 gloo processes: the weights are
    broadcast at start, gradients averaged (a mean, not a sum), noise sliced from the global batch's
    draw, running statistics averaged, every process ends with the same weights and buffers (also
    in the checkpoint), and a drift is caught."""
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not on PATH")
    base = [o for o in tiny_overrides if not o.startswith(("data.num_train=", "data.num_val="))]
    overrides = base + [f"model.name={model}", "data.name=attractors", "loss={image: {mse: 1.0}}",
                        "model.latent_dim=4", "model.norm=batch", "train.monitor=val/fid_own",
                        "train.monitor_mode=min", "train.fid_samples=8", "train.probe_samples=8",
                        "data.num_train=16", "data.num_val=8", "train.threads=1"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = launch_two([str(ROOT / "tests" / "two_process_worker.py"), str(tmp_path), *overrides], env)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["ddp"] is False
    assert r0["mean"] == r1["mean"] == [1.5] * 3
    assert (r0["draw"], r1["draw"]) == ([0, 1], [2, 3])
    assert r0["first"] == r1["first"]  # process 1's weights were changed before the trainer broadcast process 0's
    assert r0["running_mean"] == r1["running_mean"] == [1.5]
    for r in (r0, r1):
        assert "after epoch 1 the 2 processes hold different weights" in r["drift"], r["drift"]
    assert r0["params"] == r1["params"] and r0["buffers"] == r1["buffers"]
    stats = {k: v for k, v in r0["buffers"].items() if k.endswith("running_mean")}
    assert stats and any(v != 0 for v in stats.values())  # BatchNorm statistics exist and were averaged
    saved = read_weights(tmp_path / "tiny" / "checkpoints" / "last" / "model.safetensors")  # DDP prefixes dropped
    assert {k: float(saved[k].double().sum()) for k in stats} == pytest.approx(stats)


FAKE_SRUN = """#!/bin/bash
# stands in for Slurm's srun: run the command once per node, here, as each node's task would
while [[ $1 == --* ]]; do shift; done
pids=()
for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n SLURM_PROCID=$n "$@" > "$FAKE_LOGS/node$n.log" 2>&1 & pids+=($!); done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc
"""


@pytest.mark.multiproc
def test_slurm_example_two_nodes_match_one_process(tmp_path, tiny_overrides):
    """examples/slurm/train.sbatch on two "nodes" of this machine (srun and scontrol faked, CPU,
    gloo, one process each): the multi-node launch reproduces the one-process run, and only the
    main process writes the run directory while every process adds its RNG state."""
    common = _ddp_common(tiny_overrides)
    run(common + ["name=one", "data.batch_size=8"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_LOGS=str(tmp_path),
               SLURM_NNODES="2", SLURM_JOB_NODELIST="fake[1-2]", SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(ROOT),
               SANDBOX_CPU="1", MIXED_PRECISION="no", OMP_NUM_THREADS="1", MASTER_PORT=str(port := free_port()))
    cmd = ["bash", str(ROOT / "examples/slurm/train.sbatch"), str(ROOT / "configs/unet_dice.yaml"),
           *common, "name=two", "data.batch_size=4"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    logs = {n: (tmp_path / f"node{n}.log").read_text() for n in (0, 1)}
    assert done.returncode == 0, done.stdout + logs[0][-2000:] + logs[1][-2000:]
    assert f"2 node(s) x 1 process(es), rendezvous 127.0.0.1:{port}" in done.stdout
    assert "cpu x2 processes" in logs[0]
    _assert_same_metrics(tmp_path / "one", tmp_path / "two")
    last = tmp_path / "two/checkpoints/last"
    assert (last / "random_states_0.pkl").exists() and (last / "random_states_1.pkl").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["bin", "one", "two"]


@pytest.mark.parametrize("env,message", [
    ({}, "no GPUs found (no --gres=gpu:N, no nvidia-smi): SANDBOX_CPU=1 for CPU nodes"),
    ({"SANDBOX_CPU": "1", "PROCS_PER_NODE": "0"}, "processes per node must be a positive integer, got '0'"),
    ({"SLURM_NNODES": None}, "not inside a Slurm allocation"),
])
def test_slurm_example_stops_with_a_reason(env, message):
    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi present: GPUs are found")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SANDBOX_", "PROCS_PER_NODE"))}
    full = {**base, "SLURM_NNODES": "2", **env}
    done = subprocess.run(["bash", str(ROOT / "examples/slurm/train.sbatch"), "configs/unet_dice.yaml"],
                          env={k: v for k, v in full.items() if v is not None}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def _two_machines(tmp_path, common, out_dirs, timeout=120):
    """Two "machines" of one process each on this host (gloo): their outputs and return codes."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    procs, port = [], str(free_port())
    for rank in (0, 1):
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
               "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", port,
               "--mixed_precision", "no", "--dynamo_backend", "no", *TRAIN[1:], *common, "name=two",
               f"out_dir={out_dirs[rank]}"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return outs, [p.returncode for p in procs]


@pytest.mark.multiproc
def test_a_run_directory_other_machines_cannot_see_is_refused(tmp_path, tiny_overrides):
    """Machine 1 looks in another out_dir (as a node-local disk would be): both stop at start-up
    naming the process, and the main process leaves no empty run behind."""
    outs, codes = _two_machines(tmp_path, _ddp_common(tiny_overrides), [tmp_path / "machine0", tmp_path / "machine1"])
    assert all(c != 0 for c in codes), outs
    assert "is not shared: process 1 on" in outs[1] and "(of 2)" in outs[1]
    assert "set out_dir= to a filesystem all of them mount" in outs[0] + outs[1]
    assert not (tmp_path / "machine0" / "two").exists()


@pytest.mark.multiproc
def test_an_error_on_the_main_process_alone_stops_every_machine(tmp_path, tiny_overrides):
    """The run directory exists (only the main process creates it, so only it can find out): the
    other machine gets the same message at once instead of waiting in a collective for ever."""
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "config.yaml").write_text("seed: 0\n")
    t0 = time.time()
    outs, codes = _two_machines(tmp_path, _ddp_common(tiny_overrides), [tmp_path, tmp_path])
    assert all(c != 0 for c in codes), outs
    assert all("already holds a run" in out for out in outs), outs
    assert time.time() - t0 < 100


@pytest.mark.multiproc
def test_a_data_error_on_one_of_two_processes_is_one_line(tmp_path, tiny_overrides):
    """A broken image read by one process: that process prints the one line naming the file; its peer,
    whose collective fails because it left, exits without a traceback; the launcher's own failure report
    (printed by accelerate/torchrun after the processes, not ours to silence) names that line as the root
    cause instead of "error_file: <N/A>"."""
    import numpy as np
    from PIL import Image

    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not on PATH")
    data, rng = tmp_path / "data", np.random.default_rng(0)
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    for i in range(24):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(data / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(data / "masks" / f"{i:03d}.png")
    (data / "images" / "001.png").write_bytes(b"not a png")
    splits = tmp_path / "splits"
    splits.mkdir()
    for name, stems in (("train", range(16)), ("val", range(16, 20)), ("test", range(20, 24))):
        rows = [f"{i:03d},images/{i:03d}.png,masks/{i:03d}.png" for i in stems]
        (splits / f"{name}.csv").write_text("stem,image,mask\n" + "\n".join(rows) + "\n")
    base = [o for o in tiny_overrides if not o.startswith(("data.batch_size=", "data.num_train=", "data.num_val="))]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = launch_two([str(ROOT / "sandbox" / "train.py"), "--config", str(ROOT / "configs/unet_dice.yaml"), *base,
                       "data.name=folder", f"data.root={data}", f"data.splits={splits}", "data.batch_size=2",
                       "model.norm=group", "model.width=8", "train.threads=1"], env)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    ours = [line for line in text.splitlines() if "error: " in line and "001.png" in line]
    assert len(ours) == 1 and "unreadable or truncated image" in ours[0], text[-3000:]
    assert "[rank0]" not in text and "[rank1]" not in text, text[-3000:]  # no process's traceback
    root = text.split("Root Cause", 1)[-1]
    assert "001.png: unreadable or truncated image" in root, text[-3000:]


def test_only_a_lost_peer_of_a_multi_process_run_exits_quietly(monkeypatch):
    """The quiet exit is for a collective failing because another process left, nothing else: a bug
    in one process (or any error in a one-process run) keeps its traceback."""
    from sandbox.cli import lost_peer

    gone = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:17820")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lost_peer(gone)
    assert lost_peer(type("DistNetworkError", (RuntimeError,), {})("store timeout"))
    assert not lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not lost_peer(gone)
