"""The sandbox writes only inside the run it was asked to write (issue 26): files planted in a run directory
(symbolic links to elsewhere, a FIFO, a stages.json or --which pointing at another run) are refused in one line
and nothing outside the run changes (a sentinel tree is hashed before and after); a staged run resumes
whatever the spelling of its path, and without its stages.json. Runs are 16-32 px, a few steps, CPU."""
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

import sandbox.trainers.stages as stages_mod
from sandbox.errors import SandboxError
from tests.conftest import command
from tests.conftest import train_cli as cli

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = ["data.size=16", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4",
        "model.width=4", "model.depth=2", "train.epochs=1", "train.log_every=1", "train.num_images=0",
        "track.wandb=disabled", "train.mixed_precision=no", "train.threads=1"]


def digest(root: Path) -> dict:
    """Every file under ``root`` (links not followed) -> sha256 of its bytes; what a stray write would change."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            p = Path(folder) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if not p.is_symlink() else "link"
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished UNet run (copied per test)."""
    tmp = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as m:
        m.setattr("sys.argv", ["sandbox/train.py", "--config", "configs/unet_dice.yaml", f"out_dir={tmp}", "name=r",
                               *TINY])
        command("train").main()
    return tmp / "r"


@pytest.fixture
def world(trained, tmp_path):
    """(a copy of the run, a sentinel tree outside it with a file, a folder and another run)."""
    run = tmp_path / "runs" / "r"
    shutil.copytree(trained, run)
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "notes.txt").write_text("mine\n")
    (outside / "folder" / "keep.txt").write_text("keep\n")
    shutil.copytree(trained, outside / "other")
    return run, outside


