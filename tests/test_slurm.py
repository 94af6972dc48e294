"""sweep.py --launcher slurm: the array plan, resources, the task's command and its stop (no Slurm needed);
then a tiny study on a real one-node Slurm (tests/slurm/start_cluster.sh), one task stopped mid-run and
requeued, whose report equals the one a local sweep writes."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from sandbox.analysis import slurm
from sandbox.analysis.slurm_task import RunTask, task_command
from sandbox.analysis.sweep import make_cells, plan
from sandbox.errors import ConfigError
from tests.conftest import ROOT, command

CONFIG = str(ROOT / "configs/unet_dice.yaml")
EPOCHS = 3
TINY = ["data.size=16", "data.num_train=8", "data.num_val=4", "data.num_test=6", "data.batch_size=4",
        "model.depth=2", "model.width=4", f"train.epochs={EPOCHS}", "train.log_every=1", "train.num_images=0",
        "track.wandb=disabled", "train.mixed_precision=no", "train.threads=1"]
SCRIPT = ROOT / "tests" / "slurm" / "start_cluster.sh"
STOPPED = "model-unet_s0"  # the run whose task is stopped mid-run and requeued


def specs_of(tmp_path, seeds=(0, 1), extra=()):
    return plan(CONFIG, make_cells({"model.name": ["hourglass", "unet"]}), list(seeds), TINY + list(extra), "tiny",
                tmp_path)


def flags(**given) -> Namespace:
    base = {k: None for k in ("partition", "time", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism")}
    return Namespace(**{**base, "slurm_extra": [], **given})


def test_array_plan_makes_a_task_of_each_run_neither_finished_nor_queued(tmp_path, monkeypatch):
    specs = specs_of(tmp_path)
    states = {"tiny/model-hourglass_s0": "done", "tiny/model-hourglass_s1": "partial",
              "tiny/model-unet_s0": "broken", "tiny/model-unet_s1": "new"}
    monkeypatch.setattr(slurm, "run_state", lambda spec, config: states[spec.name])
    planned = [(s.name, st) for s, st in slurm.array_plan(specs, CONFIG)]
    assert planned == [("tiny/model-hourglass_s1", "partial"), ("tiny/model-unet_s0", "broken"),
                       ("tiny/model-unet_s1", "new")]
    # a run whose task from an earlier submission is still pending or running gets no second writer
    assert [s.name for s, _ in slurm.array_plan(specs, CONFIG, {"tiny/model-unet_s0"})] == [
        "tiny/model-hourglass_s1", "tiny/model-unet_s1"]


def test_resources_come_from_the_flags_over_the_study_file_and_are_checked():
    study = {"slurm": {"partition": "gpu", "time": "1:30:00", "cpus_per_task": 4, "extra": ["qos=high"]}}
    got = slurm.resources(study, flags(time="2-00:00:00", gpus_per_task=2, mem="16G", slurm_extra=["exclusive"]))
    assert got["partition"] == "gpu" and got["time"] == 2 * 24 * 60 and got["cpus_per_task"] == 4
    assert got["gpus_per_task"] == 2 and got["mem"] == "16G"
    assert got["additional_parameters"] == {"chdir": os.getcwd(), "exclusive": True}  # the flag replaces the file's
    assert slurm.resources({}, flags())["time"] == 60
    assert [slurm.minutes(t) for t in (90, "90", "1:30", "1:30:00", "1-0", "0:00:61")] == [90, 90, 2, 90, 1440, 2]
    for bad, message in [({"time": "soon"}, "--time 'soon': expected minutes"),
                         ({"cpus_per_task": 0}, "--cpus-per-task 0: expected a whole number, at least 1"),
                         ({"mem": "lots"}, "--mem 'lots': expected sbatch's size"),
                         ({"slurm_extra": ["array=0-3"]}, "--slurm-extra 'array=0-3': expected KEY=VALUE")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            slurm.resources({}, flags(**bad))
    with pytest.raises(ConfigError, match="slurm: got .*accepted keys: partition"):
        slurm.resources({"slurm": {"gpus": 1}}, flags())


def test_task_command_is_the_sweeps_with_threads_and_accelerate_for_several_gpus(tmp_path, monkeypatch):
    spec = specs_of(tmp_path, extra=["train.threads=0"])[0]
    cmd = task_command(spec, CONFIG, resume=True, cpus=4)
    assert cmd[:4] == [sys.executable, str(ROOT / "sandbox" / "train.py"), "--config", CONFIG]
    assert cmd[-2:] == ["--resume", str(spec.path)] and "train.threads=4" not in cmd  # the study's own wins
    spec.overrides = [o for o in spec.overrides if not o.startswith("train.threads")]
    assert "train.threads=4" in task_command(spec, CONFIG, resume=False, cpus=4)
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    multi = task_command(spec, CONFIG, resume=False, gpus=4)
    assert multi[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert multi[multi.index("--num_processes") + 1] == "4" and multi[multi.index("--main_process_port") + 1] == "21234"
    assert multi[multi.index("--dynamo_backend") + 2] == str(ROOT / "sandbox" / "train.py")


SAVER = """
import signal, sys, time
def stop(*_):
    time.sleep(1.0)  # a save that takes a while
    open(sys.argv[1], "w").write("saved")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""


