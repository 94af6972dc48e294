"""Trust the run directory: nothing in it is unpickled with code, one writer per run, best never
left behind by a kill. A payload planted in every pickled file of last/ and best/ must run nowhere:
resume refuses it in one line naming the file; evaluate, predict, probe, interpolate and compare read
only the weights (model.safetensors: nothing can hide in it), and a run of an earlier version whose
model.pt holds a payload is refused by all of them in one line naming the file."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import SCHEDULES_FILE, read_state, read_weights
from sandbox.runs.lock import LOCK_FILE, RunLock
from tests.conftest import ROOT, cli

CFG = ROOT / "configs" / "unet_dice.yaml"
PICKLED = ("*.bin", "*.pkl", "*.pt")


class Payload:
    """Unpickled with code, it creates ``marker``; weights-only unpickling refuses it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(run: Path, marker: Path, legacy: bool = False) -> list[Path]:
    """Replace every pickled file of checkpoints/last and best with a payload; returns them. ``legacy``:
    best's weights as earlier versions stored them (a pickled model.pt, no model.safetensors), planted too."""
    planted = []
    if legacy:
        best = run / "checkpoints" / "best"
        torch.save({"state": Payload(marker)}, best / "model.pt")
        (best / "model.safetensors").unlink()
    for which in ("last", "best"):
        for pattern in PICKLED:
            for f in sorted((run / "checkpoints" / which).glob(pattern)):
                torch.save({"state": Payload(marker)}, f)
                planted.append(f)
    return planted


def train(tmp_path, *extra):
    cfg = load_config(CFG, [f"out_dir={tmp_path}", "name=tiny", "data.size=32", "data.num_train=8", "data.num_val=4",
                            "data.num_test=4", "data.batch_size=4", "model.width=4", "model.depth=2",
                            "train.epochs=1", "train.num_images=0", "track.wandb=disabled",
                            "train.mixed_precision=no", *extra])
    trainer = build_trainer(cfg)
    trainer.fit()
    return trainer


def test_schedules_are_saved_as_plain_state_dicts(tmp_path):
    trainer = train(tmp_path)
    last = tmp_path / "tiny" / "checkpoints" / "last"
    assert not list(last.glob("custom_checkpoint_*.pkl"))  # nothing Accelerate would load with code
    states = torch.load(last / SCHEDULES_FILE, weights_only=True)  # loads without any code
    assert len(states) == 1 and states[0]["last_epoch"] == trainer.state.step


def test_a_payload_in_every_checkpoint_file_runs_nowhere(tmp_path, monkeypatch, capsys):
    train(tmp_path)
    run, marker = tmp_path / "tiny", tmp_path / "PWNED"
    planted = plant(run, marker)
    assert {f.name for f in planted} == {"optimizer.bin", "random_states_0.pkl", SCHEDULES_FILE}  # last's
    assert not any(f.parent.name == "best" for f in planted)  # best: weights (safetensors) + yaml + json only
    with pytest.raises(SandboxError, match=r"was refused as unsafe \(it names posix.system"):
        train(tmp_path, f"train.resume={run}")
    images = tmp_path / "photos"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 80, 40)).save(images / "a.png")
    commands = (("evaluate", ["--run", run]), ("predict", ["--run", run, "--input", images, "--out", tmp_path / "p"]),
                ("compare", ["--run", run, "--out", tmp_path / "cmp"]))
    for name, args in commands:  # the weights are all they read: the planted files are never opened
        code, err = cli(name, args)
        assert code == 0, (name, err)
    plant(run, marker, legacy=True)  # a run of an earlier version: best/model.pt, read only as it is alone
    for name, args in commands:
        code, err = cli(name, args)
        assert code == 2 and len(err) == 1 and "model.pt' was refused as unsafe" in err[0], (name, err)
    assert not marker.exists()


def test_generative_commands_refuse_a_payload_too(tmp_path, monkeypatch, capsys):
    train(tmp_path, "model.name=vae", "data.name=attractors", "loss={image: {mse: 1.0}}", "model.latent_dim=4",
          "train.monitor=val/loss", "train.monitor_mode=min", "train.fid_samples=8", "train.probe_samples=8")
    run, marker = tmp_path / "tiny", tmp_path / "PWNED"
    plant(run, marker, legacy=True)
    for name, args in (("probe", ["--run", run, "--split", "val", "--samples", "8", "--fit", "8"]),
                       ("interpolate", ["--run", run, "--random", "2", "--no-wandb"])):
        code, err = cli(name, args)
        assert code == 2 and len(err) == 1 and "was refused as unsafe" in err[0], (name, err)
    assert not marker.exists()


