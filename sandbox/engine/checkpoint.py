"""Checkpoints of a training run, end to end: resolving what ``train.resume`` continues, saving,
loading with the checks a resume must pass, falling back past a corrupt checkpoint, pruning.

    run = resume_target(cfg)                      # the config a resumed run continues with
    ckpts = Checkpoints(accelerator, run_dir, cfg)
    ckpts.save("last", model, state, schedulers)  # atomic: tmp dir, state file last, swap
    ckpts.load_newest(candidates, state, steps_per_epoch, schedulers)

The file format (what makes a directory complete, the atomic commit) is :mod:`sandbox.runs.checkpoints`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator

from sandbox.build import build_model
from sandbox.config import Config
from sandbox.config.loading import read_yaml, save_config
from sandbox.errors import SandboxError

try:  # safetensors reports a failed write as its own error, not an OSError
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover - Accelerate depends on safetensors
    SafetensorError = OSError
from sandbox.runs.checkpoints import (SCHEDULES_FILE, UnreadableFile, check_files, commit_checkpoint, load_safely,
                                      read_state, resumed_run, weights_file)
from sandbox.runs.load import checkpoint_weights, fitting_width, shape_mismatches
from sandbox.runs.rundir import RunDir, resume_line
from sandbox.runs.warm import check_not_resumed

log = logging.getLogger("sandbox")

#: data keys a resumed run may change: they do not change which samples it sees (where the folder
#: is now, the splits a resumed folder run is pointed at, caching and loader workers)
RESUME_FREE_DATA_KEYS = ("root", "splits", "cache", "num_workers")
#: train keys that shape a step-sized LR schedule: a resumed run must keep them
SCHEDULE_KEYS = ("epochs", "scheduler", "lr", "warmup_frac", "grad_accum")


class CorruptCheckpoint(SandboxError):
    """A checkpoint whose files exist but do not load (truncated, foreign)."""


def resume_target(cfg: Config) -> Config:
    """The config a ``train.resume`` run continues with: the run keeps its name and place (its
    config.yaml and W&B run are rewritten with them), and a folder run its exact splits."""
    if not cfg.train.resume:
        return cfg
    run = resumed_run(cfg.train.resume)
    check_not_resumed(cfg.train.init_from, run)
    if (Path(cfg.out_dir) / cfg.name).resolve() != run.resolve():  # moved, or named otherwise: its place now
        cfg = dataclasses.replace(cfg, name=run.name, out_dir=str(run.parent))
    # else the name stays as it was, e.g. a sweep's "<sweep>/<cell>_s<seed>" under runs/ (not "<cell>_s<seed>"
    # under runs/<sweep>/: the same directory, but a rerun of the sweep compares the names)
    splits = run / "splits"
    if splits.is_dir() and cfg.data.splits is None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, splits=str(splits)))
    return cfg


class Checkpoints:
    """Save and load the checkpoints of one run for one Accelerator (every process calls them)."""

    def __init__(self, accelerator: Accelerator, run: RunDir, cfg: Config):
        self.acc, self.run, self.cfg = accelerator, run, cfg

    def save(self, which: str, model: torch.nn.Module, state: dict, schedulers: list = ()) -> None:
        """Accelerate's state (model weights as safetensors, optimizers, every process's RNG), the LR
        schedules as plain state dicts (``schedules.pt``), the config, then the state file; atomic.
        ``best`` gets the weights alone (it is read for them, never resumed from): no optimizer state."""
        acc = self.acc
        final = self.run.checkpoints / which
        tmp = self.run.checkpoints / f".{which}.tmp"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        try:
            self._write(tmp, final, model, state, schedulers)
        except (OSError, SafetensorError) as exc:  # a full, read-only or size-limited disk: one line
            cause = getattr(exc, "strerror", None) or " ".join(str(exc).split())[-120:]
            raise SandboxError(f"could not write checkpoints/{which} in {self.run.checkpoints} ({cause}); the "
                               "checkpoints already there are intact (each is written aside and swapped in): free "
                               f"space or fix the disk, then resume: {resume_line(self.run.path)}"
                               ) from None
        acc.wait_for_everyone()

    def _write(self, tmp: Path, final: Path, model: torch.nn.Module, state: dict, schedulers: list) -> None:
        acc, full = self.acc, final.name != "best"
        if full:  # the weights once: Accelerate's model.safetensors is what every reader loads
            acc.save_state(str(tmp), safe_serialization=True)
        else:
            acc.save_model(model, str(tmp), safe_serialization=True)  # model.safetensors, unwrapped
            state = dict(state, weights_only=True)
        # every process writes its RNG state into tmp: none may still be writing when tmp is committed (a
        # race model.pt's write used to hide; without it the main process renamed tmp under rank 1's write)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if full:
                torch.save([s.state_dict() for s in schedulers], tmp / SCHEDULES_FILE)
            save_config(self.cfg, tmp / "config.yaml")
            commit_checkpoint(tmp, final, state)

    def check_best(self, state: dict, resumed_from: Path) -> None:
        """``best/`` must hold the best epoch the resumed state names. A kill while best was written
        (before best was saved ahead of last) could leave an older one: it is repaired from the
        resumed checkpoint when that is the best epoch's, else reported. A best NEWER than the state
        is the epoch being redone: it will be written again. Main process."""
        best_epoch, best_dir = state.get("best_epoch"), self.run.checkpoints / "best"
        if not self.acc.is_main_process or best_epoch is None:
            return
        try:
            held = read_state(best_dir).get("epoch") if (best_dir / "trainer_state.json").is_file() else None
        except SandboxError:  # a bad state file: best is written again from the resumed checkpoint
            held = None
        if held is not None and held >= best_epoch:
            return
        if state.get("epoch") == best_epoch and not state.get("batch") and resumed_from.name != "best":
            tmp = self.run.checkpoints / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for f in (weights_file(resumed_from), resumed_from / "config.yaml"):  # best keeps the weights alone
                if f is not None and f.is_file():
                    shutil.copy2(f, tmp / f.name)
            commit_checkpoint(tmp, best_dir, {**{k: v for k, v in read_state(resumed_from).items() if k != "files"},
                                              "weights_only": True})  # writes the state file last: complete
            log.warning("checkpoints/best held %s, not the best epoch %d (a save interrupted by a kill); "
                        "repaired from %s", f"epoch {held}" if held else "nothing", best_epoch, resumed_from.name)
        else:
            log.warning("checkpoints/best holds %s, but the run's best was epoch %d, whose checkpoint was lost "
                        "(a save interrupted by a kill); best will be written again when an epoch beats it",
                        f"epoch {held}" if held else "nothing", best_epoch)

    def prune_epochs(self, keep: int) -> None:
        """Keep the newest ``keep`` ``epoch_NNN`` checkpoints (main process)."""
        if not self.acc.is_main_process:
            return
        olds = sorted(p for p in self.run.checkpoints.glob("epoch_*") if p.is_dir())
        for p in olds[:-keep]:
            shutil.rmtree(p, ignore_errors=True)

    def load_newest(self, candidates: list[Path], state: dict, steps_per_epoch: int, schedulers: list = ()) -> Path:
        """Load the newest checkpoint that loads into ``state`` (updated in place) and ``schedulers``; a
        corrupt one is reported and skipped; an unsafe one stops the run (it is never loaded). Returns
        the checkpoint loaded."""
        for i, ckpt in enumerate(candidates):
            try:
                self.load(ckpt, state, steps_per_epoch, schedulers)
                return ckpt
            except CorruptCheckpoint as exc:
                if i + 1 == len(candidates):
                    raise SandboxError(str(exc)) from None
                log.warning("%s; falling back to %s", exc, candidates[i + 1])

    def load(self, ckpt: Path, state: dict, steps_per_epoch: int, schedulers: list = ()) -> None:
        saved_cfg = read_yaml(ckpt / "config.yaml") if (ckpt / "config.yaml").exists() else {}
        self._check_same_experiment(ckpt, saved_cfg)
        try:
            saved_state = read_state(ckpt)
        except SandboxError as exc:  # read_state's line names the file and the field
            raise CorruptCheckpoint(str(exc)) from None
        try:  # every pickled file, safely, before Accelerate reads any; an unsafe one stops here
            check_files(ckpt)
        except UnreadableFile as exc:
            raise CorruptCheckpoint(f"checkpoint {str(ckpt)!r}: {exc}; resuming from it would not be exact") from None
        if self.cfg.train.scheduler != "none":  # extending a run with scheduler=none ignores the saved ones
            self._check_same_schedule(ckpt, saved_cfg.get("train", {}), saved_state, steps_per_epoch)
            self._load_schedules(ckpt, schedulers)
        try:
            with _without_legacy_schedules(ckpt) as src:
                self.acc.load_state(src)
        except Exception as exc:  # a torn or foreign file: say which checkpoint, not where in torch
            self._check_same_shapes(ckpt)  # weights of another model: say which tensor, and what would fit
            raise CorruptCheckpoint(f"checkpoint {str(ckpt)!r} could not be loaded ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]})") from None
        state.update(saved_state)
        state.pop("files", None)
        state.pop("weights_only", None)
        state["steps_per_epoch"] = steps_per_epoch
        log.info("resumed from %s at epoch %d, step %d", ckpt, state["epoch"], state["step"])

    def _check_same_experiment(self, ckpt: Path, saved_cfg: dict) -> None:
        """Another model or other data is another experiment: config.yaml, metrics and best would mix two."""
        now_cfg = self.cfg.to_dict()
        kept = (("model", "with a different model", ()), ("data", "on other data", RESUME_FREE_DATA_KEYS))
        for section, what, free in kept:
            saved, now = saved_cfg.get(section, {}), now_cfg[section]
            diff = [f"{section}.{k}: {saved[k]!r} there, {now[k]!r} here"
                    for k in now if k in saved and k not in free and saved[k] != now[k]]
            if diff:
                raise SandboxError(f"checkpoint {str(ckpt)!r} was trained {what} ({', '.join(diff)}); resume with "
                                   f"the run's own config: {resume_line(self.run.path)}")

    def _check_same_shapes(self, ckpt: Path) -> None:
        """After a failed load: weights whose tensors do not fit the model this config builds (its
        config.yaml edited after training, or weights copied in from another run) are one line naming the
        first tensor with both shapes and, where one fits, the model.width they were trained with. Not a
        corrupt checkpoint: every other one of the run would fail alike, so there is no falling back."""
        try:
            state = checkpoint_weights(ckpt)
        except SandboxError:  # unreadable weights: a corrupt checkpoint after all
            return
        own = build_model(self.cfg).state_dict()
        shapes = shape_mismatches(state, own, "in the checkpoint", "in the model")
        missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
        if not (shapes or missing or extra):
            return
        parts = shapes[:1] + [f"{what} {', '.join(keys[:2])}" for what, keys in
                              (("missing", missing), ("unexpected", extra)) if keys and not shapes]
        width = fitting_width(self.cfg, state) if shapes else None
        fix = (f"they fit model.width={width}, config.yaml says {self.cfg.model.width}" if width else
               "another model section than config.yaml")
        raise SandboxError(f"checkpoint {str(ckpt)!r} holds weights of another model than its config.yaml builds "
                           f"({'; '.join(parts)}; {fix}): was config.yaml edited after training? restore the model "
                           f"section the run was trained with, then resume: python sandbox/train.py --resume "
                           f"{self.run.path}")

    def _check_same_schedule(self, ckpt: Path, saved_train: dict, saved_state: dict, steps_per_epoch: int) -> None:
        """A step-shaped LR schedule is sized by the run length: a resumed run must keep it, or the
        restored scheduler would silently follow the old plan (or stop short of the new one)."""
        t = self.cfg.train
        changed = [f"train.{k}: {saved_train[k]!r} there, {getattr(t, k)!r} here"
                   for k in SCHEDULE_KEYS if k in saved_train and saved_train[k] != getattr(t, k)]
        planned = saved_state.get("steps_per_epoch")
        if planned not in (None, steps_per_epoch):
            changed.append(f"{planned} optimizer steps per epoch and process there, {steps_per_epoch} here "
                           f"(another number of processes?)")
        if changed:
            raise SandboxError(
                f"checkpoint {str(ckpt)!r} was planned with a different LR schedule ({'; '.join(changed)}); "
                f"resume with the run's own settings, or use train.scheduler=none to extend it")

    def _load_schedules(self, ckpt: Path, schedulers: list) -> None:
        """The LR schedulers' state dicts from ``schedules.pt`` (or, for checkpoints of earlier versions,
        Accelerate's ``custom_checkpoint_N.pkl``, read just as safely)."""
        if (ckpt / SCHEDULES_FILE).is_file():
            states = load_safely(ckpt / SCHEDULES_FILE)
        else:
            states = [load_safely(f) for f in sorted(ckpt.glob("custom_checkpoint_*.pkl"),
                                                     key=lambda f: int(f.stem.rsplit("_", 1)[1]))]
        if len(states) != len(schedulers):
            raise CorruptCheckpoint(f"checkpoint {str(ckpt)!r} holds {len(states)} LR schedule state(s) for "
                                    f"{len(schedulers)} scheduler(s)")
        for sched, sd in zip(schedulers, states):
            sched.load_state_dict(sd)


@contextlib.contextmanager
def _without_legacy_schedules(ckpt: Path):
    """The checkpoint for Accelerate's ``load_state``: checkpoints of earlier versions hold their LR
    schedules as ``custom_checkpoint_N.pkl`` (read by :meth:`Checkpoints._load_schedules`, safely), which
    Accelerate refuses unless objects are registered, and would then unpickle with code: it gets a
    temporary view of the checkpoint without them (links to the other files)."""
    legacy = set(ckpt.glob("custom_checkpoint_*.pkl"))
    if not legacy:
        yield str(ckpt)
        return
    with tempfile.TemporaryDirectory(prefix="sandbox_ckpt_") as view:
        for f in ckpt.iterdir():
            if f not in legacy:
                (Path(view) / f.name).symlink_to(f.resolve())
        yield view
