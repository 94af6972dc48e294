"""Sweeps: a grid of config values x seeds planned as runs, executed (resumably) and summarised."""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox.analysis.study import (PROTOCOL_KEYS, check_metrics, evaluate_finished_run, generative,
                                    parse_protocol, protocol_overrides)
from sandbox.analysis.children import Child, run_children, sweep_stopped
from sandbox.config.loading import load_config, load_yaml_text, read_yaml
from sandbox.config.schema import Config
from sandbox.engine.stops import RunStopped, checkpoints_held
from sandbox.errors import ConfigError, SandboxError
from sandbox.runs.checkpoints import find_checkpoint, read_state
from sandbox.runs.lock import RunLock
from sandbox.runs.rundir import RunDir
from sandbox.trainers import build_trainer

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
RESERVED = {"seed": "use --seeds N", "name": "the sweep names its runs (--name)", "out_dir": "use --out-dir",
            "track.group": "the sweep's name is the group", "train.resume": "the sweep resumes by itself"}
STUDY_KEYS = ("title", "description", "config", "grid", "seeds", "overrides", "metric", "expected_minutes",
              "slurm", *PROTOCOL_KEYS)  # slurm: resources of --launcher slurm (analysis/slurm.py)
IGNORED_DIFF = ("source", "train.resume", "train.threads", "track.", "data.splits")  # may differ between invocations


@dataclass
class Cell:
    name: str  # e.g. "model-unet_depth-3"
    labels: dict[str, str]  # axis -> value label
    overrides: dict[str, Any]  # dotted key -> value
    axis_of: dict[str, str]  # dotted key -> the (short) axis that sets it


@dataclass
class Spec:
    cell: Cell
    seed: int
    name: str  # <sweep>/<cell>_s<seed>
    path: Path
    overrides: list[str]
    epochs: int


def slug(v: Any) -> str:
    """A value as a file-name-safe label: ``{l1: 0.16, ms_ssim: 0.84}`` -> ``l1-0.16+ms_ssim-0.84``."""
    if isinstance(v, dict):
        s = "+".join(f"{k}-{slug(x)}" for k, x in v.items())
    elif isinstance(v, (list, tuple)):
        s = "-".join(slug(x) for x in v)
    else:
        s = f"{v:g}" if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9._+-]", "", s)


def override(key: str, value: Any) -> str:
    """``key=value`` that :func:`sandbox.config.parse_overrides` reads back as ``value`` (JSON is YAML)."""
    plain = isinstance(value, str) and value and load_yaml_text(value) == value
    return f"{key}={value if plain else json.dumps(value)}"


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["model.name=unet,hourglass", "model.depth=2,3"]`` -> ``{"model.name": ["unet", "hourglass"], ...}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected key.path=v1,v2 (e.g. --grid model.name=unet,hourglass)")
        try:
            values = load_yaml_text(f"[{raw}]")  # a flow sequence: lists and mappings stay whole
        except yaml.YAMLError:
            raise ConfigError(f"--grid {key}: {raw!r} is not a comma-separated list of YAML values") from None
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; put all its values in one --grid {key}=v1,v2")
        grid[key] = values
    return grid