def test_checkpoints_of_earlier_versions_resume_when_their_schedule_pickle_is_plain(tmp_path):
    """Earlier versions saved the LR schedule as custom_checkpoint_0.pkl: read weights-only, it resumes."""
    trainer = train(tmp_path, "train.epochs=2")
    last = tmp_path / "tiny" / "checkpoints" / "last"
    states = torch.load(last / SCHEDULES_FILE, weights_only=True)
    (last / SCHEDULES_FILE).unlink()
    torch.save(states[0], last / "custom_checkpoint_0.pkl")
    state = read_state(last)
    state["files"] = [f for f in state["files"] if f != SCHEDULES_FILE] + ["custom_checkpoint_0.pkl"]
    (last / "trainer_state.json").write_text(json.dumps(state))
    resumed = build_trainer(load_config(tmp_path / "tiny" / "config.yaml", [f"train.resume={tmp_path / 'tiny'}",
                                                                            "train.epochs=2"]))
    sched = resumed.optimizers[0][1]
    assert sched.last_epoch == trainer.optimizers[0][1].last_epoch == trainer.state.step


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    train(tmp_path, "train.epochs=2")
    run = tmp_path / "tiny"
    (run / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "2026-12-01 10:00:00"}))
    with pytest.raises(SandboxError, match=r"is being written by another process \(elsewhere pid 1, since "
                                           r"2026-12-01 10:00:00\); one writer per run.*delete .*\.writer\.lock"):
        train(tmp_path, "train.epochs=2", f"train.resume={run}")
    (run / LOCK_FILE).unlink()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    import socket
    import subprocess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": "x"}))
    lock = RunLock(run)
    lock.acquire()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over a stale lock" in caplog.text
    lock.release()
    assert not (run / LOCK_FILE).exists()


def test_a_finished_run_releases_its_lock(tmp_path):
    train(tmp_path)
    assert not (tmp_path / "tiny" / LOCK_FILE).exists()


def test_a_torn_best_is_repaired_on_resume(tmp_path):
    """An earlier version saved last before best: a kill between them left best one epoch behind while
    last's state named the newer best epoch; resume put the right weights into best."""
    train(tmp_path, "train.epochs=2")
    ck = tmp_path / "tiny" / "checkpoints"
    assert read_state(ck / "best")["epoch"] == read_state(ck / "last")["best_epoch"] == 2  # dice rises here
    old = read_state(ck / "best")
    old["epoch"] = 1
    (ck / "best" / "trainer_state.json").write_text(json.dumps(old))  # best as if it still held epoch 1
    build_trainer(load_config(tmp_path / "tiny" / "config.yaml", [f"train.resume={tmp_path / 'tiny'}"])).fit()
    assert read_state(ck / "best")["epoch"] == 2
    a = read_weights(ck / "best" / "model.safetensors")
    b = read_weights(ck / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (ck / "best").iterdir()) == ["config.yaml", "model.safetensors", "trainer_state.json"]


def test_restart_refuses_to_clear_a_run_that_is_being_written(tmp_path):
    from sandbox.runs.restart import clear_failed_start

    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\n")
    (run / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "now"}))
    with pytest.raises(SandboxError, match=r"is being written by another process \(elsewhere pid 1"):
        clear_failed_start(run)
    assert (run / "config.yaml").exists()
    (run / LOCK_FILE).unlink()
    assert clear_failed_start(run) == ["config.yaml", "checkpoints"]


def test_a_torn_rng_file_is_loud_and_the_resume_falls_back(tmp_path, caplog):
    """A truncated random_states file used to be skipped with an info line: the 'exact' resume was not.
    Now the checkpoint counts as corrupt: a warning says so and the resume takes an older good one."""
    train(tmp_path, "train.epochs=2", "train.keep_last_n=2")
    last = tmp_path / "tiny" / "checkpoints" / "last"
    rng = last / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:40])
    trainer = build_trainer(load_config(tmp_path / "tiny" / "config.yaml", [f"train.resume={tmp_path / 'tiny'}"]))
    assert "random_states_0.pkl" in caplog.text and "resuming from it would not be exact" in caplog.text
    assert trainer.state.epoch == 2  # the fallback (best / epoch_002) holds the same epoch
