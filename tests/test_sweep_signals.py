"""Stopping a sweep stops its runs: SIGTERM/SIGINT are passed on (each run saves its checkpoint), waited
for, and end in one line with the command to continue; a SIGKILLed sweep leaves no run training (Linux:
parent-death signal); a run still being written is never resumed or cleared beside its writer."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import check_complete
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, PR_SET_PDEATHSIG: Linux")

CONFIG = str(ROOT / "configs" / "unet_dice.yaml")
# 2 epochs x 6 steps: long enough to be stopped mid-epoch, short enough to finish on the rerun
TINY = ["data.size=32", "data.num_train=24", "data.num_val=4", "data.batch_size=4", "model.width=4", "model.depth=2",
        "train.epochs=2", "train.log_every=1", "train.num_images=0", "track.wandb=disabled",
        "train.mixed_precision=no"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _default_sigint():  # a child of a shell that ignores SIGINT (a background job) would inherit that
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sweep(out: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "sandbox" / "sweep.py"), "--config", CONFIG, "--grid",
                             "model.name=unet", "--name", "s", "--out-dir", str(out), *extra, *TINY], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
                            **popen)


def _steps(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"train/' in line)
    except OSError:
        return 0


def _training(proc: subprocess.Popen, runs: list[Path], steps: int = 2) -> None:
    """Wait until every run in ``runs`` has logged ``steps`` training steps (the sweep still running)."""
    deadline = time.time() + 240
    while proc.poll() is None and min(_steps(r) for r in runs) < steps and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None and min(_steps(r) for r in runs) >= steps, proc.communicate()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc: psutil is not a dependency)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _train_children(pid: int) -> list[int]:
    kids = [k for k in _children(pid) if "train.py" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")]
    assert kids, "no train.py child"
    return kids


def _saved_mid_run(run: Path) -> dict:
    last = check_complete(run / "checkpoints" / "last")  # raises unless every file it lists is there
    state = json.loads((last / "trainer_state.json").read_text())
    assert 0 < state["step"] < 12, state
    return state


def _continue_command(text: str) -> list[str]:
    """The command of the sweep's one stop line, to run as it is (with this interpreter)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("sweep stopped by ")]
    assert len(lines) == 1, text[-3000:]
    cmd = shlex.split(lines[0].split("; continue with: ", 1)[1].rsplit(" (finished runs", 1)[0])
    assert cmd[:2] == ["python", "sandbox/sweep.py"], lines[0]
    return [sys.executable, str(ROOT / cmd[1]), *cmd[2:]]


def _rerun_finishes(cmd: list[str], runs: list[Path]) -> None:
    """Rerunning the sweep resumes the stopped runs and finishes them."""
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count(": resuming") == len(runs), done.stdout[-2000:]
    for run in runs:
        state = json.loads((check_complete(run / "checkpoints" / "last") / "trainer_state.json").read_text())
        assert state["epoch"] == 2 and not state.get("batch"), state


@pytest.mark.slow
def test_sigterm_stops_every_running_child_saved_and_the_printed_command_continues(tmp_path):
    """--jobs 2: both children get the SIGTERM, save mid-epoch and exit before the sweep does (143)."""
    runs = [tmp_path / "s" / f"model-unet_s{seed}" for seed in (0, 1)]
    proc = _sweep(tmp_path, "--seeds", "2", "--jobs", "2")
    _training(proc, runs)
    kids = _train_children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]  # today: killed by the signal, -15, silent
    assert not [k for k in kids if _alive(k)], "a train.py child outlived the sweep"
    assert "Traceback" not in err, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.startswith("sweep stopped by SIGTERM: ")]
    # each run was stopped and saved, or (a fast machine: 12 tiny steps) had already finished before the signal
    stopped = [r for r in runs if f"s/{r.name} stopped (exit 143), checkpoints/last holds" in line[0]]
    assert len(line) == 1 and stopped and all(r in stopped or f"s/{r.name} finished" in line[0] for r in runs), \
        err[-3000:]
    for run in runs:
        if run in stopped:
            _saved_mid_run(run)
        assert not (run / ".writer.lock").exists()  # each child let go of its run
    _rerun_finishes(_continue_command(err), runs)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_saves_once_and_says_how_to_continue(tmp_path):
    """A terminal's Ctrl-C reaches the sweep AND its child; the copy the sweep passes on is an echo to the
    child (one request: it saves at its next step, not at once), and the sweep exits 130."""
    run = tmp_path / "s" / "model-unet_s0"
    proc = _sweep(tmp_path, start_new_session=True)  # its own group, so that killpg reaches only it
    _training(proc, [run])
    kids = _train_children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert not [k for k in kids if _alive(k)]
    _saved_mid_run(run)
    assert "sweep stopped by SIGINT: s/model-unet_s0 stopped (exit 130), checkpoints/last holds step" in err
    _rerun_finishes(_continue_command(err), [run])


