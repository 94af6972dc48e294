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
from typing import Any, Callable

from safetensors.torch import load_file

from sandbox.data.textfile import read_text
from sandbox.errors import SandboxError, short
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
    except SandboxError:  # unreadable: check_complete names why where the checkpoint is needed
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
    ordered = [c for _, _, c in sorted(found, key=lambda f: (f[0], f[1]), reverse=True)]
    for p in problems:  # a bad best (weights only, never resumed from) is one of them: no "older" then
        log.warning("%s; skipped: the newest good checkpoint is checkpoints/%s", p, ordered[0].name)
    return ordered


def find_checkpoint(path: str | Path) -> Path:
    """The newest complete checkpoint of a run directory, or the given checkpoint directory."""
    return checkpoint_candidates(path)[0]


def resumed_run(path: str | Path) -> Path:
    """The run directory that ``train.resume`` (a run or one of its checkpoints) continues."""
    return find_checkpoint(path).parent.parent


def check_complete(ckpt: Path) -> Path:
    """``ckpt`` when its state file is valid (:func:`read_state`) and every file it lists exists."""
    missing = [f for f in read_state(ckpt).get("files", []) if not (ckpt / f).exists()]
    if missing:
        raise SandboxError(f"checkpoint {str(ckpt)!r} is incomplete: missing {', '.join(missing[:5])}")
    return ckpt


def _int(v: Any, lowest: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lowest


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _listed(v: Any) -> bool:
    """A file of the checkpoint: a relative path inside it (the list is checked for existence)."""
    return isinstance(v, str) and v != "" and not v.startswith(("/", "\\")) and ".." not in Path(v).parts


#: trainer_state.json, field by field: (accepts, what the message says is expected). Every field is
#: optional (a missing one is a fresh run's value: the state files of earlier versions lack the newer
#: ones), but a present one must pass, so that no reader meets a string where it counts epochs. Fields
#: not listed are accepted and carried over unread: nothing in the sandbox reads them, so they cannot
#: break it, and a run written by a later version (a field added) still evaluates and resumes.
STATE_SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epoch": (lambda v: _int(v, 0), "an integer >= 0 (epochs completed)"),
    "step": (lambda v: _int(v, 0), "an integer >= 0 (optimizer steps done)"),
    "batch": (lambda v: _int(v, 0), "an integer >= 0 (batches done in the epoch under way)"),
    "best": (lambda v: v is None or _number(v), "a number or null (the best monitored value)"),
    "best_epoch": (lambda v: v is None or _int(v, 1), "an integer >= 1 or null"),
    "best_loss": (lambda v: v is None or _number(v), "a number or null"),
    "wandb_id": (lambda v: v is None or isinstance(v, str), "a string or null (the W&B run id)"),
    "elapsed": (lambda v: _number(v) and v >= 0, "a number of seconds >= 0"),
    "skipped": (lambda v: _int(v, 0), "an integer >= 0 (batches skipped)"),
    "sums": (lambda v: isinstance(v, dict) and all(map(_number, v.values())), "an object of numbers"),
    "count": (lambda v: _int(v, 0), "an integer >= 0"),
    "epoch_sums": (lambda v: isinstance(v, dict) and all(map(_number, v.values())), "an object of numbers"),
    "epoch_count": (lambda v: _int(v, 0), "an integer >= 0"),
    "steps_per_epoch": (lambda v: v is None or _int(v, 1), "an integer >= 1 or null"),
    "loss_min": (lambda v: v is None or _number(v), "a number or null"),
    "loss_min_step": (lambda v: v is None or _int(v, 0), "an integer >= 0 or null"),
    "diverged_at": (lambda v: v is None or _int(v, 0), "an integer >= 0 or null (a step)"),
    "early_stop_wait": (lambda v: _int(v, 0), "an integer >= 0 (epochs without an improvement)"),
    "stopped_early": (lambda v: v is None or isinstance(v, str), "a string or null (why the run stopped)"),
    "weights_only": (lambda v: isinstance(v, bool), "true or false"),
    "files": (lambda v: isinstance(v, list) and all(map(_listed, v)),
              "a list of the checkpoint's files, as paths inside it"),
}
#: a trainer state is well under 10 KiB; a bigger file is another file (a dataset, a checkpoint)
MAX_STATE_BYTES = 1 << 20
STATE_HINT = "the JSON object train.py writes (epoch, step, best, ...)"


def read_state(ckpt: Path) -> dict:
    """The trainer state of a checkpoint directory (``trainer_state.json``), checked against
    :data:`STATE_SCHEMA`: the one reader of the file, so every command refuses a bad one alike, in one
    :class:`SandboxError` line naming the file, the field and what is expected."""
    path = Path(ckpt) / STATE_FILE
    text = read_text(path, MAX_STATE_BYTES, STATE_HINT)  # a regular file, bounded, UTF-8
    path = short(str(path))
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SandboxError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                           f"expected {STATE_HINT}") from None
    except (RecursionError, ValueError) as exc:  # nested past Python's limit; an int of over 4300 digits
        raise SandboxError(f"{path}: not readable as JSON ({type(exc).__name__}); expected {STATE_HINT}") from None
    if not isinstance(state, dict):
        raise SandboxError(f"{path}: a JSON {type(state).__name__} at the top level; expected {STATE_HINT}")
    for field, (accepts, expected) in STATE_SCHEMA.items():
        if field in state and not accepts(state[field]):
            raise SandboxError(f"{path}: field {field!r} {_culprit(field, state[field])}; expected {expected}")
    return state


#: what each entry of a list or object field must be: a message names the first one that is not
ENTRIES: dict[str, Callable[[Any], bool]] = {"files": _listed, "sums": _number, "epoch_sums": _number}


def _culprit(field: str, value: Any) -> str:
    """``is <value>``, or for a list or object of the right kind ``has <entry>`` (the first bad one)."""
    kind = list if field == "files" else dict
    if field in ENTRIES and isinstance(value, kind):
        entries = enumerate(value) if kind is list else value.items()
        key, bad = next((k, v) for k, v in entries if not ENTRIES[field](v))
        return f"has {short(bad, 80)} (entry {short(key, 40)})"
    return f"is {short(value, 80)}"


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
