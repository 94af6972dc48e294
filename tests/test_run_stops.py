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
from sandbox.tracking.metrics_log import WALL_CLOCK, read_metrics
from tests.conftest import ROOT
from tests.conftest import train_cli as cli

CONFIG = str(ROOT / "configs" / "unet_dice.yaml")
VOLATILE = WALL_CLOCK  # timings: all else must match bit for bit


def strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def run(overrides, until_epoch=None):
    trainer = build_trainer(load_config(CONFIG, overrides))
    trainer.fit(until_epoch=until_epoch)
    return trainer


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
    (run_dir / "checkpoints" / ".last.tmp" / "model.safetensors").write_bytes(b"torn")
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
    assert (run_dir / "checkpoints" / "last" / "model.safetensors").exists()


def test_library_callers_get_the_way_on_that_applies(tmp_path, tiny_overrides, monkeypatch):
    """build_trainer on an existing run (no command line involved) names the true way on: a restart
    in place where no checkpoint was ever completed, the resume command where one was."""
    run_dir = tmp_path / "tiny"
    with monkeypatch.context() as m:
        nan_at(m, 2)
        with pytest.raises(SandboxError):
            run(tiny_overrides)
    with pytest.raises(SandboxError) as exc:
        run(tiny_overrides)
    msg = str(exc.value)
    assert f"python sandbox/train.py --config {run_dir / 'config.yaml'} --restart" in msg, msg
    assert "train.resume" not in msg and "--resume" not in msg, msg
    shutil.rmtree(run_dir)
    run(tiny_overrides)
    with pytest.raises(SandboxError) as exc:
        run(tiny_overrides)
    msg = str(exc.value)
    assert f"python sandbox/train.py --resume {run_dir}" in msg and "--restart" not in msg, msg


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


# ----------------------------------------------------------------------------- divergence

def _diverging(tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith(("train.lr=", "data.num_train="))]
    return base + ["train.lr=1e6", "data.num_train=16"]  # 4 steps: the loss explodes, no NaN yet


def test_a_diverging_loss_warns_once(tmp_path, tiny_overrides, caplog):
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        run(_diverging(tiny_overrides))
    warned = [r.getMessage() for r in caplog.records if "diverg" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "step" in warned[0] and "minimum" in warned[0]
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "tiny" / "metrics.jsonl") if r["split"] == "train"]
    assert max(losses) > 1000 * min(losses)  # the case under test


def test_a_diverging_loss_stops_the_run_with_diverge_action_stop(tmp_path, tiny_overrides, monkeypatch, capsys):
    code, out = cli(monkeypatch, capsys, "--config", CONFIG, *_diverging(tiny_overrides), "train.diverge_action=stop")
    assert code == 2
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverg" in errors[0] and "no checkpoint was written yet" in errors[0], out
    assert not (tmp_path / "tiny" / "checkpoints" / "last").exists()


def test_a_diverge_factor_must_be_above_1(tiny_overrides):
    from sandbox.errors import ConfigError

    with pytest.raises(ConfigError, match="train.diverge_factor: got 0.5, expected a factor above 1"):
        load_config(CONFIG, tiny_overrides + ["train.diverge_factor=0.5"])
    assert load_config(CONFIG, tiny_overrides + ["train.diverge_factor=null"]).train.diverge_factor is None


# ----------------------------------------------------------------------------- SIGTERM / SIGINT

SLOW = ["data.size=32", "data.num_train=48", "data.num_val=4", "data.batch_size=4", "model.width=4",
        "model.depth=2", "model.dropout=0.1", "train.epochs=2", "train.log_every=1", "train.num_images=2",
        "track.wandb=disabled", "train.mixed_precision=no"]  # 2 epochs x 12 steps, dropout: RNG matters
TRAIN = [sys.executable, str(ROOT / "sandbox" / "train.py")]
ENV = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT))