def make_cells(grid: dict[str, Any]) -> list[Cell]:
    """Cartesian product of the axes. An axis is ``key: [v1, v2]`` or a named axis whose values set
    several keys at once, ``train_size: {1pct: {data.num_train: 6, train.epochs: 40}, ...}``."""
    if not grid:
        raise ConfigError("no grid: give at least one --grid key=v1,v2 (or a grid: in the study file)")
    axes = []
    for key, values in grid.items():
        # a named value may be {}: the base config as it is (e.g. "scratch" beside "warm-started")
        if isinstance(values, dict) and values and all(isinstance(v, dict) for v in values.values()):
            axes.append((key, [(slug(lab), dict(ov)) for lab, ov in values.items()]))
        elif isinstance(values, list) and values:
            axes.append((key, [(slug(v), {key: v}) for v in values]))
        else:
            raise ConfigError(f"grid {key}: got {values!r}, expected a non-empty list of values "
                              "(or a mapping {label: {key.path: value, ...}}; {} is the base config as it is)")
        labels = [lab for lab, _ in axes[-1][1]]
        if len(set(labels)) < len(labels):
            raise ConfigError(f"grid {key}: values {labels} repeat; give each value once")
        for _, ov in axes[-1][1]:
            for k in ov:
                if str(k) in RESERVED:
                    raise ConfigError(f"grid {k}: set by the sweep itself; {RESERVED[str(k)]}")
    shorts = [k if isinstance(grid[k], dict) else k.split(".")[-2 if k.endswith(".name") else -1] for k, _ in axes]
    if len(set(shorts)) < len(shorts):
        shorts = [k.replace(".", "-") for k, _ in axes]
    cells = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        name = "_".join(f"{s}-{lab}" for s, (lab, _) in zip(shorts, combo))
        cells.append(Cell(name, {s: lab for s, (lab, _) in zip(shorts, combo)},
                          {k: v for _, ov in combo for k, v in ov.items()},
                          {k: s for s, (_, ov) in zip(shorts, combo) for k in ov}))
    return cells


def plan(config: str, cells: list[Cell], seeds: int | list[int], extra: list[str], name: str,
         out_dir: Path) -> list[Spec]:
    """Every (cell, seed) as a run; every cell's config is loaded first, so a bad key stops before training.
    ``seeds``: a count N (seeds seed..seed+N-1 of the config) or the list of seeds itself."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"--name {name!r}: expected letters, digits, '.', '_' or '-' (it names runs/<name>/)")
    if isinstance(seeds, int) and seeds < 1:
        raise ConfigError(f"--seeds: got {seeds}, expected 1 or more")
    base = load_config(config, extra)
    seed_list = list(range(base.seed, base.seed + seeds)) if isinstance(seeds, int) else list(seeds)
    specs = []
    for cell in cells:
        cell_ov = [override(k, v) for k, v in cell.overrides.items()]
        try:
            cfg = load_config(config, extra + cell_ov)
        except ConfigError as exc:
            raise ConfigError(f"grid {' '.join(cell_ov)}: {exc}") from None
        for seed in seed_list:
            run = f"{name}/{cell.name}_s{seed}"
            tags = list(base.track.tags) + [f"{a}={lab}"[:64] for a, lab in cell.labels.items()] + [f"seed={seed}"]
            ov = extra + cell_ov + [f"seed={seed}", f"name={run}", f"out_dir={out_dir}", f"track.group={name}",
                                    f"track.tags={json.dumps(tags)}"]
            specs.append(Spec(cell, seed, run, out_dir / run, ov, cfg.train.epochs))
    return specs


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()} if d else {prefix: d}


def run_state(spec: Spec, config: str) -> str:
    """``new`` | ``done`` (a checkpoint at train.epochs) | ``partial`` (resumable) | ``broken`` (no checkpoint).
    A run trained with other settings than planned is refused (rerunning must not mix experiments)."""
    if not RunDir(spec.path).exists():
        return "new"
    if (spec.path / "config.yaml").is_file():
        there = _flat(read_yaml(spec.path / "config.yaml"))
        here = _flat(load_config(config, spec.overrides).to_dict())
        # a key the run's config.yaml does not hold was added to the schema since: it trained at the default
        default = _flat(Config().to_dict())
        # a model key it holds that this family has not: the flat model section of earlier versions, each other
        # family's key at its unused value (loading such a config.yaml refuses any other value)
        diff = [k for k in sorted(set(there) | set(here)) if there.get(k, default.get(k)) != here.get(k)
                and not k.rstrip(".").startswith(IGNORED_DIFF) and (k in here or not k.startswith("model."))]
        if diff:
            k = diff[0].rstrip(".")
            raise SandboxError(f"{spec.path} was trained with {k}={there.get(diff[0])!r}, this sweep plans "
                               f"{here.get(diff[0])!r}; keep the sweep's settings or pick another --name")
    try:
        state = read_state(find_checkpoint(spec.path))
    except SandboxError:
        return "broken"
    return "done" if state.get("epoch", 0) >= spec.epochs and not state.get("batch") else "partial"


def _train_in_process(spec: Spec, config: str, resume: bool) -> int:
    build_trainer(load_config(config, spec.overrides + ([f"train.resume={spec.path}"] if resume else []))).fit()
    return 0


class SweepProgress:
    """``[run k of N]`` as runs start and, as they end, how many are done and an ETA: the mean time of
    the runs finished so far times the rounds of ``jobs`` parallel runs still to go (failed runs count
    as done but not in the mean: a failure says nothing of how long a run takes)."""

    def __init__(self, total: int, jobs: int = 1):
        self.total, self.jobs, self.started, self.ended, self.times = total, max(1, jobs), 0, 0, []

    def start(self, name: str) -> str:
        self.started += 1
        return f"[run {self.started} of {self.total}] {name}"

    def finish(self, seconds: float | None) -> str:
        """``seconds``: the run's wall time, None for a failed run."""
        self.ended += 1
        if seconds is not None:
            self.times.append(seconds)
        left = self.total - self.ended
        if not left or not self.times:
            return f"{self.ended} of {self.total} done"
        eta = sum(self.times) / len(self.times) * math.ceil(left / self.jobs)
        return f"{self.ended} of {self.total} done, about {_duration(eta)} left"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else (f"{seconds / 60:.1f} min" if seconds < 5400
                                                     else f"{seconds / 3600:.1f} h")


