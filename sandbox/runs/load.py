"""Load a trained run: the one loader behind evaluate, predict, probe, interpolate and compare.

    cfg, model = load_run("runs/unet_dice")                    # checkpoints/best, eval mode, cuda if any
    cfg, model = load_run("runs/unet_dice", "last", ["data.root=/other", "data.image_dir=images"])
    cfg, model = load_run("runs/vae_attractors", task="generative")  # a segmentation run is refused

The checkpoint's own ``config.yaml`` builds the model (it is the config the weights were
trained with); the run's ``config.yaml`` is the fallback for checkpoints without one. Only
``data.*`` keys may be overridden: the model, loss and seed belong to the weights.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from sandbox.build import build_model
from sandbox.config import Config
from sandbox.config.loading import config_from_dict, read_yaml
from sandbox.errors import ConfigError, SandboxError, short
from sandbox.models import MODELS
from sandbox.nn.weights import UnreadableFile
from sandbox.runs.checkpoints import WEIGHTS_FILE, read_weights, weights_file
from sandbox.runs.rundir import check_tree
from sandbox.runs.stages import final_run

log = logging.getLogger("sandbox")
RUN_HINT = "expected runs/<name> written by sandbox/train.py"
#: what --which may name: one checkpoint directory of the run (no separators: never a path out of it)
CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def checkpoint_dir(run_dir: str | Path, which: str = "best") -> tuple[Path, Path]:
    """``(run directory, checkpoint directory)`` for ``run_dir`` (``runs/<name>``) and ``which``
    (``best``, ``last``, ``epoch_NNN``); a checkpoint directory itself is accepted too (``which`` unused)."""
    path = Path(run_dir)
    if weights_file(path) is not None and path.parent.name == "checkpoints":
        check_tree(path.parent.parent)
        return path.parent.parent, path
    if not CHECKPOINT_NAME.fullmatch(str(which)) or which in (".", ".."):
        raise SandboxError(f"--which {short(which)}: expected the name of a checkpoint of the run (best, last, "
                           "epoch_NNN), not a path; to score another run give it with --run")
    check_tree(path)  # nothing planted (links, FIFOs) in what is read and then written (eval/, predictions/)
    path = final_run(path)  # a finished staged run: its last stage (sandbox/runs/stages.py)
    if not path.is_dir():
        raise SandboxError(f"{str(path)!r} is not a run directory: no such folder; {RUN_HINT}")
    if not (path / "config.yaml").is_file():
        raise SandboxError(f"{str(path)!r} is not a run directory: no config.yaml; {RUN_HINT}")
    ckpt = path / "checkpoints" / which
    if weights_file(ckpt) is None:
        ckpts = path / "checkpoints"
        have = sorted(p.name for p in ckpts.iterdir() if weights_file(p)) if ckpts.is_dir() else []
        why = f"; it has {', '.join(have)} (pick one with --which)" if have else \
            " (stopped before its first checkpoint?)"
        if have:  # a run, just not this checkpoint
            raise SandboxError(f"run {str(path)!r} has no checkpoints/{which}/{WEIGHTS_FILE}{why}")
        raise SandboxError(f"{str(path)!r} is not a run directory: no checkpoints/{which}/{WEIGHTS_FILE}{why}; "
                           f"{RUN_HINT}")
    return path, ckpt


def run_config(run_dir: str | Path, which: str = "best", overrides: Sequence[str] = ()) -> Config:
    """The config the checkpoint was trained with, with ``data.*`` overrides applied and validated."""
    run, ckpt = checkpoint_dir(run_dir, which)
    src = ckpt / "config.yaml" if (ckpt / "config.yaml").is_file() else run / "config.yaml"
    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("data.")]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: only data.* keys can change for a trained run (the model, loss "
                          f"and seed belong to its weights, see {src}); e.g. data.root=/other/folder")
    raw = read_yaml(src)
    if src != run / "config.yaml" and (run / "config.yaml").is_file():
        run_model = (read_yaml(run / "config.yaml").get("model") or {})
        diff = [k for k, v in (raw.get("model") or {}).items() if run_model.get(k, v) != v]
        if diff:
            log.warning("%s differs from %s in model.%s; using the checkpoint's (the weights were trained with it)",
                        run / "config.yaml", src, ", model.".join(diff))
    model = dict(raw.get("model") or {})
    if model.get("weights") and not Path(model["weights"]).is_file():
        model["weights"] = None  # only initialised training; the checkpoint's weights replace those
        raw["model"] = model
    return config_from_dict(raw, list(overrides), source=str(src))


def state_dict_of(path: Path) -> dict:
    """The state_dict in a weights file (:func:`sandbox.runs.checkpoints.read_weights`: safetensors, or a
    legacy ``model.pt`` read ``weights_only``), keys as the bare model names them; a torn, foreign or
    non-dict file is one line naming it."""
    try:
        state = read_weights(path)  # an unsafe model.pt raises its own one line (UnsafeFile): never loaded
    except UnreadableFile as exc:  # torn or foreign: say which file, not where in torch
        raise SandboxError(f"checkpoint {str(path)!r} could not be loaded ({str(exc).split(' ', 1)[1]}); "
                           "expected a state_dict saved by sandbox/train.py") from None
    if not isinstance(state, dict):
        raise SandboxError(f"checkpoint {str(path)!r} holds a {type(state).__name__}; expected a state_dict")
    return state


def checkpoint_weights(ckpt: Path) -> dict:
    """The model weights a checkpoint directory holds (:func:`state_dict_of` of its weights file)."""
    path = weights_file(ckpt)
    if path is None:
        raise SandboxError(f"checkpoint {str(ckpt)!r} holds no weights ({WEIGHTS_FILE}); "
                           "expected a checkpoint directory written by sandbox/train.py")
    return state_dict_of(path)


def shape_mismatches(state: dict, own: dict, there: str = "there", here: str = "here") -> list[str]:
    """``name: (checkpoint shape) there, (model shape) here`` for each tensor of ``own`` (a model's
    state_dict) that ``state`` holds with another shape, in the model's order."""
    return [f"{k}: {tuple(state[k].shape)} {there}, {tuple(v.shape)} {here}" for k, v in own.items()
            if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]


