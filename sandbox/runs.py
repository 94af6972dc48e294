"""Load a trained run for inference, and the inference steps that evaluate.py and predict.py share.

    cfg, model = load_run("runs/unet_dice")                    # checkpoints/best, eval mode, cuda if any
    cfg, model = load_run("runs/unet_dice", "last", ["data.root=/other", "data.image_dir=images"])
    records = evaluate_dataset(model, build_data(cfg, ("test",))["test"], channels_last=cfg.train.channels_last)
    maps = predict_maps(model, [rgb_uint8_hw3, ...], cfg.data.size, cfg.data.resize)  # [{"mask": P, ...}]

The checkpoint's own ``config.yaml`` builds the model (it is the config the weights were
trained with); the run's ``config.yaml`` is the fallback for checkpoints without one. Only
``data.*`` keys may be overridden: the model, loss and seed belong to the weights.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from sandbox.build import build_model
from sandbox.config import Config, config_from_dict, read_yaml
from sandbox.data.transforms import fit_to_size, unfit
from sandbox.errors import ConfigError, SandboxError
from sandbox.metrics import (boundary_f1_per_image, dice_per_image, iou_per_image, pixel_accuracy_per_image,
                             regression_metrics)
from sandbox.rundir import WEIGHTS_FILE

log = logging.getLogger("sandbox")
RUN_HINT = "expected runs/<name> written by sandbox/train.py"


def checkpoint_dir(run_dir: str | Path, which: str = "best") -> tuple[Path, Path]:
    """``(run directory, checkpoint directory)`` for ``run_dir`` (``runs/<name>``) and ``which``
    (``best``, ``last``, ``epoch_NNN``); a checkpoint directory itself is accepted too (``which`` unused)."""
    path = Path(run_dir)
    if (path / WEIGHTS_FILE).is_file() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    if not path.is_dir():
        raise SandboxError(f"{str(path)!r} is not a run directory: no such folder; {RUN_HINT}")
    if not (path / "config.yaml").is_file():
        raise SandboxError(f"{str(path)!r} is not a run directory: no config.yaml; {RUN_HINT}")
    ckpt = path / "checkpoints" / which
    if not (ckpt / WEIGHTS_FILE).is_file():
        ckpts = path / "checkpoints"
        have = sorted(p.name for p in ckpts.iterdir() if (p / WEIGHTS_FILE).is_file()) if ckpts.is_dir() else []
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
        model["weights"] = None  # only initialised training; model.pt replaces those weights
        raw["model"] = model
    return config_from_dict(raw, list(overrides), source=str(src))


def load_weights(model: nn.Module, path: Path, config_path: Path | str) -> None:
    """Load a plain state_dict (``weights_only``) into ``model``; a mismatch names the first differing keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torn, foreign or pickled-object files: say which file, not where in torch
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "WeightsUnpickler error:" in text:  # torch's advice around it is about trusting pickles: keep the cause
            text = re.split(r" Please use| Check the documentation", text.split("WeightsUnpickler error:", 1)[1])[0]
        reason = text.strip()[:200]
        raise SandboxError(f"checkpoint {str(path)!r} could not be loaded ({type(exc).__name__}: {reason}); "
                           "expected a state_dict saved by sandbox/train.py") from None
    if not isinstance(state, dict):
        raise SandboxError(f"checkpoint {str(path)!r} holds a {type(state).__name__}; expected a state_dict")
    # torch.compile and DDP wrappers prefix every key; the bare model has none
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    shapes = [f"{k}: {tuple(state[k].shape)} there, {tuple(v.shape)} here" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if shapes or missing or extra:
        parts = shapes[:2] + ([f"missing {', '.join(missing[:2])}"] if missing else []) \
            + ([f"unexpected {', '.join(extra[:2])}"] if extra else [])
        raise SandboxError(f"checkpoint {str(path)!r} was trained with a different model config than "
                           f"{config_path} ({'; '.join(parts)}); restore the model section it was trained with")
    model.load_state_dict(state)


def load_run(run_dir: str | Path, which: str = "best", overrides: Sequence[str] = (),
             device: Optional[str | torch.device] = None, need: Sequence[str] = ("mask",)) -> tuple[Config, nn.Module]:
    """``(cfg, model)`` of a trained run: ``checkpoints/<which>/model.pt`` in eval mode on ``device``
    (cuda when available, else cpu), channels_last when the run trained so. ``need``: heads the
    caller needs (a segmentation run has ``mask``); a run without them is refused."""
    run, ckpt = checkpoint_dir(run_dir, which)
    cfg = run_config(run_dir, which, overrides)
    lacking = [t for t in need if t not in cfg.loss]
    if lacking:
        raise SandboxError(f"{str(run)!r}: the {cfg.model.name} run has no {lacking[0]} head (targets: "
                           f"{', '.join(cfg.loss)}); expected a segmentation run (loss.mask), e.g. from "
                           "configs/unet_dice.yaml")
    model = build_model(cfg)
    load_weights(model, ckpt / WEIGHTS_FILE, cfg.source)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return cfg, model


def forward(model: nn.Module, x: torch.Tensor, channels_last: bool = True) -> dict[str, torch.Tensor]:
    """``x: (B, C, S, S)`` in [0, 1] -> ``{name: tensor}``, the model's outputs in fp32, fed as the trainer
    feeds it (channels_last when the run trained so; no autocast: the reference precision)."""
    dev = next(model.parameters()).device
    x = x.to(dev, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
    out = out._asdict() if hasattr(out, "_asdict") else out  # NamedTuple outputs are allowed too
    return {k: v.float() for k, v in out.items() if isinstance(v, torch.Tensor)}


def mask_metrics(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """``{"dice", "iou", "pixel_acc", "boundary_f1"}``, each ``(B,)``, for ``logits, target: (B, 1, H, W)``."""
    return {"dice": dice_per_image(logits, target, threshold), "iou": iou_per_image(logits, target, threshold),
            "pixel_acc": pixel_accuracy_per_image(logits, target, threshold),
            "boundary_f1": boundary_f1_per_image(logits, target, threshold=threshold)}


def _at_original_size(dataset, index: int, logits: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Mask metrics of one folder sample at its image's own size: P(mask) ``(1, S, S)`` mapped back as
    predict.py does, the truth read at full size (resized to its image with nearest, as the dataset does)."""
    import cv2

    from sandbox.data.folders import open_image, to_mask

    meta = dataset.meta(index)
    truth = to_mask(open_image(dataset.path(index, "mask")), dataset.mask_threshold)[0]
    if truth.shape != tuple(meta["orig_hw"]):
        truth = cv2.resize(truth, tuple(meta["orig_hw"][::-1]), interpolation=cv2.INTER_NEAREST)
    prob = unfit(torch.sigmoid(logits.float().cpu()), meta)
    hard = (prob > threshold).float() * 40 - 20  # the decision as logits of +-20: exact for any threshold
    return mask_metrics(hard[None], torch.from_numpy(truth)[None, None].float(), threshold)


def evaluate_dataset(model: nn.Module, dataset, threshold: float = 0.5, batch_size: int = 16,
                     channels_last: bool = True, progress: Optional[str] = None,
                     original_size: bool = False) -> list[dict]:
    """Per-image metrics, one dict per sample in dataset order: ``{"index", ["stem", "path" (folders)],
    "dice", "iou", "pixel_acc", "boundary_f1", ["depth_l1", "depth_rmse", "depth_ssim"]}``.

    At the net's resolution, with the same functions, threshold convention and batching as the
    trainer's validation; ``original_size`` (folder datasets): the mask metrics at each image's own
    size instead (depth stays at the net's). ``progress``: a tqdm label (shown on terminals only).
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from sandbox.trainers.base import collate

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    items = getattr(dataset, "items", None)
    records: list[dict] = []
    for batch in tqdm(loader, desc=progress, disable=None if progress else True, leave=False):
        out = forward(model, batch["image"], channels_last)
        indices = batch["index"].tolist()
        if original_size:
            per = [_at_original_size(dataset, i, out["mask"][j], threshold) for j, i in enumerate(indices)]
            values = {k: torch.cat([p[k] for p in per]) for k in per[0]}
        else:
            values = mask_metrics(out["mask"], batch["mask"].to(out["mask"].device), threshold)
        if "depth" in out and "depth" in batch:
            depth = regression_metrics(out["depth"], batch["depth"].to(out["depth"].device))
            values.update({f"depth_{k}": v for k, v in depth.items()})
        cols = {k: v.cpu().tolist() for k, v in values.items()}
        for j, index in enumerate(indices):
            rec: dict = {"index": index}
            if items is not None:
                rec.update(stem=items[index].stem, path=str(dataset.path(index)))
            rec.update({k: float(v[j]) for k, v in cols.items()})
            records.append(rec)
    return records


def predict_maps(model: nn.Module, images: Sequence[np.ndarray], size: int, resize: str = "stretch",
                 channels_last: bool = True) -> list[dict[str, np.ndarray]]:
    """``[(H_i, W_i, 3) uint8] -> [{"mask": P(mask), "depth": depth, ...}]``, each ``(H_i, W_i) float32``:
    each image fitted to ``size`` with the run's ``data.resize`` policy (as the folder dataset does),
    predicted, and mapped back to its original size (bilinear). ``mask`` heads go through the
    sigmoid; other heads (``depth``) are regressions, clipped to [0, 1] as the trainer's panels show them."""
    if not images:
        return []
    fitted, metas = zip(*(fit_to_size(im, size, resize, "image") for im in images))
    x = torch.from_numpy(np.stack(fitted).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    out = {k: (torch.sigmoid(v) if k == "mask" else v.clamp(0, 1)).cpu()  # (B, 1, S, S)
           for k, v in forward(model, x, channels_last).items()}
    return [{k: unfit(v[i, 0], meta).numpy() for k, v in out.items()} for i, meta in enumerate(metas)]

