"""Checkpoint directories: what makes one complete, which to resume from, the atomic commit, and
loading their files safely.

    checkpoints/last/      Accelerate state (model.safetensors, optimizer, RNG: exact resume) + schedules.pt
    checkpoints/epoch_NNN/ the same (the fallbacks of a torn last) + config.yaml + trainer_state.json
    checkpoints/best/      model.safetensors + config.yaml + trainer_state.json (``weights_only``): what
                           evaluate, predict, ... read; no optimizer state, so it is never resumed from

The weights are stored once, as safetensors (no code can hide in them); runs of earlier versions also
hold ``model.pt`` (the same weights, pickled), which is read only where ``model.safetensors`` is absent.

Nothing in a run directory is ever unpickled with code: every torch file is read with
``weights_only=True`` (:func:`sandbox.nn.weights.load_safely`), and a file that would need code to load is refused
with one line naming it. The LR schedules are saved by the sandbox as plain state dicts
(``schedules.pt``), not through Accelerate's ``register_for_checkpointing``, whose
``custom_checkpoint_*.pkl`` Accelerate loads with ``weights_only=False``.

The trainer state file is written last and lists every file, so a directory without it (or
missing a listed file) is incomplete. Checkpoints are written to a temporary directory and
renamed into place, so a kill during a save leaves the previous checkpoint intact (``last.old``
is the fallback while the swap is in flight).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from sandbox.errors import SandboxError
from sandbox.nn.weights import UnreadableFile, UnsafeFile, load_safely  # noqa: F401  (re-exported)

log = logging.getLogger("sandbox")

STATE_FILE = "trainer_state.json"
#: the weights: what Accelerate's save_state and save_model write for the (one) model
WEIGHTS_FILE = "model.safetensors"
#: the weights as earlier versions also saved them (a pickled state_dict): read when WEIGHTS_FILE is absent
LEGACY_WEIGHTS_FILE = "model.pt"
SCHEDULES_FILE = "schedules.pt"
#: torch-pickled files of a checkpoint (Accelerate's optimizer.bin, random_states_N.pkl, ...; ours)
PICKLED = ("*.bin", "*.pkl", "*.pt", "*.pth")


def check_files(ckpt: Path) -> None:
    """Load every pickled file of ``ckpt`` safely first, so that an unsafe one is named before
    Accelerate reads any (and a torn one is reported as such)."""
    for pattern in PICKLED:
        for f in sorted(Path(ckpt).glob(pattern)):
            load_safely(f)


def weights_file(ckpt: str | Path) -> Path | None:
    """The weights of a checkpoint: ``model.safetensors``, else (runs of earlier versions) ``model.pt``."""
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        if (Path(ckpt) / name).is_file():
            return Path(ckpt) / name
    return None


def read_weights(path: str | Path) -> Any:
    """A weights file as a state_dict on the CPU with the bare model's keys: safetensors (tensors only: nothing
    in it can run), or a legacy ``model.pt`` through :func:`load_safely`. A torn or foreign file raises
    :class:`UnreadableFile`; a file that is not a dict of tensors comes back as it is, for the caller to refuse."""
    path = Path(path)
    try:
        state = load_file(path, device="cpu") if path.suffix == ".safetensors" else load_safely(path)
    except (UnreadableFile, UnsafeFile):
        raise
    except Exception as exc:  # SafetensorError (torn, foreign bytes), OSError: all the same to a user
        raise UnreadableFile(f"{str(path)!r} could not be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:120]})") from None
    return {_bare(k): v for k, v in state.items()} if isinstance(state, dict) else state


def _bare(key: Any) -> Any:
    """``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefix every key of a wrapped model's state,
    which Accelerate's state keeps; the bare model has none."""
    while isinstance(key, str) and key.startswith(("module.", "_orig_mod.")):
        key = key.split(".", 1)[1]
    return key


def weights_only(ckpt: str | Path) -> bool:
    """Whether a checkpoint holds weights only (``best``): it cannot be resumed from exactly."""
    try:
        return bool(read_state(Path(ckpt)).get("weights_only"))
    except (OSError, ValueError):
        return False


def checkpoint_candidates(path: str | Path) -> list[Path]:
    """Checkpoints to resume from, newest first.

    A checkpoint directory -> just it. A run directory -> every complete checkpoint under
    ``checkpoints/`` that holds a full state (``last``, ``last.old`` left by a save killed mid-swap,
    ``epoch_NNN``; ``best`` of earlier versions) ordered by step, so a torn or corrupt ``last`` falls back
    to the newest good one. ``best`` (weights only) is never one: a resume from it would not be exact.
    """
    path = Path(path)
    if not path.exists():
        raise SandboxError(f"resume: {str(path)!r} does not exist; expected a run directory (runs/<name>) "
                           "or a checkpoint directory (runs/<name>/checkpoints/last)")
    if (path / STATE_FILE).exists():
        if weights_only(path):
            raise SandboxError(f"resume: {str(path)!r} holds weights only (no optimizer or RNG state, as "
                               "checkpoints/best); resume from the run directory (runs/<name>) or its "
                               "checkpoints/last")
        return [check_complete(path)]
    ckpts = path / "checkpoints"
    if not ckpts.is_dir():
        raise SandboxError(f"resume: {str(path)!r} is neither a run directory (with checkpoints/) "
                           f"nor a checkpoint directory (with {STATE_FILE})")
    found, problems = [], []
    for cand in sorted(p for p in ckpts.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if weights_only(cand):
            continue
        try:
            found.append((read_state(check_complete(cand)).get("step", 0), cand.name == "last", cand))
        except SandboxError as exc:
            problems.append(str(exc))
    if not found:
        why = f" ({'; '.join(problems)})" if problems else " (the run may have been stopped before its first save)"
        raise SandboxError(f"resume: {str(path)!r} has no complete checkpoint under checkpoints/{why}")
    for p in problems:
        log.warning("%s; falling back to an older checkpoint", p)
    return [c for _, _, c in sorted(found, key=lambda f: (f[0], f[1]), reverse=True)]


def find_checkpoint(path: str | Path) -> Path:
    """The newest complete checkpoint of a run directory, or the given checkpoint directory."""
    return checkpoint_candidates(path)[0]


def resumed_run(path: str | Path) -> Path:
    """The run directory that ``train.resume`` (a run or one of its checkpoints) continues."""
    return find_checkpoint(path).parent.parent


def check_complete(ckpt: Path) -> Path:
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SandboxError(f"checkpoint {str(ckpt)!r} is corrupt: {STATE_FILE} unreadable ({exc})") from None
    missing = [f for f in state.get("files", []) if not (ckpt / f).exists()]
    if missing:
        raise SandboxError(f"checkpoint {str(ckpt)!r} is incomplete: missing {', '.join(missing[:5])}")
    return ckpt


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def commit_checkpoint(tmp: Path, final: Path, state: dict) -> None:
    """Write the state file last (it marks the directory complete), then swap ``tmp`` into ``final``."""
    state = dict(state, files=sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))
    state_tmp = tmp / (STATE_FILE + ".tmp")
    state_tmp.write_text(json.dumps(state, indent=2))
    with open(state_tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(state_tmp, tmp / STATE_FILE)
    old = final.with_name(final.name + ".old")
    if old.exists():  # left by a save that was killed mid-swap: keep whichever copy is the good one
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