def train_command(spec: Spec, config: str, resume: bool, extra: list[str] = ()) -> list[str]:
    """The one command that trains ``spec`` (a sweep's child, a Slurm task's): started, or resumed in place."""
    return [sys.executable, str(TRAIN), "--config", config, *spec.overrides, *extra] \
        + (["--resume", str(spec.path)] if resume else [])


def execute(specs: list[Spec], config: str, jobs: int = 1, in_process: bool = False,
            command: str = "the same sweep command") -> list[str]:
    """Train what is not done yet; returns the names of runs that failed (the others still run).
    A SIGTERM/SIGINT stops the runs under way the way a run stops (each saves its checkpoint), says
    so with ``command`` (the way on: it skips finished runs and resumes partial ones) and raises
    :class:`~sandbox.engine.stops.RunStopped` (exit 128 + signal)."""
    for spec in specs:
        _refuse_live_writer(spec)
    todo = []
    for i, spec in enumerate(specs, 1):
        state = run_state(spec, config)
        if state == "broken":  # killed before its first checkpoint: nothing to keep
            shutil.rmtree(spec.path)
        print(f"[{i}/{len(specs)}] {spec.name}: " + {"done": "finished, skipped", "partial": "resuming",
                                                      "broken": "no checkpoint, restarting"}.get(state, "queued"))
        if state != "done":
            todo.append((spec, state == "partial"))
    clock = SweepProgress(len(todo), 1 if in_process else jobs)
    if in_process:
        return _execute_in_process(todo, config, clock, command)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = [f"train.threads={max(1, cores // jobs)}"] if jobs > 1 else []
    runs = [Child(spec.name, spec.path, train_command(spec, config, resume, threads),
                  spec.path.parent / "logs" / f"{Path(spec.name).name}.log") for spec, resume in todo]
    return run_children(runs, jobs, clock, command)


