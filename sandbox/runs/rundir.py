"""The run directory: its layout, its creation (never over another run) and atomic text files.

    runs/<name>/
      config.yaml          the resolved config
      metrics.jsonl        one JSON object per log event (split, epoch, step, time, metrics)
      checkpoints/last/    Accelerate state (exact resume: model.safetensors, optimizer, RNG) + trainer_state.json
      checkpoints/best/    model.safetensors alone (no optimizer state) + trainer_state.json, for the best metric
      plots/ images/ splits/ wandb/

What a checkpoint directory holds and how it is committed: :mod:`sandbox.runs.checkpoints`.
"""
from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from sandbox.data.textfile import kind_of
from sandbox.errors import SandboxError
from sandbox.invocation import command
from sandbox.runs.checkpoints import checkpoint_candidates, read_state


class RunDir:
    """Paths of one run; ``create()`` refuses to overwrite an existing run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")
    images = property(lambda self: self.path / "images")
    splits = property(lambda self: self.path / "splits")

    def exists(self) -> bool:
        return self.config.exists() or self.metrics.exists() or self.checkpoints.exists()

    def create(self, resume: bool) -> None:
        if self.exists() and not resume:
            raise SandboxError(existing_run(self.path, restart=False))
        check_tree(self.path)  # a resumed run (or a failed start's leftovers): nothing planted to write through
        try:
            for p in (self.path, self.checkpoints, self.plots, self.images):
                p.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise SandboxError(f"cannot write the run directory {str(self.path)!r}: {exc.strerror}; "
                               "choose another out_dir= or fix its permissions") from None

    def discard_if_empty(self) -> None:
        """Undo :meth:`create` for a run that never started: the directories go only if still empty."""
        for p in (self.checkpoints, self.plots, self.images, self.path):
            try:
                p.rmdir()
            except OSError:  # not empty (or already gone): keep it
                pass


#: the one folder of a run whose inside is W&B's: it links latest-run and debug*.log to its own files (and
#: debug-core.log to ~/.cache/wandb); the sandbox neither reads nor writes there, W&B does (the folder itself
#: is checked like the rest: a planted wandb -> elsewhere link is refused)
LINKS_ALLOWED_UNDER = "wandb"


def inside(run: str | Path, target: str | Path) -> Path:
    """``target`` (a path under the run directory ``run``), checked before the sandbox writes it: no part of it
    below ``run`` may be a symbolic link, and it must resolve inside ``run`` (which may itself be reached through
    links: runs/ on another disk). A planted link (metrics.jsonl, plots/, eval/ pointing elsewhere) is refused in
    one line, so nothing outside the run is ever written through it. Returns ``target`` as a Path."""
    run, target = Path(run), Path(target)
    root = run.resolve()
    try:  # lexically (os.path.abspath folds '..' without following links): the parts to check one by one
        rel = Path(os.path.abspath(target)).relative_to(os.path.abspath(run))
    except ValueError:
        rel = None
    where = run
    for part in rel.parts if rel is not None else ():
        where = where / part
        if where.is_symlink():
            raise SandboxError(f"{str(where)!r} is a symbolic link; the sandbox writes only inside the run "
                               f"{str(run)!r} and never through a link: remove the link (or move the run) and "
                               "run the command again")
    resolved = target.resolve()
    if rel is None or (resolved != root and root not in resolved.parents):
        raise SandboxError(f"{str(target)!r} is outside the run directory {str(run)!r}; the sandbox writes only "
                           "inside the run it was asked to write")
    return target


def check_tree(run: str | Path) -> None:
    """Refuse a run directory holding planted entries before reading or writing it: a symbolic link anywhere
    in it (except inside wandb/, which is W&B's), or a special file (FIFO, socket, device: a read would block
    or misbehave). One line naming the first such entry."""
    run = Path(run)
    if not run.is_dir():
        return
    for folder, dirs, files in os.walk(run):
        if Path(folder) == run and LINKS_ALLOWED_UNDER in dirs:
            dirs.remove(LINKS_ALLOWED_UNDER)  # still checked below as an entry of the run: never a link itself
            files = files + [LINKS_ALLOWED_UNDER]
        for name in dirs + files:
            p = Path(folder) / name
            try:
                mode = os.lstat(p).st_mode
            except FileNotFoundError:  # a temporary file a writer just renamed: nothing planted
                continue
            if stat.S_ISLNK(mode):
                raise SandboxError(f"{str(p)!r} is a symbolic link (to {str(os.readlink(p))!r}); a run directory "
                                   "holds plain files and folders only, so the sandbox neither reads nor writes "
                                   "through it: remove it, or copy the real file in its place")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a read of it would block or never end
                raise SandboxError(f"{str(p)!r}: {kind_of(mode)}, not a regular file; expected a run directory "
                                   "of plain files and folders: remove it")


def write_atomic(path: str | Path, text: str) -> Path:
    """``path`` holds ``text`` or its previous content, never a torn mix (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def complete_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint under ``path/checkpoints`` (what a resume would load), or None."""
    ckpts = Path(path) / "checkpoints"
    found = []
    for cand in sorted(ckpts.iterdir()) if ckpts.is_dir() else []:
        if cand.is_dir() and not cand.name.startswith("."):
            try:
                found.append((read_state(checkpoint_candidates(cand)[0]).get("step", 0), cand))
            except (SandboxError, OSError, ValueError):
                continue
    return max(found)[1] if found else None


def resume_line(path: str | Path, processes: int = 1) -> str:
    """The command that continues the run in ``path`` (with as many processes as it was planned for), in
    the form this install runs it (:mod:`sandbox.invocation`)."""
    return f"{command('train', processes)} --resume {shlex.quote(str(path))}"


def restart_line(path: str | Path) -> str:
    """The command that starts the run in ``path`` afresh in place (its own resolved config.yaml)."""
    config = Path(path) / "config.yaml"
    if config.is_file():
        return f"{command('train')} --config {shlex.quote(str(config))} --restart"
    return f"your {command('train')} command plus --restart"


def existing_run(path: str | Path, restart: bool = False) -> str:
    """Why a new run may not start in ``path`` (it holds one) and the way on that applies: with a
    complete checkpoint a resume, without one (a start that failed before its first save) a restart
    in place. ``restart``: the caller asked for a restart (refused where a checkpoint exists)."""
    restart_command = restart_line(path)
    ckpt = complete_checkpoint(path)
    if ckpt is not None:
        step = read_state(ckpt).get("step", 0)
        head = (f"--restart: {str(path)!r} holds a complete checkpoint" if restart
                else f"run directory {str(path)!r} already holds a run")
        return (f"{head} (checkpoints/{ckpt.name} at step {step}); continue it with: {resume_line(path)}, "
                f"or start another with name=<new name>")
    return (f"run directory {str(path)!r} already holds a run that stopped before its first checkpoint "
            f"(nothing to resume); start it afresh in place with: {restart_command}, or start another "
            f"with name=<new name>")