def _default_sigint():  # a child of a shell that ignores SIGINT would inherit that
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    done = subprocess.run(TRAIN + ["--config", CONFIG, *SLOW, f"out_dir={out}", "name=straight"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return strip(read_metrics(out / "straight" / "metrics.jsonl"))


def _last_step(path):
    try:
        return max((json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()), default=0)
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_and_prints_the_resume_command(tmp_path, straight, sig, code):
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(TRAIN + ["--config", CONFIG, *SLOW, f"out_dir={tmp_path}", "name=stopped"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while proc.poll() is None and _last_step(run_dir / "metrics.jsonl") < 3 and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before the signal: {proc.stderr.read()[-2000:]}"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    lines = [line for line in (out + err).splitlines() if f"python sandbox/train.py --resume {run_dir}" in line]
    assert len(lines) == 1, out[-1500:] + err[-1500:]
    state = json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert 0 < state["batch"] < 12 and state["step"] == _last_step(run_dir / "metrics.jsonl")  # mid-epoch, that step

    done = subprocess.run(TRAIN + ["--resume", str(run_dir)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert strip(read_metrics(run_dir / "metrics.jsonl")) == straight  # every logged number, bit for bit


@pytest.mark.slow
def test_a_sigterm_to_the_whole_process_group_saves_with_data_workers(tmp_path):
    """Slurm and most schedulers signal every process of the job, DataLoader workers included: a worker
    killed by that SIGTERM would end the run in torch's 'worker killed' error before the save. The
    workers ignore SIGTERM; the main process saves the step, says how to resume, and the resume finishes."""
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(TRAIN + ["--config", CONFIG, *SLOW, "data.num_workers=1", f"out_dir={tmp_path}",
                                     "name=stopped"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    while proc.poll() is None and _last_step(run_dir / "metrics.jsonl") < 3 and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before the signal: {proc.stderr.read()[-2000:]}"
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and its worker, as a scheduler does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    assert f"python sandbox/train.py --resume {run_dir}" in out + err
    state = json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert 0 < state["batch"] < 12 and state["step"] == _last_step(run_dir / "metrics.jsonl")
    done = subprocess.run(TRAIN + ["--resume", str(run_dir)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_signal_echoed_by_a_launcher_is_one_request_a_later_one_stops_at_once():
    from sandbox.engine.stops import SignalStop

    # a shell's background job starts with SIGINT ignored, and SignalStop leaves an ignored signal alone:
    # give this process Python's usual handler for the test, as an interactive start has
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _echoed_sigint_is_one_request(SignalStop)
    finally:
        signal.signal(signal.SIGINT, ignored)


def _echoed_sigint_is_one_request(SignalStop):
    before = signal.getsignal(signal.SIGINT)
    with SignalStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # torchrun passing on the Ctrl-C its process group got
        time.sleep(0.05)
        assert stop.signum == signal.SIGINT
        time.sleep(1.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # meant: stop now
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before


def _rank_pid(rank: str, marker: str) -> int | None:
    """The pid of the training process with RANK=rank whose command line holds ``marker``."""
    for d in os.listdir("/proc"):
        try:
            raw = open(f"/proc/{d}/environ", "rb").read().decode()
            env = dict(e.split("=", 1) for e in raw.split("\0") if "=" in e)
            args = open(f"/proc/{d}/cmdline", "rb").read().decode().split("\0")
        except (OSError, ValueError):
            continue
        if env.get("RANK") == rank and marker in " ".join(args) and any(a.endswith("train.py") for a in args[:3]):
            return int(d)
    return None


@pytest.mark.multiproc
def test_two_processes_stop_after_the_same_step_when_one_gets_the_signal(tmp_path):
    """SIGTERM to process 1 alone: both save the same step (one that went on would wait forever in the
    next all-reduce), only the main process prints, and the resume matches an uninterrupted run."""
    from tests.test_reliability import free_port

    if shutil.which("accelerate") is None or not os.path.isdir("/proc"):
        pytest.skip("needs the accelerate CLI and /proc")
    common = [o for o in SLOW if not o.startswith(("model.width=", "model.dropout=", "data.batch_size="))]
    common += ["model.norm=group", "model.width=8", "train.threads=1", f"out_dir={tmp_path}"]
    env = dict(ENV, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")

    def launch(*args):
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                str(ROOT / "sandbox" / "train.py"), *args]

    done = subprocess.run(launch("--config", CONFIG, *common, "name=straight", "data.batch_size=2"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "two"
    proc = subprocess.Popen(launch("--config", CONFIG, *common, "name=two", "data.batch_size=2"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while proc.poll() is None and _last_step(run_dir / "metrics.jsonl") < 3 and time.time() < deadline:
        time.sleep(0.005)
    pid = _rank_pid("1", f"out_dir={tmp_path}")
    assert proc.poll() is None and pid, f"no process 1 to signal: {proc.stderr.read()[-2000:] if proc.poll() else ''}"
    os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert (out + err).count("stopped by SIGTERM") == 1, err[-3000:]
    assert "accelerate launch --num_processes 2 sandbox/train.py --resume" in err
    last = run_dir / "checkpoints" / "last"
    state = json.loads((last / "trainer_state.json").read_text())
    assert 0 < state["batch"] < 12 and state["step"] == _last_step(run_dir / "metrics.jsonl")
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(last))  # both processes saved

    done = subprocess.run(launch("--resume", str(run_dir)), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = strip(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert strip(read_metrics(run_dir / "metrics.jsonl")) == straight  # bit for bit
