"""Staged runs (``stages:``, issue 17): stages run in order under one run directory, each from the previous
stage's weights with a fresh schedule; a stop resumes without redoing a finished stage; every stage is
checked before anything trains; evaluate.py takes the staged run. Runs are 16-32 px, a few steps, CPU."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import sandbox.trainers.stages as stages_mod
from sandbox.config.loading import load_config, stage_configs
from sandbox.errors import ConfigError, SandboxError
from sandbox.runs.load import checkpoint_dir, checkpoint_weights
from sandbox.tracking.metrics_log import WALL_CLOCK, read_metrics
from tests.conftest import ROOT, command
from tests.conftest import train_cli as cli

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BASE = {"name": "st", "seed": 0,
        "data": {"name": "dancers", "size": 16, "num_train": 8, "num_val": 4, "num_test": 4, "batch_size": 4},
        "model": {"name": "unet", "width": 4, "depth": 2}, "loss": {"mask": {"dice": 1.0}},
        "train": {"epochs": 1, "lr": 1.0e-3, "log_every": 1, "num_images": 0, "mixed_precision": "no",
                  "threads": 1},
        "track": {"wandb": "disabled"},
        # stage 2: another size and schedule, 2 epochs x 2 steps (8 images, batch 4)
        "stages": [{"name": "one", "train.scheduler": "onecycle"},
                   {"name": "two", "data": {"size": 32}, "train": {"scheduler": "cyclic", "epochs": 2}}]}
VOLATILE = WALL_CLOCK  # timings: all else must match bit for bit


def write_config(tmp: Path, **changes) -> Path:
    path = tmp / "staged.yaml"
    path.write_text(yaml.safe_dump({**BASE, "out_dir": str(tmp / "runs"), **changes}, sort_keys=False))
    return path


def watch(monkeypatch) -> list:
    """Each stage's trainer as fit_stages builds it, with its weights before training (``.initial``)."""
    built, real = [], stages_mod.build_trainer

    def build(cfg):
        trainer = real(cfg)
        trainer.initial = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
        built.append(trainer)
        return trainer

    monkeypatch.setattr(stages_mod, "build_trainer", build)
    return built


def strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The 2-stage run, uninterrupted: (its directory, the stage trainers, the console output)."""
    tmp = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as m:
        built = watch(m)
        lines = []
        stages_mod.fit_stages(load_config(write_config(tmp)), say=lines.append)
    return tmp / "runs" / "st", built, "\n".join(lines)


def test_stage_2_starts_from_stage_1s_last_weights_at_its_own_size_and_schedule(straight):
    top, (one, two), out = straight
    last = checkpoint_weights(top / "stages" / "1_one" / "checkpoints" / "last")
    assert all(torch.equal(two.initial[k], last[k]) for k in last) and two.initial.keys() == last.keys()
    assert not all(torch.equal(one.initial[k], last[k]) for k in last)  # stage 1 trained: the check can fail
    assert one.datasets["train"][0]["image"].shape[-1] == 16 and two.datasets["train"][0]["image"].shape[-1] == 32
    # a fresh cyclic schedule in stage 2 (engine/optim.py): 4 steps, warm-up max(1, int(0.3 * 4)) = 1 step,
    # half cycle round(2 epochs * 2 steps) = 4; after step s the factor is 0.1 + 0.9 * (1 - (s - 1) / 4)
    lrs = [r["train/lr"] for r in read_metrics(top / "stages" / "2_two" / "metrics.jsonl") if r["split"] == "train"]
    assert lrs == pytest.approx([1e-3, 7.75e-4, 5.5e-4, 3.25e-4])
    record = json.loads((top / "stages.json").read_text())
    assert [(s["dir"], s["status"]) for s in record["stages"]] == [("stages/1_one", "done"), ("stages/2_two", "done")]
    assert record["final"] == "stages/2_two"
    assert "stage 1/2 one" in out and "stage 2/2 two" in out and f"{top / 'stages' / '2_two'}  best val/dice" in out
    assert yaml.safe_load((top / "config.yaml").read_text())["stages"] == BASE["stages"]  # the base config


def test_a_stop_in_stage_2_resumes_there_without_redoing_stage_1(straight, tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    top = tmp_path / "runs" / "st"
    with monkeypatch.context() as m:  # Ctrl-C at stage 2's first step (mid-epoch: last is saved there)
        built = watch(m)
        m.setattr("sandbox.engine.stops.SignalStop.agreed",
                  lambda self, acc: signal.SIGINT if len(built) == 2 and built[-1].state.step >= 1 else 0)
        code, out = cli(monkeypatch, capsys, "--config", str(config))
    assert code == 130 and f"resume with: python sandbox/train.py --resume {top}" in out, out[-2000:]
    one = top / "stages" / "1_one"
    kept = {p: p.read_bytes() for p in [one / "metrics.jsonl", *(one / "checkpoints").rglob("*")] if p.is_file()}
    record = json.loads((top / "stages.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["done", "stopped"] and record["final"] is None
    with pytest.raises(SandboxError, match=r"staged run that has not finished \(stage 2/2 two is stopped\)"):
        checkpoint_dir(top)  # evaluate, predict, ... on it: not before it has finished
    code, out = cli(monkeypatch, capsys, "--config", str(config))  # the same command again: the way on
    assert code == 2 and f"continue it with: python sandbox/train.py --resume {top}" in out, out

    code, out = cli(monkeypatch, capsys, "--resume", str(top))
    assert code == 0, out[-2000:]
    assert "stage 1/2 one: done" in out and "stage 2/2 two" in out and "(resumed)" in out
    assert {p: p.read_bytes() for p in kept} == kept  # stage 1 untouched
    assert not any(p.is_file() and p not in kept for p in (one / "checkpoints").rglob("*"))
    two = read_metrics(top / "stages" / "2_two" / "metrics.jsonl")
    assert [r["step"] for r in two if r["split"] == "train"] == [1, 2, 3, 4]  # step 1 once, then on from it
    assert strip(two) == strip(read_metrics(straight[0] / "stages" / "2_two" / "metrics.jsonl"))  # bit for bit


def test_a_stage_killed_before_its_first_checkpoint_starts_afresh_on_resume(straight, tmp_path, monkeypatch, capsys):
    """A SIGKILL early in stage 2 leaves its config.yaml and metrics.jsonl, no checkpoint: the resume clears
    them and trains stage 2 from stage 1's weights as a first start does."""
    top = Path(shutil.copytree(straight[0], tmp_path / "st"))
    two = top / "stages" / "2_two"
    shutil.rmtree(two / "checkpoints")
    (two / "metrics.jsonl").write_text(two.joinpath("metrics.jsonl").read_text().splitlines()[0] + "\n")
    code, out = cli(monkeypatch, capsys, "--resume", str(top))
    assert code == 0 and "stage 1/2 one: done" in out and "(resumed)" not in out, out[-2000:]
    assert strip(read_metrics(two / "metrics.jsonl")) == strip(read_metrics(straight[0] / "stages" / "2_two" /
                                                                            "metrics.jsonl"))
    assert json.loads((top / "stages.json").read_text())["final"] == "stages/2_two"


