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
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import read_state
from sandbox.runs.rundir import complete_checkpoint, resume_line, write_atomic

STAGES_FILE = "stages.json"
STAGES_DIR = "stages"


def is_staged(path: str | Path) -> bool:
    return (Path(path) / STAGES_FILE).is_file()


def read_stages(path: str | Path) -> dict:
    """``stages.json`` of a staged run directory: ``{"stages": [{index, name, dir, status, ...}], "final"}``."""
    f = Path(path) / STAGES_FILE
    try:
        record = json.loads(f.read_text())
        assert isinstance(record, dict) and isinstance(record.get("stages"), list)
        return record
    except (OSError, ValueError, AssertionError) as exc:
        raise SandboxError(f"{str(f)!r} could not be read ({type(exc).__name__}); expected the stages.json "
                           "sandbox/train.py writes in a staged run") from None


def write_stages(path: str | Path, record: dict) -> None:
    write_atomic(Path(path) / STAGES_FILE, json.dumps(record, indent=2, default=str) + "\n")  # YAML dates as text


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
    for a finished staged run; an unfinished staged run is refused, naming its finished stages."""
    path = Path(path)
    if not is_staged(path):
        return path
    record = read_stages(path)
    if record.get("final"):
        return path / record["final"]
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