def test_checkpoint_stops_the_child_waits_for_its_save_and_requeues_a_fresh_copy(tmp_path, capsys):
    pytest.importorskip("submitit", reason="pip install -e '.[slurm]'")
    import cloudpickle

    spec = specs_of(tmp_path)[0]
    task = RunTask(spec, CONFIG, {}, [spec], "val/dice", "sweep.py")
    saved = tmp_path / "saved"
    task._proc = subprocess.Popen([sys.executable, "-c", SAVER, str(saved)], stdout=subprocess.PIPE,
                                  start_new_session=True, text=True)
    assert task._proc.stdout.readline() == "ready\n"
    try:
        again = task.checkpoint()  # what submitit calls on SIGUSR2
        # it blocks the signal: Slurm may send it again (scancel retries) while the child saves
        assert signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    assert saved.read_text() == "saved" and task._proc.wait(timeout=5) == 143
    assert capsys.readouterr().out == "tiny/model-hourglass_s0: train.py stopped for the requeue (exit 143)\n"
    assert isinstance(again.function, RunTask) and again.function is not task and again.function.spec == spec
    copy = cloudpickle.loads(cloudpickle.dumps(again.function))  # submitit pickles it for the requeued start
    assert copy._proc is None and copy.args["spec"].name == spec.name
    assert json.loads((tmp_path / "tiny" / "slurm" / "model-hourglass_s0.json").read_text())["state"] == "requeued"


def test_a_requeued_slurm_job_takes_over_its_earlier_starts_lock_on_another_host(tmp_path, monkeypatch):
    from sandbox.errors import SandboxError
    from sandbox.runs.lock import LOCK_FILE, RunLock

    def held_by(**holder):
        (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "node-a", "pid": 1, "since": "then", **holder}))

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    held_by(slurm_job="77", slurm_restart=0)  # this job's first start, on another node, killed
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["slurm_restart"] == 1
    lock.release()
    for other in ({"slurm_job": "78", "slurm_restart": 0}, {"slurm_job": "77", "slurm_restart": 1}, {}):
        held_by(**other)  # another job, this very start, a writer outside Slurm: cannot be checked from here
        with pytest.raises(SandboxError, match="being written by another process \\(node-a pid 1"):
            RunLock(tmp_path).acquire()


# ---- on a real one-node Slurm ----

@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node Slurm on this machine (tests/slurm/start_cluster.sh: apt-get install slurm-wlm munge,
    munged, slurmctld, slurmd; ~1 min the first time, seconds when it runs already); the Slurm daemons it
    started are stopped at the end of the session."""
    pytest.importorskip("submitit", reason="pip install -e '.[slurm]'")
    if shutil.which("sinfo") is None and os.geteuid() != 0:
        pytest.skip("no Slurm here, and starting one (tests/slurm/start_cluster.sh) needs root")
    got = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if got.returncode == 3:
        pytest.skip(got.stderr.strip())
    assert got.returncode == 0, got.stdout + got.stderr
    yield got.stdout.strip()
    if "slurm: started" in got.stdout:
        subprocess.run(["bash", str(SCRIPT), "stop"], timeout=60)


def sigterm_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(m, 16) for m in re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$", status, re.M)]
    return any(m & (1 << (signal.SIGTERM - 1)) for m in masks)


def squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout.strip()


def stop_mid_run(run: Path, job: str, timeout: float = 600) -> int:
    """Freeze ``run``'s training process once it saved its first epoch, have Slurm send its task SIGUSR2
    (as 90 s before a time limit), and thaw it once the task asked it to stop: it stops mid-run, for sure.
    Then, once the task requeued itself, start it now rather than in Slurm's 2 minutes (BeginTime)."""
    deadline = time.time() + timeout
    while True:
        assert time.time() < deadline, f"{run} never saved an epoch"
        try:
            pid = json.loads((run / ".writer.lock").read_text())["pid"]
            if (run / "checkpoints" / "last" / "trainer_state.json").is_file():
                os.kill(pid, signal.SIGSTOP)
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    epoch = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())["epoch"]
    assert 1 <= epoch < EPOCHS
    # Slurm 22.05 answers a signal to a running array task with "transitional state" and scancel retries
    # (re-sending it) for as long as the task is in the queue: so it runs beside, the task must take the
    # signal once, and it is ended once the task was requeued
    scancel = subprocess.Popen(["scancel", "--signal=USR2", job], stderr=subprocess.DEVNULL)
    try:
        while not sigterm_pending(pid):  # the task's checkpoint() has asked the child to save and stop
            assert time.time() < deadline, "the task never passed the stop on"
            time.sleep(0.05)
        os.kill(pid, signal.SIGCONT)
        while not squeue_state(job).startswith("PENDING"):
            assert time.time() < deadline, f"{job} was not requeued: {squeue_state(job)}"
            time.sleep(0.2)
    finally:
        scancel.kill()
        scancel.wait()
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=60)
    return epoch


