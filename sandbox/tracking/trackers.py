"""The Accelerate trackers of a training run (``track.report_to``): W&B (:mod:`.wandb_run`) and TensorBoard.

``log_with(report_to, wandb_mode, run_dir)`` is what the Accelerator is built with; ``start_trackers``
initialises them (``accelerator.init_trackers``) and returns the W&B run id. TensorBoard writes
``runs/<name>/tensorboard/`` (event files; ``tensorboard --logdir runs``): the same scalars at the same
steps as W&B, the run's config as text and the epoch's images. A tracker that fails to start is
dropped with a warning; the others and the run go on.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from sandbox.errors import ConfigError
from sandbox.tracking import wandb_run

log = logging.getLogger("sandbox")

TENSORBOARD_DIR = "tensorboard"  # under the run directory


def tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def log_with(report_to: list[str], wandb_mode: str, run_dir: Path) -> list | None:
    """The trackers to build the Accelerator with (TensorBoard first: a W&B failure at start leaves it
    running); None for none. Raises ConfigError for TensorBoard without its package."""
    trackers: list = []
    if "tensorboard" in report_to:
        if not tensorboard_available():
            raise ConfigError("track.report_to: tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or drop it: track.report_to=[wandb])")
        from accelerate.tracking import TensorBoardTracker

        trackers.append(TensorBoardTracker(TENSORBOARD_DIR, str(run_dir)))  # -> run_dir/tensorboard
    if "wandb" in report_to and wandb_mode != "disabled":
        trackers.append("wandb")
    return trackers or None


def start_trackers(accelerator, mode: str, project: str, run_name: str, config: dict, run_dir: Path,
                   group: str | None, job_type: str, tags: list[str], entity: str | None, run_id: str | None,
                   monitor: str = "val/loss", monitor_mode: str = "min", step: int = 0) -> str | None:
    """Start the Accelerator's trackers; returns the W&B run id (None without W&B). ``step``: the
    optimizer step the run resumes at (TensorBoard hides the events a killed run wrote after it, as
    metrics.jsonl drops them). Never raises."""
    names = [t.name if hasattr(t, "start") else str(t) for t in accelerator.log_with]  # trackers or LoggerTypes
    if not names:
        return None
    for tracker in accelerator.log_with:
        if getattr(tracker, "name", None) == "tensorboard" and step:
            tracker.init_kwargs["purge_step"] = step + 1
    kwargs = {}
    try:
        if "wandb" in names:
            wandb_run.prepare_env(mode)
            kwargs["wandb"] = wandb_run.init_kwargs(mode, run_name, run_dir, group, job_type, tags, entity, run_id)
        accelerator.init_trackers(project, init_kwargs=kwargs)
    except Exception as exc:  # a tracker must never stop training
        failed = next((t.name for t in accelerator.trackers if not started(t)), names[-1])
        accelerator.trackers = [t for t in accelerator.trackers if started(t)]
        log.warning("%s could not start (%s: %s); continuing without it", tracker_title(failed),
                    type(exc).__name__, exc)
    if not accelerator.is_main_process:
        return kwargs.get("wandb", {}).get("id")
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "wandb":
                tracker.store_init_configuration(config)
                wandb_run.define_metrics(tracker.run, monitor, monitor_mode)
                wandb_run.announce(tracker.run, mode)
            elif tracker.name == "tensorboard":
                tracker.writer.add_text("config", "\n".join("    " + line for line in
                                                            json.dumps(config, indent=2).splitlines()))
        except Exception as exc:
            log.warning("%s: could not store the config (%s: %s)", tracker_title(tracker.name), type(exc).__name__,
                        exc)
    return kwargs["wandb"]["id"] if any(t.name == "wandb" for t in accelerator.trackers) else None


def started(tracker) -> bool:
    return getattr(tracker, "run" if tracker.name == "wandb" else "writer", None) is not None


def tracker_title(name: str) -> str:
    return {"wandb": "W&B", "tensorboard": "TensorBoard"}.get(name, name)


def log_picture(accelerator, key: str, path: Path, step: int, caption: str = "") -> None:
    """A PNG to every tracker (W&B: an image; TensorBoard: an image summary). Main process; never raises."""
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "wandb":
                import wandb

                tracker.run.log({key: wandb.Image(str(path), caption=caption)}, step=step)
            elif tracker.name == "tensorboard":
                import numpy as np
                from PIL import Image

                with Image.open(path) as im:
                    tracker.writer.add_image(key, np.asarray(im.convert("RGB")), global_step=step,
                                             dataformats="HWC")
        except Exception as exc:  # W&B / TensorBoard must never stop training
            log.warning("%s image logging failed (%s)", tracker_title(tracker.name), exc)


def log_masks(accelerator, key: str, images, truths, preds, captions: list[str], class_labels: dict[int, str],
              step: int) -> None:
    """Images with truth / prediction mask overlays to W&B (the other trackers get the PNG panel). Never raises."""
    for tracker in accelerator.trackers:
        if tracker.name != "wandb":
            continue
        try:
            tracker.run.log({key: wandb_run.mask_images(images, truths, preds, captions, class_labels)}, step=step)
        except Exception as exc:  # W&B must never stop training
            log.warning("W&B mask logging failed (%s)", exc)


def finish_trackers(accelerator, monitor: str, best, best_epoch, checkpoint: Path | None) -> None:
    """The end of a training run, before ``accelerator.end_training()``: W&B's best value, epoch and
    (``checkpoint`` given) the checkpoint artifact."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            run = tracker.run
            wandb_run.finish_run(run, monitor, best, best_epoch, checkpoint, f"model-{run.id}")
