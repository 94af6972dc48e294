"""The run directory of a staged run (``stages:`` in a config; the plan is :mod:`sandbox.config.stages`).

    runs/<name>/
      config.yaml                 the base config, its stages: list included
      stages.json                 each stage's directory, status and best; "final" once every stage is done
      stages/<k>_<stage name>/    a complete run directory per stage (config.yaml, metrics.jsonl, checkpoints/,
                                  plots/, W&B run): evaluate, predict, compare, ... take it as any run

Where the outcome is: once every stage is done, ``stages.json`` names the last stage's directory as
``final``, and :func:`final_run` (which :func:`sandbox.runs.load.checkpoint_dir` and the reports call)
turns ``runs/<name>`` into it, so ``evaluate.py --run runs/<name>`` scores the final stage's
checkpoints/best and writes its eval/ there. Before that, ``runs/<name>`` is refused in one line naming
the stage directories to use instead.

A stage's status is read from its own files (:func:`stage_status`): ``stages.json`` is the record of the
last writer (the main process) and can say ``running`` for a stage whose process was killed.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

from sandbox.errors import SandboxError, short
from sandbox.runs.checkpoints import read_state
from sandbox.runs.rundir import complete_checkpoint, inside, resume_line, write_atomic

STAGES_FILE = "stages.json"
STAGES_DIR = "stages"
MAX_STAGES_BYTES = 1 << 20  # a stages.json of 1 MiB holds thousands of stages; more is not the sandbox's
log = logging.getLogger("sandbox")


#: how stages.json names a stage's directory (config/stages.py: ``stages/<k>_<name>``): nothing else is followed
STAGE_DIR = re.compile(r"stages/[0-9]{1,4}_[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
#: a stage's status in stages.json, from its files (:func:`stage_status`) when it is not running
RECORDED = {"new": "pending", "started": "stopped", "done": "done"}


def planned_stages(path: str | Path) -> Optional[list]:
    """The stages the staged run in ``path`` was started with, planned again from its own config.yaml (the
    base config with its ``stages:`` list), or None where ``path`` holds no staged run's config."""
    from sandbox.config.loading import load_config, read_yaml, stage_configs

    config = Path(path) / "config.yaml"
    if not (config.is_file() and (Path(path) / STAGES_DIR).is_dir()):
        return None
    try:
        if not read_yaml(config).get("stages"):
            return None
        return stage_configs(load_config(config))
    except SandboxError:  # an edited config: stages.json alone can say more
        return None


def is_staged(path: str | Path) -> bool:
    """``path`` holds a staged run: its stages.json, or (that file deleted) a config.yaml with stages and stages/."""
    return (Path(path) / STAGES_FILE).is_file() or planned_stages(path) is not None


def stages_record(top: str | Path, name: str, stages: list, running: int | None = None) -> dict:
    """The stages.json of a staged run: each stage's directory, status and progress read from its files (the
    stage ``running`` excepted); ``final`` (the last stage's directory) once every stage is done."""
    rows = []
    for s in stages:
        status, state = stage_status(Path(top) / STAGES_DIR / s.dirname, s.cfg.train.epochs)
        rows.append({"index": s.index, "name": s.name, "dir": f"{STAGES_DIR}/{s.dirname}",
                     "status": "running" if s.index == running else RECORDED[status],
                     "epochs": s.cfg.train.epochs, "epoch": state.get("epoch", 0), "step": state.get("step", 0),
                     "monitor": s.cfg.train.monitor, "best": state.get("best"), "best_epoch": state.get("best_epoch"),
                     "keys": s.keys})
    final = rows[-1]["dir"] if rows and all(r["status"] == "done" for r in rows) else None
    return {"name": name, "stages": rows, "final": final}