@pytest.mark.slow
def test_a_sigkilled_sweep_leaves_no_child_training(tmp_path):
    """SIGKILL cannot be caught: the child gets SIGTERM from the kernel (parent-death signal), saves its
    step and stops within seconds; the rerun resumes it."""
    run = tmp_path / "s" / "model-unet_s0"
    proc = _sweep(tmp_path)
    _training(proc, [run])
    kids = _train_children(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.time() + 30
    while any(_alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "the child trains on without its sweep"
    log = (tmp_path / "s" / "logs" / "model-unet_s0.log").read_text()
    # today: it trains to the end; the save lands mid-epoch or, on a fast machine, at the end of epoch 1
    assert "stopped by SIGTERM: checkpoints/last holds" in log, log[-2000:]
    _saved_mid_run(run)
    _rerun_finishes(proc.args, [run])


@pytest.mark.slow
def test_an_in_process_sweep_stopped_by_sigterm_says_how_to_continue(tmp_path):
    """--in-process: the run's own handler saves and stops it; the sweep adds its line and exits 143."""
    run = tmp_path / "s" / "model-unet_s0"
    proc = _sweep(tmp_path, "--in-process", "--seeds", "2")
    _training(proc, [run])
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    assert "sweep stopped by SIGTERM: s/model-unet_s0 stopped, checkpoints/last holds" in err, err[-2000:]
    assert "; 1 run not started; continue with: python sandbox/sweep.py " in err
    assert _continue_command(err)[2:] == proc.args[2:]
    _saved_mid_run(run)


def test_a_run_still_being_written_is_refused_not_cleared(tmp_path):
    """A rerun while an earlier sweep's child still writes a run (here: before its first checkpoint, which
    the sweep would otherwise delete as broken) refuses in one line naming the writer; nothing is touched."""
    from sandbox.analysis.sweep import execute, make_cells, plan

    spec = plan(CONFIG, make_cells({"model.name": ["unet"]}), 1, TINY + ["data.num_train=8", "train.epochs=1"], "s",
                tmp_path)[0]
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        spec.path.mkdir(parents=True)
        (spec.path / "metrics.jsonl").write_text("")
        (spec.path / ".writer.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": writer.pid,
                                                             "since": "2024-01-01 00:00:00"}))
        with pytest.raises(SandboxError, match=f"being written by another process .*pid {writer.pid}"):
            execute([spec], CONFIG, in_process=True)
        assert sorted(p.name for p in spec.path.iterdir()) == [".writer.lock", "metrics.jsonl"]
    finally:
        writer.kill()
        writer.wait()
    execute([spec], CONFIG, in_process=True)  # its writer gone: the stale lock is taken over, the run trains
    assert not (spec.path / ".writer.lock").exists() and (spec.path / "checkpoints" / "last").is_dir()


def _stubborn() -> subprocess.Popen:
    """A child that ignores SIGTERM (a run stuck where it cannot save); SIGINT ends it."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=_default_sigint)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_child_that_does_not_stop_is_killed_after_the_wait_and_said_so(tmp_path, capsys):
    from sandbox.analysis.children import SweepSignals, stop_children

    signals, proc = SweepSignals(), _stubborn()
    signals.signum = signal.SIGTERM
    t0 = time.time()
    said = stop_children({"s/a": (proc, tmp_path / "a")}, signals, wait_s=1.0)
    assert proc.returncode == -signal.SIGKILL and time.time() - t0 < 10
    assert said == ["s/a killed after 1 s without stopping, no checkpoint yet (it starts afresh)"]
    assert "SIGTERM: passed on to s/a; waiting for it to save (up to 1 s" in capsys.readouterr().err


def test_a_second_signal_is_passed_on_and_cuts_the_wait(tmp_path):
    from sandbox.analysis.children import SweepSignals, stop_children

    signals, proc = SweepSignals(), _stubborn()
    # a shell's background job starts with SIGINT ignored, and SweepSignals leaves an ignored signal alone
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with signals:
            os.kill(os.getpid(), signal.SIGTERM)  # the first: recorded, passed on (ignored by this child)
            signals._first -= 2  # what comes now is no echo of it
            os.kill(os.getpid(), signal.SIGINT)  # a second request: passed on, it ends this child
            assert (signals.signum, signals.again) == (signal.SIGTERM, signal.SIGINT)
            t0 = time.time()
            said = stop_children({"s/a": (proc, tmp_path / "a")}, signals, wait_s=60, hurry_s=30)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert time.time() - t0 < 10 and proc.returncode == -signal.SIGINT
    assert said == ["s/a stopped (exit 130, SIGINT), no checkpoint yet (it starts afresh)"]


def test_a_child_whose_sweep_died_before_it_was_armed_does_not_start(monkeypatch):
    """The race: the sweep dies between fork and prctl, so no parent-death signal will ever come; the
    child sees that its parent is not the sweep that started it and ends before exec."""
    from sandbox.analysis import children

    assert children._dies_with_parent() is not None
    monkeypatch.setattr(os, "getpid", lambda: 1)  # "the sweep" is not this process: as if it had died
    arm = children._dies_with_parent()
    monkeypatch.undo()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], preexec_fn=arm)
    assert proc.wait(timeout=10) == 143