def _execute_in_process(todo: list[tuple[Spec, bool]], config: str, clock: SweepProgress, command: str) -> list[str]:
    """The runs one after another in this process. The run's own SignalStop handles a signal while it
    trains (saves, stops: RunStopped); the sweep adds its line. Between runs a signal acts as by default."""
    failed = []
    for k, (spec, resume) in enumerate(todo):
        t0 = time.time()
        print(f"{clock.start(spec.name)}: training", flush=True)
        try:
            _train_in_process(spec, config, resume)
            print(f"{spec.name}: finished in {time.time() - t0:.0f} s ({clock.finish(time.time() - t0)})")
        except SandboxError as exc:
            print(f"{spec.name}: FAILED: {exc} ({clock.finish(None)})")
            failed.append(spec.name)
        except RunStopped as exc:  # it saved and said how to resume it; the sweep says how to go on
            held = checkpoints_held(RunDir(spec.path))[0] or "no checkpoint yet (it starts afresh)"
            sweep_stopped(exc.exit_code - 128, [f"{spec.name} stopped, {held}"], len(todo) - k - 1, command)
    return failed


def _refuse_live_writer(spec: Spec) -> None:
    """A run still written by a live process (a sweep stopped without stopping its children, another
    sweep of the same runs) is neither resumed nor restarted under it: one writer per run."""
    lock = RunLock(spec.path)
    if lock.holder() is not None:
        lock.acquire()  # refuses, naming the holder, unless that process is gone (then taken over)
        lock.release()


def study_overrides(study: dict) -> list[str]:
    """A study's overrides for every run: its protocol's (``select_on: val/<metric>``), then its own."""
    return protocol_overrides(study.get("protocol") or {}) + [str(o) for o in study.get("overrides", [])]


def evaluate_finished(specs: list[Spec], config: str, study: dict) -> list[str]:
    """A study reporting on test: score every finished run there from checkpoints/best, once (a rerun
    keeps the files it finds, so an interrupted study evaluates only what it had not); reporting on val:
    the same for generative runs (their samples and latent probe; a segmentation run's val metrics are in
    its metrics.jsonl). Returns the runs whose evaluation failed. Nothing to do for a plain sweep."""
    protocol = study.get("protocol") or {}
    split = protocol.get("report_on")
    if split not in ("test", "val"):
        return []
    failed = []
    for spec in specs:
        try:
            if run_state(spec, config) == "done" and (split == "test" or generative(spec.path)):
                evaluate_finished_run(spec.path, split, sample_eval=protocol.get("sample_eval"))
        except SandboxError as exc:
            print(f"{spec.name}: evaluation on {split} FAILED: {exc}")
            failed.append(spec.name)
    return failed


def check_study(study: dict, path: str, config: str, specs: list[Spec]) -> None:
    """What the study's protocol needs of its cells (metrics each produces), checked before training;
    and the console's one line when there are too few seeds for an interval."""
    protocol = study.get("protocol")
    if not protocol:
        return
    configs = {s.cell.name: load_config(config, s.overrides) for s in specs if s.seed == specs[0].seed}
    check_metrics(protocol, configs, path)
    seeds = sorted({s.seed for s in specs})
    if len(seeds) < 3:
        print(f"warning: {len(seeds)} seed(s) per cell: fewer than 3, so report.md gives no confidence interval")


def load_study(path: str) -> dict:
    """A study file, checked (one line per error); its protocol parsed into ``study["protocol"]``."""
    study = read_yaml(path)
    unknown = [k for k in study if k not in STUDY_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; accepted: {', '.join(STUDY_KEYS)}")
    for key in ("config", "grid"):
        if key not in study:
            raise ConfigError(f"{path}: missing {key!r}; a study needs config: <yaml> and grid: {{key: [values]}}")
    if not isinstance(study.get("overrides", []), list):
        raise ConfigError(f"{path}: overrides: expected a list of key.path=value strings")
    seeds = study.get("seeds", 1)
    good = (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1) or (
        isinstance(seeds, list) and seeds and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                  for x in seeds) and len(set(seeds)) == len(seeds))
    if not good:
        raise ConfigError(f"{path}: seeds: got {seeds!r}, expected a list of distinct seeds such as [0, 1, 2] "
                          "(at least 1; 3 or more for a confidence interval) or a count")
    study["protocol"] = parse_protocol(study, path, make_cells(study["grid"]))
    return study