def fitting_width(cfg: Config, state: dict) -> Optional[int]:
    """The ``model.width`` whose model has every tensor of ``state`` at its shape (the rest of the model
    section as in ``cfg``), or None. The candidate comes from the first mismatching tensor (its widths
    scale with model.width) and is checked by building that model: a hint is given only when it is true."""
    if cfg.model.widths is not None:  # explicit stage widths: model.width is not what sets them
        return None
    own = build_model(cfg).state_dict()
    first = next((k for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)), None)
    if first is None:
        return None
    ratios = {a / b for a, b in zip(state[first].shape, own[first].shape) if a != b and b}
    width = cfg.model.width * ratios.pop() if len(ratios) == 1 else None
    if width is None or width != int(width) or not 1 <= width <= 4096:
        return None
    try:
        other = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=int(width))))
    except (SandboxError, ValueError, RuntimeError):  # a width the model refuses (e.g. its norm's groups)
        return None
    fits = other.state_dict()
    same = all(tuple(state[k].shape) == tuple(v.shape) for k, v in fits.items() if k in state)
    return int(width) if same else None


def load_weights(model: nn.Module, path: Path, config_path: Path | str, cfg: Optional[Config] = None) -> None:
    """Load a weights file into ``model``; a mismatch names the first differing keys (with ``cfg``, the
    model.width the weights fit, where one does)."""
    state = state_dict_of(path)
    own = model.state_dict()
    shapes = shape_mismatches(state, own)
    # keys counted by load_state_dict itself, after the model's load hooks (which fill in what checkpoints
    # of earlier versions lack, e.g. the EMA update count); the model is discarded on a mismatch
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    if not shapes:
        missing, extra = model.load_state_dict(state, strict=False)
    if shapes or missing or extra:
        parts = shapes[:2] + ([f"missing {', '.join(missing[:2])}"] if missing else []) \
            + ([f"unexpected {', '.join(extra[:2])}"] if extra else [])
        width = fitting_width(cfg, state) if cfg is not None and shapes else None
        fix = (f"they fit model.width={width} ({config_path} says {cfg.model.width}): was it edited? restore "
               "model.width" if width else "restore the model section it was trained with")
        raise SandboxError(f"checkpoint {str(path)!r} was trained with a different model config than "
                           f"{config_path} ({'; '.join(parts)}); {fix}")


def load_run(run_dir: str | Path, which: str = "best", overrides: Sequence[str] = (),
             device: Optional[str | torch.device] = None, need: Sequence[str] = (),
             task: Optional[str] = None) -> tuple[Config, nn.Module]:
    """``(cfg, model)`` of a trained run: ``checkpoints/<which>/model.safetensors`` in eval mode on ``device``
    (cuda when available, else cpu), channels_last when the run trained so. ``task``: the kind of run
    the caller needs (``segmentation`` | ``generative``); ``need``: heads it needs (a segmentation run
    has ``mask``); a run without them is refused in one line."""
    run, ckpt = checkpoint_dir(run_dir, which)
    cfg = run_config(run_dir, which, overrides)
    if task is not None and MODELS[cfg.model.name].task != task:
        example = {"segmentation": "configs/unet_dice.yaml", "generative": "configs/vae_attractors.yaml"}[task]
        raise SandboxError(f"{str(run)!r} is a {cfg.model.name} run (targets: {', '.join(cfg.loss) or 'none'}); "
                           f"expected a {task} run, e.g. from {example}")
    lacking = [t for t in need if t not in cfg.loss]
    if lacking:
        raise SandboxError(f"{str(run)!r}: the {cfg.model.name} run has no {lacking[0]} head (targets: "
                           f"{', '.join(cfg.loss)}); expected a segmentation run (loss.mask), e.g. from "
                           "configs/unet_dice.yaml")
    model = build_model(cfg)
    load_weights(model, weights_file(ckpt), cfg.source, cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return cfg, model