def numbers(path: Path) -> list[dict]:
    """A report CSV without its times (wall and train seconds differ between any two runs) and paths."""
    return [{k: v for k, v in row.items() if not re.search(r"train_s|wall_s|seconds to|per_image", k)}
            for row in csv.DictReader(open(path))]


def logged(run: Path) -> list[dict]:
    """A run's metrics.jsonl without its clock: every loss, learning rate and val metric of every step."""
    return [{k: v for k, v in json.loads(line).items() if not re.search(r"time|images_per_s", k)}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.slurm  # 2 cells x 3 seeds on Slurm, one task requeued, + the same study locally: 3-6 min on 2 cores
def test_a_study_on_slurm_with_a_requeued_task_reports_what_a_local_sweep_reports(slurm_cluster, tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "title": "tiny", "config": CONFIG, "grid": {"model.name": ["hourglass", "unet"]}, "seeds": [0, 1, 2],
        "overrides": TINY, "primary": "test/dice", "select_on": "val", "report_on": "test",
        "compare": [["hourglass", "unet"]], "metrics": ["test/iou"], "slurm": {"time": 30, "cpus_per_task": 1}}))
    out, sweep = tmp_path / "slurm", tmp_path / "slurm" / "tiny"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, str(ROOT / "sandbox" / "sweep.py"), "--study", str(study), "--out-dir", str(out)]
    t0 = time.time()
    submitter = subprocess.Popen(argv + ["--launcher", "slurm"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=env, cwd=tmp_path)
    try:
        while not (sweep / "slurm" / "jobs.json").is_file():
            assert submitter.poll() is None, submitter.stdout.read()
            time.sleep(0.2)
        jobs = json.loads((sweep / "slurm" / "jobs.json").read_text())["runs"]
        assert sorted(jobs) == [f"tiny/model-{m}_s{s}" for m in ("hourglass", "unet") for s in (0, 1, 2)]
        stopped_at = stop_mid_run(sweep / STOPPED, jobs[f"tiny/{STOPPED}"])
        said = submitter.communicate(timeout=900)[0]
    finally:
        if submitter.poll() is None:  # the test failed: leave no task behind on the cluster
            submitter.kill()
            for job in set(json.loads((sweep / "slurm" / "jobs.json").read_text())["runs"].values()):
                subprocess.run(["scancel", job.split("_")[0]], timeout=60)
    print(f"Slurm study with one requeue: {time.time() - t0:.0f} s; stopped at epoch {stopped_at}")
    assert submitter.returncode == 0, said
    assert "6 of 6 runs finished" in (sweep / "report.md").read_text()
    # the stopped task saved, was requeued by itself, and its second start resumed the run
    job = jobs[f"tiny/{STOPPED}"]
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown, shown
    assert "stopped by SIGTERM: checkpoints/last holds" in (sweep / "logs" / f"{STOPPED}.log").read_text()
    task_log = (sweep / "slurm" / f"{job}_0_log.out").read_text()
    assert f"tiny/{STOPPED}: training" in task_log and f"tiny/{STOPPED}: resuming" in task_log
    # ... having waited for train.py to save and exit (143: SIGTERM) before it requeued
    saved = task_log.index(f"tiny/{STOPPED}: train.py stopped for the requeue (exit 143)")
    assert saved < task_log.index("Requeued job") < task_log.index(f"tiny/{STOPPED}: resuming")
    status = subprocess.run(argv + ["--status"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("| done | 3/3 |") == 6, status.stdout + status.stderr
    # the same study, locally, in this process: the same numbers
    local = tmp_path / "local"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["sweep.py", "--study", str(study), "--out-dir", str(local), "--in-process"])
        command("sweep").main()
    for name in ("report_runs.csv", "report.csv", "comparisons.csv"):
        assert numbers(sweep / name) == numbers(local / "tiny" / name), name
    assert logged(sweep / STOPPED) == logged(local / "tiny" / STOPPED)  # the resumed run: step for step
    assert float(next(r for r in csv.DictReader(open(sweep / "report_runs.csv")) if r["run"] == f"tiny/{STOPPED}")
                 ["test/dice"]) > 0  # a run that learnt something, so that equal numbers say something
    # --report from what is finished: a run gone is left out and named
    shutil.rmtree(sweep / "model-unet_s2")
    got = subprocess.run(argv + ["--report"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert "5 of 6 runs finished" in got.stdout
    assert "## Not finished: 1 of 6 runs (left out above)" in got.stdout and "| tiny/model-unet_s2 | not started |" in got.stdout
