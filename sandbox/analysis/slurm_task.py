"""A Slurm array task of ``sweep.py --launcher slurm`` (analysis/slurm.py submits them), and what reads
their traces back: ``--status``, the report.

A task runs the command a local sweep runs for its run (analysis/sweep.py ``train_command``: a finished run
is skipped, a partial one resumed, one without a checkpoint restarted; train.py's lock keeps one writer per
run), then scores it on the report split, so the report needs no training or GPU afterwards; the task
that finds every run done writes the report.
Stops: submitit asks Slurm for SIGUSR2 90 s before the time limit (``--signal=USR2@90``; ``scancel
--signal=USR2`` does the same). The training child ignores it; the task's ``checkpoint`` sends the child
SIGTERM, waits for it to save checkpoints/last (train.py: engine/stops.py) and hands submitit a copy of
itself, which requeues the task: it resumes from that checkpoint. A SIGTERM from Slurm itself (preemption)
reaches the child directly: it saves and exits 143, and the task fails unless Slurm requeues it.
Files in ``<sweep>/slurm/``: submitit's per-task logs and pickles (``<job>_<task>_0_log.out/.err``),
``jobs.json`` (run -> its array task), ``<run>.json`` (what the task last said: running, done, failed,
requeued). The training output goes to ``<sweep>/logs/<run>.log``, as in a local sweep.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sandbox.analysis.sweep import Spec, evaluate_finished, run_state, train_command
from sandbox.analysis.sweep_report import write_summary
from sandbox.analysis.tables import format_table
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import find_checkpoint, read_state

STOP_WAIT_S = 80  # the child's save after SIGTERM: within submitit's 90 s between USR2 and the time limit


def _task_extra(spec: Spec, cpus: int | None) -> list[str]:
    threads = cpus and not any(o.startswith("train.threads=") for o in spec.overrides)
    return [f"train.threads={cpus}"] if threads else []


def task_command(spec: Spec, config: str, resume: bool, gpus: int = 0, cpus: int | None = None) -> list[str]:
    """The sweep's command for ``spec``; with 2 or more GPUs it runs under ``accelerate launch`` (one
    process per GPU on the task's node, as examples/slurm does per node)."""
    cmd = train_command(spec, config, resume, _task_extra(spec, cpus))
    if gpus < 2:
        return cmd
    port = 20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000  # tasks sharing a node: other ports
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
            "--num_processes", str(gpus), "--main_process_port", str(port), "--dynamo_backend", "no", *cmd[1:]]


def _ended(pid: int) -> int | None:
    """The child's exit status (128 + signal where a signal ended it), None while it runs. Asked without
    reaping it (WNOWAIT), so Popen's own wait still works; safe in a signal handler that interrupted it."""
    try:
        got = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped: it ended, with a status that is no longer ours to read
        return -1
    if got is None:
        return None
    return got.si_status if got.si_code == os.CLD_EXITED else 128 + got.si_status


def _preempt_signal() -> int:
    from submitit.slurm.slurm import SlurmJobEnvironment
    return getattr(signal, "SIG" + SlurmJobEnvironment.USR_SIG)


class RunTask:
    """One array task: train (or resume, or skip) one run, score it, report if it is the last."""

    def __init__(self, spec: Spec, config: str, study: dict, specs: list[Spec], metric: str, command: str,
                 gpus: int = 0, cpus: int | None = None):
        self.args = dict(spec=spec, config=config, study=study, specs=specs, metric=metric, command=command,
                         gpus=gpus, cpus=cpus)
        self.spec, self.config, self.study, self.gpus, self.cpus = spec, config, study, gpus, cpus
        self.folder = spec.path.parent / "slurm"
        self._proc = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proc": None}

    def __call__(self) -> str:
        spec, t0 = self.spec, time.time()
        self._say("running")
        state = run_state(spec, self.config)
        if state == "broken":  # killed before its first checkpoint: nothing to keep
            shutil.rmtree(spec.path)
        print(f"{spec.name}: " + {"done": "finished, skipped", "partial": "resuming"}.get(state, "training"),
              flush=True)
        if state != "done" and (code := self._train(state == "partial")) != 0:
            log = spec.path.parent / "logs" / f"{Path(spec.name).name}.log"
            tail = ([ln for ln in log.read_text().splitlines() if ln.strip()] or ["(no output)"])[-1]
            self._say("failed", f"exit {code}: {tail}")
            raise SandboxError(f"{spec.name}: train.py exited with {code}: {tail} (log {log})")
        if evaluate_finished([spec], self.config, self.study):
            self._say("failed", "its evaluation failed")
            raise SandboxError(f"{spec.name}: its evaluation failed (see this task's log)")
        self._say("done", f"in {time.time() - t0:.0f} s")
        specs = self.args["specs"]
        if all(_said(s).get("state", "done" if run_state(s, self.config) == "done" else "") == "done" for s in specs):
            write_report(specs, self.config, self.study, self.args["metric"], self.folder.parent,
                         self.args["command"], wait=False)
        return "done"

    def _train(self, resume: bool) -> int:
        log = self.spec.path.parent / "logs" / f"{Path(self.spec.name).name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        usr = _preempt_signal()
        with open(log, "a") as f:  # own session: a stop reaches every process of the run (accelerate's too)
            self._proc = subprocess.Popen(task_command(self.spec, self.config, resume, self.gpus, self.cpus),
                                          stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=lambda: signal.signal(usr, signal.SIG_IGN))
            while self._proc.poll() is None:
                time.sleep(0.5)
        return self._proc.returncode

    def checkpoint(self):
        """submitit, on SIGUSR2 (time limit near, or scancel --signal=USR2): stop the child so that it saves,
        then requeue a fresh copy of this task (it resumes the run). The signal stays blocked in this
        process, which submitit ends after the requeue."""
        from submitit.helpers import DelayedSubmission

        # one stop, one requeue: Slurm may repeat the signal (scancel --signal retries on an array task), and
        # a second SIGTERM to the child more than a second after the first would end it mid-save
        signal.pthread_sigmask(signal.SIG_BLOCK, {_preempt_signal()})
        proc = self._proc
        if proc is not None and _ended(proc.pid) is None:
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
            while _ended(proc.pid) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if _ended(proc.pid) is None:  # no save in time: the previous checkpoint is still whole
                os.killpg(proc.pid, signal.SIGKILL)
                print(f"{self.spec.name}: no save within {STOP_WAIT_S} s of SIGTERM: killed", flush=True)
            else:  # 143: train.py saved checkpoints/last and stopped (engine/stops.py)
                print(f"{self.spec.name}: train.py stopped for the requeue (exit {_ended(proc.pid)})", flush=True)
        self._say("requeued", "stopped to be requeued; it resumes from checkpoints/last")
        return DelayedSubmission(RunTask(**self.args))

    def _say(self, state: str, note: str = "") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        job = os.environ.get("SLURM_ARRAY_JOB_ID", "") + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", "")
        tmp = self.folder / f".{Path(self.spec.name).name}.json.tmp"
        tmp.write_text(json.dumps({"state": state, "note": note, "job": job, "host": os.uname().nodename,
                                   "time": time.strftime("%Y-%m-%d %H:%M:%S")}))
        tmp.replace(self.folder / f"{Path(self.spec.name).name}.json")