def _valid(record: object) -> str | None:
    """What is wrong with a stages.json record (None: nothing): its stage directories must be the stages/<k>_<name>
    the sandbox writes, and ``final`` the last of them, so that no edit points a command at another run."""
    if not isinstance(record, dict) or not isinstance(record.get("stages"), list) or not record["stages"]:
        return "expected an object with a non-empty list 'stages'"
    dirs = [s.get("dir") if isinstance(s, dict) else None for s in record["stages"]]
    bad = next((d for d in dirs if not (isinstance(d, str) and STAGE_DIR.fullmatch(d))), "ok")
    if bad != "ok":
        return f"stage directory {short(bad)}: expected stages/<k>_<name> inside the run"
    if record.get("final") not in (None, dirs[-1]):
        return f"final {short(record.get('final'))}: expected null or the last stage's directory {dirs[-1]!r}"
    return None


def read_stages(path: str | Path) -> dict:
    """``stages.json`` of a staged run directory: ``{"stages": [{index, name, dir, status, ...}], "final"}``.
    Missing, unreadable or edited to point elsewhere, it is rebuilt from the run's config.yaml and stage
    directories (and rewritten) where those say which stages the run has; else refused in one line."""
    path = Path(path)
    f = path / STAGES_FILE
    try:
        record = json.loads(f.read_text()) if f.is_file() and f.stat().st_size <= MAX_STAGES_BYTES else None
        why = _valid(record) if record is not None else "missing or larger than the sandbox writes"
    except (OSError, ValueError) as exc:
        record, why = None, type(exc).__name__
    if why is None:
        return record
    stages = planned_stages(path)
    if stages is None:
        raise SandboxError(f"{str(f)!r} could not be read ({why}); expected the stages.json sandbox/train.py "
                           "writes in a staged run, and the run's config.yaml has no stages to rebuild it from")
    record = stages_record(path, path.name, stages)
    log.warning("%s: %s; rebuilt from %s and the stage directories", f, why, path / "config.yaml")
    write_stages(path, record)
    return record


def write_stages(path: str | Path, record: dict) -> None:
    write_atomic(inside(path, Path(path) / STAGES_FILE), json.dumps(record, indent=2, default=str) + "\n")  # YAML dates as text


def stage_status(stage_dir: str | Path, epochs: int) -> tuple[str, dict]:
    """``("done" | "started" | "new", trainer state)`` of one stage from its newest complete checkpoint:
    done when it has trained its ``epochs`` (or stopped early), started when it holds a checkpoint to
    resume from, new when it holds none (not begun, or stopped before its first save)."""
    ckpt = complete_checkpoint(stage_dir)
    if ckpt is None:
        return "new", {}
    state = read_state(ckpt)
    done = state.get("stopped_early") or (state.get("epoch", 0) >= epochs and not state.get("batch"))
    return ("done" if done else "started"), state


def final_run(path: str | Path) -> Path:
    """The run directory that holds the outcome of ``path``: itself for a run, the last stage's directory
    for a finished staged run; an unfinished staged run is refused, naming its finished stages. The stages'
    statuses come from their own files where the run's config.yaml plans them (stages.json may be stale)."""
    path = Path(path)
    if not is_staged(path):
        return path
    record = read_stages(path)  # checked; rebuilt (and rewritten) where missing or edited to point elsewhere
    stages = planned_stages(path)
    if stages is not None:  # the statuses from the stages' own files
        record = stages_record(path, path.name, stages)
    if record.get("final"):
        final = inside(path, path / record["final"])
        if not final.is_dir():
            raise SandboxError(f"{str(path)!r}: its final stage {str(final)!r} is missing; {resume_line(path)} "
                               "trains it again")
        return final
    stages = record["stages"]
    done = [path / str(s.get("dir")) for s in stages if s.get("status") == "done"]
    todo = next((s for s in stages if s.get("status") != "done"), None)
    now = (f"stage {str(todo.get('index'))[:20]}/{len(stages)} {str(todo.get('name'))[:60]} is "
           f"{str(todo.get('status'))[:20]}" if todo else "not finished")  # a hand-edited file: short
    more = f" and {len(done) - 3:,} more" if len(done) > 3 else ""  # a stages.json of millions of stages
    use = (f"use a finished stage's directory ({', '.join(map(str, done[:3]))}{more})" if done
           else "no stage has finished yet")
    raise SandboxError(f"{str(path)!r} is a staged run that has not finished ({now}); its outcome is its last "
                       f"stage's: finish it with {resume_line(path)}, or {use}")