def run_cmd(name: str, monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", [f"sandbox/{name}.py", *args])
    try:
        command(name).main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


def plant(run: Path, outside: Path, what: str) -> None:
    if what == "metrics.jsonl":
        (run / "metrics.jsonl").unlink()
        (run / "metrics.jsonl").symlink_to(outside / "notes.txt")
    elif what in ("plots", "eval", "predictions", "images"):
        shutil.rmtree(run / what, ignore_errors=True)
        (run / what).symlink_to(outside / "folder", target_is_directory=True)
    elif what == "checkpoints/last":
        shutil.copytree(run / "checkpoints" / "last", outside / "folder" / "last")
        shutil.rmtree(run / "checkpoints" / "last")
        (run / "checkpoints" / "last").symlink_to(outside / "folder" / "last", target_is_directory=True)
    elif what == "config.yaml":
        shutil.copy(run / "config.yaml", outside / "folder" / "config.yaml")
        (run / "config.yaml").unlink()
        (run / "config.yaml").symlink_to(outside / "folder" / "config.yaml")


# which command meets which planted link: train --resume writes metrics, plots, images, checkpoints, config;
# evaluate writes eval/, predict predictions/
CASES = [("metrics.jsonl", "resume"), ("plots", "resume"), ("images", "resume"), ("checkpoints/last", "resume"),
         ("config.yaml", "resume"), ("eval", "evaluate"), ("predictions", "predict"), ("metrics.jsonl", "evaluate")]


@pytest.mark.parametrize("what,how", CASES, ids=[f"{w}-{h}" for w, h in CASES])
def test_a_planted_link_is_refused_and_nothing_outside_changes(world, what, how, monkeypatch, capsys):
    run, outside = world
    if how == "resume":  # one more epoch to train, so that a resume has work to write
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["train"]["epochs"] = 2
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    plant(run, outside, what)
    before = digest(outside)
    if how == "resume":
        code, out = cli(monkeypatch, capsys, "--resume", str(run))
    elif how == "evaluate":
        code, out = run_cmd("evaluate", monkeypatch, capsys, "--run", str(run), "--split", "test")
    else:
        images = run.parent / "photos"
        images.mkdir()
        import numpy as np
        from PIL import Image
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(images / "a.png")
        code, out = run_cmd("predict", monkeypatch, capsys, "--run", str(run), "--input", str(images))
    assert code == 2, out[-1500:]
    name = what.split("/")[0] if what != "checkpoints/last" else "last"
    assert "symbolic link" in out and name in out and "Traceback" not in out, out[-1500:]
    assert "free space" not in out
    assert digest(outside) == before  # the sentinel tree is byte for byte as it was


def test_a_fifo_in_a_run_is_refused_not_waited_on(world, monkeypatch, capsys):
    """A new class: a special file where a run file belongs (reading a FIFO blocks forever)."""
    run, _ = world
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    code, out = run_cmd("evaluate", monkeypatch, capsys, "--run", str(run), "--split", "test")
    assert code == 2 and "not a regular file" in out and "metrics.jsonl" in out, out[-1500:]


def test_which_names_a_checkpoint_of_the_run_never_a_path_out_of_it(world, monkeypatch, capsys):
    run, outside = world
    before = digest(outside)
    code, out = run_cmd("evaluate", monkeypatch, capsys, "--run", str(run), "--which",
                        "../../../outside/other/checkpoints/last")
    assert code == 2 and "--which" in out and "not a path" in out, out[-1500:]
    assert digest(outside) == before and not (outside / "other" / "eval").exists()
    code, out = run_cmd("evaluate", monkeypatch, capsys, "--run", str(run), "--which", "last", "--split", "test")
    assert code == 0 and (run / "eval" / "test.json").is_file(), out[-1500:]  # a name still works


def test_inside_refuses_links_and_escapes_below_the_run_but_not_a_linked_run_root(tmp_path):
    from sandbox.runs.rundir import check_tree, inside

    real = tmp_path / "disk" / "r"
    (real / "eval").mkdir(parents=True)
    (tmp_path / "runs").symlink_to(tmp_path / "disk", target_is_directory=True)
    run = tmp_path / "runs" / "r"  # runs/ on another disk: the run itself is reached through a link
    assert inside(run, run / "eval" / "test.json") == run / "eval" / "test.json"
    with pytest.raises(SandboxError, match="outside the run"):
        inside(run, run / ".." / "x.json")
    (real / "plots").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SandboxError, match="symbolic link"):
        inside(run, run / "plots" / "loss.png")
    with pytest.raises(SandboxError, match="symbolic link"):
        check_tree(run)


def test_wandbs_own_links_inside_its_folder_are_allowed_but_not_a_linked_folder(tmp_path):
    from sandbox.runs.rundir import check_tree

    run = tmp_path / "r"
    (run / "wandb" / "offline-run-1" / "logs").mkdir(parents=True)
    (run / "wandb" / "offline-run-1" / "logs" / "debug.log").write_text("")
    (run / "wandb" / "latest-run").symlink_to("offline-run-1", target_is_directory=True)
    (run / "wandb" / "offline-run-1" / "logs" / "debug-core.log").symlink_to(tmp_path / "cache.log")  # as W&B does
    check_tree(run)  # no error: inside wandb/ is W&B's
    (run / "plots").mkdir()
    (run / "plots" / "escape").symlink_to(tmp_path)
    with pytest.raises(SandboxError, match="escape"):
        check_tree(run)
    (run / "plots" / "escape").unlink()
    shutil.rmtree(run / "wandb")
    (run / "wandb").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SandboxError, match="wandb"):
        check_tree(run)


# --- staged runs -----------------------------------------------------------------------------------------------

STAGED = {"name": "st", "seed": 0,
          "data": {"name": "dancers", "size": 16, "num_train": 8, "num_val": 4, "num_test": 4, "batch_size": 4},
          "model": {"name": "unet", "width": 4, "depth": 2}, "loss": {"mask": {"dice": 1.0}},
          "train": {"epochs": 1, "lr": 1.0e-3, "log_every": 1, "num_images": 0, "mixed_precision": "no",
                    "threads": 1},
          "track": {"wandb": "disabled"},
          "stages": [{"name": "one"}, {"name": "two", "train": {"epochs": 2}}]}