def _said(spec: Spec) -> dict:
    """What the run's task last wrote (``<sweep>/slurm/<run>.json``), {} if none."""
    try:
        return json.loads((spec.path.parent / "slurm" / f"{Path(spec.name).name}.json").read_text())
    except (OSError, ValueError):
        return {}


def queued(jobs: dict[str, str]) -> dict[str, str]:
    """``{run: Slurm state}`` of the runs whose array task is still in Slurm's queue (pending, running,
    requeued, completing), from squeue; ``jobs``: ``{run: "<array>_<task>"}`` (jobs.json)."""
    if not jobs or shutil.which("squeue") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in jobs.values()})
    got = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)], capture_output=True,
                         text=True, timeout=60)
    if got.returncode != 0 and "Invalid job id" not in got.stderr:  # a purged array: not in the queue
        raise SandboxError(f"squeue: {(got.stderr.strip() or 'failed').splitlines()[-1]}")
    state = dict(ln.split("|", 1) for ln in got.stdout.split() if "|" in ln)
    return {run: state[j] for run, j in jobs.items() if j in state}


def read_jobs(folder: Path) -> dict:
    """jobs.json: ``{"submitted": time, "runs": {run: "<array>_<task>"}}``."""
    try:
        return json.loads((folder / "jobs.json").read_text())
    except (OSError, ValueError):
        return {"runs": {}}


def status_rows(specs: list[Spec], config: str, folder: Path) -> list[dict]:
    """Per run: done / pending / running / failed: why / stopped at epoch k / not started, from the run
    directories, squeue and what each task wrote."""
    jobs = read_jobs(folder)["runs"]
    live = queued({s.name: jobs[s.name] for s in specs if s.name in jobs})
    rows = []
    for s in specs:
        try:
            state = run_state(s, config)
        except SandboxError as exc:
            state = f"other settings: {exc}"
        said = _said(s)
        epoch = read_state(find_checkpoint(s.path)).get("epoch", 0) if state in ("partial", "done") else 0
        if state == "done":
            shown = "done" if said.get("state") in (None, "done") else "trained, scoring on the report split"
        elif s.name in live:
            shown = live[s.name].lower()
        elif said.get("state") == "failed":
            shown = f"failed: {said.get('note', '')}"
        else:
            shown = {"partial": "stopped", "new": "not started", "broken": "no checkpoint"}.get(state, state)
        rows.append({"run": s.name, "state": shown, "epochs": f"{epoch}/{s.epochs}", "job": jobs.get(s.name, "")})
    return rows


def write_report(specs: list[Spec], config: str, study: dict, metric: str, sweep_dir: Path, command: str,
                 wait: bool = True) -> Path | None:
    """The sweep's report from its finished runs (scored first where the protocol asks), runs not finished
    listed at its end; one writer at a time (a lock; ``wait=False``: None if another holds it)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".report.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        evaluate_finished(specs, config, study)
        wall = time.time() - read_jobs(sweep_dir / "slurm").get("submitted", time.time())
        report = write_summary(specs, sweep_dir, metric, study, command, wall)
        rows = [r for r in status_rows(specs, config, sweep_dir / "slurm") if r["state"] != "done"]
        if rows:
            with open(report, "a") as f:
                f.write(f"\n## Not finished: {len(rows)} of {len(specs)} runs (left out above)\n\n"
                        + format_table(rows) + "\n")
    return report
