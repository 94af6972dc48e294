"""Warm starts: ``train.init_from`` loads another run's WEIGHTS into a new run (its optimizer,
LR schedule, data and epoch counter start afresh; ``train.resume`` is the way to continue a run).

    ckpt = init_source("runs/ae_faces")               # checkpoints/best, else the newest complete one
    lines = warm_start(model, "runs/ae_faces", strict=False)   # what was loaded and what was skipped

Tensors are matched by name and shape. The encoder of an AE/VAE (``encoder.core.<...>``, the core
Encoder inside :class:`~sandbox.nn.latent.ImageEncoder`) is the core Encoder a segmentation model
holds as ``encoder.<...>``: the two names are matched, so an autoencoder's encoder lands in a UNet
with the same widths, depth, blocks and norm (``init_from_strict: false``; the decoder and heads keep
their fresh initialisation). Weights are read only through :func:`sandbox.runs.load.checkpoint_weights`
(``weights_only``): a file that needs code to load is refused, never run.
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from sandbox.config.loading import read_yaml
from sandbox.errors import ConfigError, SandboxError
from sandbox.runs.checkpoints import STATE_FILE, check_complete, checkpoint_candidates, read_state
from sandbox.runs.load import checkpoint_weights

log = logging.getLogger("sandbox")

HINT = "expected runs/<run> or runs/<run>/checkpoints/<best|last|epoch_NNN> written by sandbox/train.py"
#: the core Encoder's names inside an AE/VAE encoder, and in a segmentation model
ENCODER_ALIASES = (("encoder.core.", "encoder."),)
SHOW = 3  # names a message lists per kind of mismatch


def init_source(spec: str | Path) -> Path:
    """The complete checkpoint ``train.init_from`` names: a checkpoint directory itself, or for a run
    directory its ``checkpoints/best``, falling back (as a resume does) to its newest complete one."""
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"train.init_from: {str(path)!r} does not exist; {HINT}")
    try:
        if (path / STATE_FILE).exists():  # a checkpoint directory: weights-only ones (best) are fine here
            return check_complete(path)
        best = path / "checkpoints" / "best"
        if (path / "checkpoints").is_dir():
            try:
                return check_complete(best)  # weights only (no optimizer): all a warm start needs
            except SandboxError as exc:
                newest = checkpoint_candidates(path)[0]
                log.warning("train.init_from: %s has no complete checkpoints/best (%s); using checkpoints/%s instead",
                            path, exc, newest.name)
                return newest
        return checkpoint_candidates(path)[0]
    except SandboxError as exc:
        raise ConfigError(f"train.init_from: {str(exc).removeprefix('resume: ')}; {HINT}") from None


def canonical(key: str) -> str:
    """The name a tensor is matched by: an AE/VAE encoder's ``encoder.core.x`` is ``encoder.x``."""
    for theirs, ours in ENCODER_ALIASES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def match(source: dict, own: dict) -> tuple[dict, list[str], list[str], list[str]]:
    """``(loadable {own key: tensor}, own keys without a match, source keys unused, shape mismatches)``:
    by name first, then by :func:`canonical` name; only tensors of equal shape load."""
    by_canon: dict[str, str] = {}
    for k in source:
        by_canon.setdefault(canonical(k), k)
    loadable, missing, shapes, used = {}, [], [], set()
    for k, v in own.items():
        src = k if k in source else by_canon.get(canonical(k))
        if src is None:
            missing.append(k)
        elif tuple(source[src].shape) != tuple(v.shape):
            shapes.append(f"{k}: {tuple(source[src].shape)} there, {tuple(v.shape)} here")
            used.add(src)
        else:
            loadable[k] = source[src]
            used.add(src)
    return loadable, missing, [k for k in source if k not in used], shapes


def _few(names: list[str]) -> str:
    return ", ".join(names[:SHOW]) + (", ..." if len(names) > SHOW else "")


def _mismatch(missing: list[str], unused: list[str], shapes: list[str]) -> str:
    parts = ([f"{len(shapes)} of another shape ({_few(shapes)})"] if shapes else []) \
        + ([f"{len(missing)} of this model with no match there ({_few(missing)})"] if missing else []) \
        + ([f"{len(unused)} there not used here ({_few(unused)})"] if unused else [])
    return "; ".join(parts)


def warm_start(model: nn.Module, spec: str | Path, strict: bool = True) -> list[str]:
    """Load the weights of the checkpoint ``spec`` names (:func:`init_source`) into ``model``.

    ``strict``: every tensor of the model and of the checkpoint must match by name and shape, else a
    ConfigError lists a few of the mismatches; otherwise the matching tensors load and the rest keep
    their initialisation. Returns the lines that say what was loaded and what was skipped."""
    ckpt = init_source(spec)
    source = checkpoint_weights(ckpt)
    own = model.state_dict()
    loadable, missing, unused, shapes = match(source, own)
    epoch = read_state(ckpt).get("epoch")
    where = f"{ckpt}" + (f" (epoch {epoch})" if epoch else "")
    if strict and (missing or unused or shapes):
        raise ConfigError(f"train.init_from: {where} does not fit this {type(model).__name__} "
                          f"({_mismatch(missing, unused, shapes)}); load only the tensors whose name and shape "
                          "match with train.init_from_strict=false")
    if not loadable:
        raise ConfigError(f"train.init_from: no tensor of {where} fits this {type(model).__name__} "
                          f"({_mismatch(missing, unused, shapes)}); expected a run of a model with the same layers")
    model.load_state_dict(loadable, strict=False)
    encoder = sum(k.startswith("encoder.") for k in loadable)
    mapped = sum(k not in source for k in loadable)
    lines = [f"init_from {where}: loaded {len(loadable)} of {len(own)} tensors of this {type(model).__name__} "
             f"({encoder} encoder tensors" + (f", {mapped} of them from its encoder.core.*" if mapped else "") + ")"]
    if missing or unused or shapes:
        lines.append(f"init_from skipped: {_mismatch(missing, unused, shapes)}; the tensors of this model that "
                     "were not loaded keep their fresh initialisation")
    return lines


def check_not_resumed(init_from: str | None, resumed_run: Path) -> None:
    """A resumed run continues from its own checkpoint: ``train.init_from`` may only be the one it
    started with (its config.yaml says so, and it is not applied again), never a new one."""
    if not init_from:
        return
    config = Path(resumed_run) / "config.yaml"
    started = (read_yaml(config).get("train") or {}).get("init_from") if config.is_file() else None
    if started != init_from and not (started and Path(started).resolve() == Path(init_from).resolve()):
        raise ConfigError(f"train.init_from={init_from} with train.resume: a resumed run continues from its own "
                          f"checkpoint; to start from {init_from}'s weights start a new run (name=<new name>) "
                          "without train.resume")
