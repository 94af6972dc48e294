"""Staged runs: the stages of a config (``stages:``, :mod:`sandbox.config.stages`) trained in order under one
run directory (:mod:`sandbox.runs.stages`), each stage by its own trainer from :func:`build_trainer`.

    fit_stages(load_config("configs/unet_stages.yaml"))                      # train.py --config ...
    fit_stages(load_config("runs/unet_stages/config.yaml", ["train.resume=runs/unet_stages"]))  # --resume

Every (re)start trains the stages that are not done, in order: a stage holding a checkpoint resumes from
it (its own ``train.resume``), one holding none starts afresh (stage k > 1 from stage k-1's
checkpoints/last); a done stage is not touched. A stop (SIGTERM, Ctrl-C) names the staged run in its
resume command. With several processes every process runs this; the main process alone writes the top
directory (config.yaml, stages.json) and prints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Callable

from sandbox.config import Config
from sandbox.config.loading import save_config, stage_configs
from sandbox.config.stages import Stage
from sandbox.engine.console import stages_summary
from sandbox.errors import SandboxError
from sandbox.models import MODELS
from sandbox.runs.restart import clear_failed_start
from sandbox.runs.rundir import RunDir, complete_checkpoint, existing_run, resume_line
from sandbox.runs.stages import (STAGES_DIR, STAGES_FILE, is_staged, read_stages, stage_status, stages_record,
                                 write_stages)
from sandbox.trainers import build_trainer


def fit_stages(cfg: Config, restart: bool = False, say: Callable[[str], None] = print) -> str:
    """Train the stages of ``cfg`` (a config with ``stages:``; ``train.resume``: its staged run directory)
    that are not done; ``say`` gets each stage's start line and the end-of-run summary (main process), which
    is also returned. ``restart``: start afresh in place where no stage
    holds a checkpoint (a failed start), as ``--restart`` does for a run."""
    top, cfg, resuming = _top(cfg)
    stages = stage_configs(cfg)  # every stage checked before anything is written or trained
    main = os.environ.get("RANK", "0") in ("", "0")
    say = say if main else (lambda line: None)
    if main:
        _open(top, cfg, stages, resuming, restart)
    for stage in stages:
        where = top / STAGES_DIR / stage.dirname
        status, _ = stage_status(where, stage.cfg.train.epochs)
        head = f"stage {stage.index}/{len(stages)} {stage.name}"
        if status == "done":
            say(f"{head}: done ({where})")
            continue
        say(f"{head}: {where}" + (" (resumed)" if status == "started" else ""))
        run_cfg = stage.cfg
        if status == "started":  # it continues from its own checkpoint, started from the init_from it recorded
            # (the same stage checkpoint, whatever the spelling of the run's path now: relative, absolute, moved)
            run_cfg = dataclasses.replace(run_cfg, train=dataclasses.replace(
                run_cfg.train, resume=str(where), init_from=_recorded_init_from(where, run_cfg.train.init_from)))
        elif main and RunDir(where).exists():  # a start that stopped before its first checkpoint
            clear_failed_start(where)
        if main:
            _record(top, cfg, stages, running=stage.index)
        try:
            trainer = build_trainer(run_cfg)
            trainer.resume_path, trainer.next_trainer = top, stage is not stages[-1]
            trainer.fit()
        except BaseException:  # a stop (saved: RunStopped), an error: the record says so, the cause goes on
            if main:
                with contextlib.suppress(OSError, SandboxError):
                    _record(top, cfg, stages)
            raise
        del trainer
    if main:
        _record(top, cfg, stages)
    summary = _summary(top, stages)
    say(summary)
    return summary


def _recorded_init_from(stage_dir: Path, planned: str | None) -> str | None:
    """The ``train.init_from`` a started stage recorded in its config.yaml where it names the same stage
    checkpoint as ``planned`` (its tail from stages/ on), else ``planned`` (then the resume check refuses it)."""
    from sandbox.config.loading import read_yaml

    try:
        recorded = (read_yaml(stage_dir / "config.yaml").get("train") or {}).get("init_from")
    except SandboxError:
        return planned
    same = recorded and planned and Path(recorded).parts[-4:] == Path(planned).parts[-4:]  # stages/<k>_<name>/checkpoints/last
    return recorded if same else planned


def _top(cfg: Config) -> tuple[Path, Config, bool]:
    """(the staged run's directory, the base config, whether it is resumed)."""
    if not cfg.train.resume:
        group = cfg.track.group or (Path(cfg.source).stem if cfg.source else cfg.name)  # kept by every resume
        return Path(cfg.out_dir) / cfg.name, dataclasses.replace(
            cfg, track=dataclasses.replace(cfg.track, group=group)), False
    top = Path(cfg.train.resume)
    if not is_staged(top):
        raise SandboxError(f"train.resume: {str(top)!r} holds no staged run (no {STAGES_FILE}), but the config has "
                           f"stages:; continue a run with its own config.yaml: {resume_line(top)}")
    return top, dataclasses.replace(cfg, name=top.name, out_dir=str(top.parent),
                                    train=dataclasses.replace(cfg.train, resume=None)), True


def _open(top: Path, cfg: Config, stages: list[Stage], resuming: bool, restart: bool) -> None:
    """A new staged run: its directory, config.yaml and stages.json (never over another run). A resumed
    one: its stages must be the ones it started with. Main process."""
    planned = [f"{STAGES_DIR}/{s.dirname}" for s in stages]
    if resuming:
        recorded = [s.get("dir") for s in read_stages(top)["stages"]]
        if recorded != planned:
            raise SandboxError(f"{str(top)!r}: the config's stages ({', '.join(planned)}) are not the ones the run "
                               f"started with ({', '.join(map(str, recorded))}, {STAGES_FILE}); resume it with its "
                               "own config.yaml, or start another run with name=<new name>")
        return
    if RunDir(top).exists() or is_staged(top) or (top / STAGES_DIR).exists():
        _clear_or_refuse(top, stages, restart)
    top.mkdir(parents=True, exist_ok=True)
    save_config(cfg, top / "config.yaml")
    _record(top, cfg, stages)


def _clear_or_refuse(top: Path, stages: list[Stage], restart: bool) -> None:
    """``top`` holds a run: with ``restart`` and no complete checkpoint anywhere in it (a failed start),
    clear it; else refuse, naming the way on."""
    dirs = sorted(p for p in (top / STAGES_DIR).iterdir() if p.is_dir()) if (top / STAGES_DIR).is_dir() else []
    held = [d for d in [top, *dirs] if complete_checkpoint(d) is not None]
    if not is_staged(top) and not dirs:
        if restart and not held:
            clear_failed_start(top)
            return
        raise SandboxError(existing_run(top, restart=restart))
    if restart and not held:
        for d in dirs:
            clear_failed_start(d)  # refuses a directory a live run holds
        shutil.rmtree(top / STAGES_DIR, ignore_errors=True)
        for name in (STAGES_FILE, "config.yaml"):
            (top / name).unlink(missing_ok=True)
        return
    done = sum(stage_status(top / STAGES_DIR / s.dirname, s.cfg.train.epochs)[0] == "done" for s in stages)
    head = (f"--restart: {str(top)!r} holds a staged run with a complete checkpoint" if restart
            else f"run directory {str(top)!r} already holds a staged run")
    raise SandboxError(f"{head} ({done} of {len(stages)} stages done); continue it with: {resume_line(top)}, or "
                       "start another with name=<new name>")


def _record(top: Path, cfg: Config, stages: list[Stage], running: int | None = None) -> None:
    """stages.json (:func:`sandbox.runs.stages.stages_record`), ``running`` marking the stage in training."""
    write_stages(top, stages_record(top, cfg.name, stages, running))


def _summary(top: Path, stages: list[Stage]) -> str:
    rows, seconds = [], 0.0
    for s in stages:
        where = top / STAGES_DIR / s.dirname
        state = stage_status(where, s.cfg.train.epochs)[1]
        seconds += state.get("elapsed", 0.0)
        rows.append((f"stage {s.index}/{len(stages)} {s.name}", str(where), s.cfg.train.monitor, state.get("best"),
                     state.get("best_epoch")))
    return stages_summary(str(top), seconds, rows, MODELS[stages[-1].cfg.model.name].task)