@pytest.fixture
def stopped_in_stage_2(tmp_path, monkeypatch, capsys):
    """A staged run started from tmp_path with a RELATIVE out_dir, stopped (Ctrl-C) in stage 2 after its first
    checkpoint: (the run's absolute directory, its relative spelling)."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "staged.yaml"
    config.write_text(yaml.safe_dump({**STAGED, "out_dir": "runs"}, sort_keys=False))
    with monkeypatch.context() as m:
        built, real = [], stages_mod.build_trainer
        m.setattr(stages_mod, "build_trainer", lambda cfg: built.append(real(cfg)) or built[-1])
        m.setattr("sandbox.engine.stops.SignalStop.agreed",
                  lambda self, acc: signal.SIGINT if len(built) == 2 and built[-1].state.step >= 1 else 0)
        code, out = cli(monkeypatch, capsys, "--config", str(config))
    assert code == 130, out[-2000:]
    top = tmp_path / "runs" / "st"
    assert (top / "stages" / "2_two" / "checkpoints" / "last").is_dir()
    return top, "runs/st"


def test_a_staged_run_resumes_from_another_directory_with_its_absolute_path(stopped_in_stage_2, tmp_path,
                                                                            monkeypatch, capsys):
    top, _ = stopped_in_stage_2
    elsewhere = tmp_path / "elsewhere"  # as a Slurm job would: another working directory, the absolute path
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out = cli(monkeypatch, capsys, "--resume", str(top))
    assert code == 0, out[-2000:]
    assert "stage 1/2 one: done" in out and "(resumed)" in out
    record = json.loads((top / "stages.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["done", "done"] and record["final"] == "stages/2_two"


def test_a_failed_resume_does_not_leave_stages_json_saying_running(stopped_in_stage_2, monkeypatch, capsys):
    top, _ = stopped_in_stage_2
    cfg = yaml.safe_load((top / "stages" / "2_two" / "config.yaml").read_text())
    cfg["train"]["init_from"] = "runs/somewhere/else/checkpoints/last"  # a recorded start that no longer matches
    (top / "stages" / "2_two" / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, out = cli(monkeypatch, capsys, "--resume", str(top))
    assert code == 2 and "init_from" in out, out[-2000:]
    record = json.loads((top / "stages.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["done", "stopped"], record


def test_without_stages_json_a_staged_run_resumes_and_evaluates(stopped_in_stage_2, monkeypatch, capsys):
    top, rel = stopped_in_stage_2
    (top / "stages.json").unlink()
    code, out = cli(monkeypatch, capsys, "--resume", rel)
    assert code == 0 and "(resumed)" in out and "stage 1/2 one: done" in out, out[-2000:]
    (top / "stages.json").unlink()
    code, out = run_cmd("evaluate", monkeypatch, capsys, "--run", str(top), "--split", "test")
    assert code == 0, out[-2000:]
    assert (top / "stages" / "2_two" / "eval" / "test.json").is_file()
    assert json.loads((top / "stages.json").read_text())["final"] == "stages/2_two"  # rebuilt


def test_stages_json_pointing_at_another_run_is_not_followed(stopped_in_stage_2, tmp_path, monkeypatch, capsys):
    top, rel = stopped_in_stage_2
    assert cli(monkeypatch, capsys, "--resume", rel)[0] == 0
    other = tmp_path / "other"
    shutil.copytree(top / "stages" / "2_two", other)
    before = digest(other)
    record = json.loads((top / "stages.json").read_text())
    record["final"] = "../../other"
    (top / "stages.json").write_text(json.dumps(record))
    code, out = run_cmd("evaluate", monkeypatch, capsys, "--run", str(top), "--split", "test")
    assert code == 0, out[-2000:]
    assert digest(other) == before and not (other / "eval").exists()  # the other run neither scored nor written
    assert (top / "stages" / "2_two" / "eval" / "test.json").is_file()  # the run's own final stage was