def test_a_bad_key_in_a_later_stage_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    stages = [{"name": "a"}, {"name": "b"}, {"name": "c", "train": {"epochz": 2}}]
    code, out = cli(monkeypatch, capsys, "--config", str(write_config(tmp_path, stages=stages)))
    errors = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and "unknown key 'stages[2].train.epochz'" in errors[0], out
    assert not (tmp_path / "runs").exists()  # nothing written, nothing trained


@pytest.mark.parametrize("stage, message", [
    ({"model.width": 8}, r"stages\[1\]\.model\.width: a stage may not set model\.\*"),
    ({"model": {"depth": 1}}, r"stages\[1\]\.model\.depth: a stage may not set model\.\*"),
    ({"train.init_from": "runs/x"}, r"stages\[1\]\.train\.init_from: a stage may not set train\.init_from"),
    ({"train": {"resume": "runs/x"}}, r"stages\[1\]\.train\.resume: a stage may not set train\.resume"),
    ({"out_dir": "elsewhere"}, r"stages\[1\]\.out_dir: a stage may not set out_dir"),
    ({"loss": {"depth": {"l1": 1.0}}}, r"stages\[1\]\.loss: targets \['depth'\], the base config's \['mask'\]"),
    ({"name": "a/b"}, r"stages\[1\]\.name: got 'a/b'"),
])
def test_a_stage_may_not_change_the_model_or_where_it_runs(stage, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(None, [f"stages=[{{name: ok}}, {json.dumps(stage)}]"])
    assert "\n" not in str(exc.value)


def test_a_generative_stage_may_not_change_the_image_size():
    """A VAE's decoder makes data.size images (model.size follows it): another size is another model."""
    with pytest.raises(ConfigError, match=r"stages\[0\]\.data\.size"):
        load_config(None, ["model.name=vae", "data.size=16", "loss={image: {mse: 1.0}}", "stages=[{data.size: 32}]"])


def test_build_trainer_refuses_a_staged_config():
    from sandbox import build_trainer

    with pytest.raises(ConfigError, match=r"stages: a staged config trains stage after stage"):
        build_trainer(load_config(None, ["stages=[{name: a}]"]))


def test_evaluate_on_a_staged_run_scores_its_final_stage(straight, monkeypatch, capsys):
    top = straight[0]
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--run", str(top), "--split", "test"])
    command("evaluate").main()
    result = json.loads((top / "stages" / "2_two" / "eval" / "test.json").read_text())
    assert result["checkpoint"] == str(top / "stages" / "2_two" / "checkpoints" / "best") and result["n"] == 4


def test_unet_stages_config_is_the_seeds_schedule():
    """OneCycle at 64 px with augmentation, then a cyclic LR at 128-160 px without."""
    warm, cyclic = stage_configs(load_config(ROOT / "configs" / "unet_stages.yaml"))
    assert (warm.cfg.data.size, warm.cfg.train.scheduler, bool(warm.cfg.data.augment)) == (64, "onecycle", True)
    sizes = {cyclic.cfg.data.size, *(cyclic.cfg.data.size_schedule or {}).values()}
    assert min(sizes) >= 128 and max(sizes) <= 160 and cyclic.cfg.train.scheduler == "cyclic"
    assert not cyclic.cfg.data.augment


@pytest.mark.multiproc
def test_two_processes_run_the_stages_with_one_writer(tmp_path):
    from tests.test_reliability import free_port

    if shutil.which("accelerate") is None:
        pytest.skip("needs the accelerate CLI")
    config = write_config(tmp_path, model={"name": "unet", "width": 4, "depth": 2, "norm": "group"})
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(free_port()), str(ROOT / "sandbox" / "train.py"), "--config", str(config),
                           "data.batch_size=2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    top = tmp_path / "runs" / "st"
    lines = done.stdout.splitlines()  # the main process alone prints
    assert lines.count(f"stage 2/2 two: {top / 'stages' / '2_two'}") == 1 and done.stdout.count("done: ") == 1
    assert json.loads((top / "stages.json").read_text())["final"] == "stages/2_two"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(top / "stages" / "2_two" / "checkpoints"
                                                                            / "last"))
