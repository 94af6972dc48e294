"""Sweeps and studies on Slurm (``sweep.py --launcher slurm``): one array task per (cell, seed) through
submitit (analysis/slurm_task.py: what each task does, how a stop requeues it); resources from the flags
or the study file's ``slurm:``; ``--status`` and ``--report``.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from sandbox.analysis.slurm_task import RunTask, read_jobs, queued, status_rows, write_report
from sandbox.analysis.sweep import Spec, run_state
from sandbox.analysis.tables import format_table
from sandbox.errors import ConfigError, SandboxError

MAX_TIMEOUTS = 10  # time limits a task may hit, each followed by a requeue that resumes (submitit's default: 3)
NOT_EXTRA = ("array", "output", "error", "signal", "open-mode", "job-name")  # submitit's own

FLAGS = {"partition": "--partition", "time": "--time", "gpus_per_task": "--gpus-per-task",
         "cpus_per_task": "--cpus-per-task", "mem": "--mem", "array_parallelism": "--array-parallelism",
         "extra": "--slurm-extra"}


def add_arguments(parser) -> None:
    g = parser.add_argument_group("Slurm (--launcher slurm; a study file's slurm: {partition: ..., time: ...} too)")
    g.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: here, one run after another (--jobs N); slurm: one array task per run")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--time", help="time limit per task: minutes or [D-]HH:MM:SS (default 60); a requeue resumes")
    g.add_argument("--gpus-per-task", type=int, help="GPUs per task (more than 1: accelerate launch inside it)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs per task (also the run's train.threads unless set)")
    g.add_argument("--mem", help="memory per task, as sbatch's --mem (e.g. 16G)")
    g.add_argument("--array-parallelism", type=int, help="array tasks running at once (default 256)")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="another sbatch parameter, e.g. --slurm-extra qos=high (repeat; a bare KEY is a flag)")
    g.add_argument("--no-wait", action="store_true", help="submit and return (the last task writes the report)")
    g.add_argument("--status", action="store_true", help="per run: done, running, failed ... (run dirs, Slurm)")
    g.add_argument("--report", action="store_true", help="write the report from the finished runs, train nothing")


def minutes(value) -> int:
    """Slurm's time formats -> whole minutes: ``90``, ``MM:SS``, ``H:MM:SS``, ``D-H[:MM[:SS]]``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise ConfigError(f"--time {value!r}: expected minutes or [D-]HH:MM:SS, e.g. 90 or 1:30:00")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-H, D-H:M, D-H:M:S
        seconds = d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    else:  # M, M:S, H:M:S
        seconds = a * 3600 + b * 60 + c if c is not None else a * 60 + (b or 0)
    if seconds < 60:
        raise ConfigError(f"--time {value!r}: at least a minute (the task must have time to save)")
    return -(-seconds // 60)


def resources(study: dict, args) -> dict:
    """submitit's parameters from the flags, else the study file's ``slurm:``; every value checked."""
    given = study.get("slurm") or {}
    if not isinstance(given, dict) or set(given) - set(FLAGS):
        raise ConfigError(f"slurm: got {given!r}; accepted keys: {', '.join(FLAGS)}")
    pick = {k: getattr(args, "slurm_extra" if k == "extra" else k, None) for k in FLAGS}
    pick = {k: (v if v not in (None, []) else given.get(k)) for k, v in pick.items()}
    params = {"time": minutes(pick["time"] or 60), "additional_parameters": {"chdir": os.getcwd()}}
    for key, low in (("gpus_per_task", 0), ("cpus_per_task", 1), ("array_parallelism", 1)):
        v = pick[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ConfigError(f"{FLAGS[key]} {v!r}: expected a whole number, at least {low}")
        if v:
            params[key] = v
    if pick["partition"]:
        params["partition"] = str(pick["partition"])
    if pick["mem"] is not None:
        if not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", str(pick["mem"])):
            raise ConfigError(f"--mem {pick['mem']!r}: expected sbatch's size, e.g. 16G or 16000M")
        params["mem"] = str(pick["mem"])
    for item in pick["extra"] or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or key.replace("_", "-") in NOT_EXTRA:
            raise ConfigError(f"--slurm-extra {item!r}: expected KEY=VALUE or KEY, an sbatch parameter other "
                              f"than {', '.join(NOT_EXTRA)} (set by the launcher)")
        params["additional_parameters"][key] = value if sep else True
    return params


def array_plan(specs: list[Spec], config: str, queued: set[str] = frozenset()) -> list[tuple[Spec, str]]:
    """The runs that become array tasks, with their state (new, partial, broken): not the finished ones,
    nor those a task of an earlier submission still holds (pending or running: one writer per run)."""
    return [(s, st) for s in specs if s.name not in queued and (st := run_state(s, config)) != "done"]


def submit(tasks: list[RunTask], params: dict, folder: Path, name: str) -> list[str]:
    """One array (one job for a single task); jobs.json records each run's task. Returns the task ids."""
    try:
        import submitit
    except ImportError:
        raise SandboxError("--launcher slurm needs submitit: pip install -e '.[slurm]' (or pip install "
                           "'submitit>=1.5')") from None
    from submitit.core.utils import FailedJobError

    folder.mkdir(parents=True, exist_ok=True)
    try:
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError:
        raise SandboxError("--launcher slurm: no srun on this machine; submit from a machine of the Slurm "
                           "cluster (a login node)") from None
    ex.update_parameters(job_name=name, **params)
    try:
        with ex.batch():
            jobs = [ex.submit(t) for t in tasks]
    except FailedJobError as exc:
        raise SandboxError(f"sbatch refused the array: {str(exc).strip().splitlines()[-1]}") from None
    record = read_jobs(folder)
    record.setdefault("submitted", time.time())
    record["runs"].update({t.spec.name: j.job_id for t, j in zip(tasks, jobs)})
    (folder / "jobs.json").write_text(json.dumps(record, indent=1))
    return [j.job_id for j in jobs]


def launch(args, specs: list[Spec], config: str, study: dict, metric: str, sweep_dir: Path, command: str,
           poll_s: float = 10.0) -> str:
    """``sweep.py --launcher slurm`` (submit, wait, report), ``--status`` or ``--report``: returns the text
    to print; raises SandboxError naming the runs that did not finish."""
    folder = sweep_dir / "slurm"
    if args.status:
        return format_table(status_rows(specs, config, folder))
    if args.report:
        return write_report(specs, config, study, metric, sweep_dir, command).read_text()
    params = resources(study, args)
    busy = queued(read_jobs(folder)["runs"])
    todo = array_plan(specs, config, set(busy))
    for s in specs:
        print(f"{s.name}: " + ("queued earlier (" + busy[s.name].lower() + ")" if s.name in busy else
                               dict((x.name, st) for x, st in todo).get(s.name, "finished, skipped")))
    if todo:
        tasks = [RunTask(s, config, study, specs, metric, command, params.get("gpus_per_task", 0),
                         params.get("cpus_per_task")) for s, _ in todo]
        ids = submit(tasks, params, folder, sweep_dir.name)
        print(f"submitted {len(ids)} task(s) as Slurm job {ids[0].split('_')[0]}; logs in {folder}", flush=True)
    if args.no_wait:
        return f"status: {command} --status; the last task writes {sweep_dir}/report.md"
    seen = None
    while left := queued(read_jobs(folder)["runs"]):
        now = f"{len(left)} of {len(specs)} runs in Slurm's queue ({sum(v == 'RUNNING' for v in left.values())} running)"
        if now != seen:
            print(now, flush=True)
            seen = now
        time.sleep(poll_s)
    missing = [r["run"] + ": " + r["state"] for r in status_rows(specs, config, folder) if r["state"] != "done"]
    report = write_report(specs, config, study, metric, sweep_dir, command) if len(missing) < len(specs) else None
    if missing:  # Ctrl-C above only stops the waiting: the tasks go on, and --status / --report see them
        raise SandboxError(f"{len(missing)} of {len(specs)} runs did not finish ({'; '.join(missing)}); logs in "
                           f"{folder} and {sweep_dir / 'logs'}; the same command resubmits them")
    return report.read_text()
