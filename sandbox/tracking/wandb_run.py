"""Weights & Biases through Accelerate's trackers (TensorBoard beside it: :mod:`.trackers`).

W&B mode (``track.wandb``): ``disabled``; ``online`` / ``offline`` as asked; ``auto`` honours
``WANDB_MODE`` when set, else ``online`` when an API key is configured (``WANDB_API_KEY`` or a
``~/.netrc`` entry for api.wandb.ai) and ``offline`` otherwise, so a machine with no key never
prompts, blocks or needs the network. A W&B failure is logged and training goes on. Only the
main process has a tracker.

What the run shows: ``val/*``, ``epoch_time`` and ``images_per_s`` against ``epoch`` (``train/*``
against the optimizer step); the monitored metric's summary is its best value (``max``/``min`` per
``train.monitor_mode``), so the runs table ranks the best epoch, not the last; at the end of a run
``best/<monitor>`` and ``best/epoch``, and with ``track.log_checkpoints`` checkpoints/best as a model
artifact. evaluate.py, probe.py and interpolate.py write into the SAME run's summary (its id is in
trainer_state.json), never a history row, so they open no new segment at step 0.
"""
from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import read_state

log = logging.getLogger("sandbox")

#: the x-axis of the per-epoch metrics (logged with every record) and what is plotted against it
EPOCH_METRICS = ("val/*", "epoch_time", "images_per_s", "skipped_batches")


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
        return bool(auth and auth[2])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun")  # what wandb accepts in WANDB_MODE (ours)


def resolve_wandb_mode(setting: str) -> str:
    """``auto | online | offline | disabled`` -> the mode to run W&B in (decided before init)."""
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in WANDB_ENV_MODES:
        return "offline" if env == "dryrun" else env
    return "online" if has_wandb_key() else "offline"


def prepare_env(mode: str) -> None:
    """Quiet wandb, and keep an invalid ``WANDB_MODE`` (wandb refuses to start on e.g. an empty one) from
    costing the run its W&B."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    env = os.environ.get("WANDB_MODE")
    if env is not None and env.strip().lower() not in WANDB_ENV_MODES:
        log.warning("WANDB_MODE=%r is not online/offline/disabled: running W&B %s", env, mode)
        os.environ["WANDB_MODE"] = mode


def init_kwargs(mode: str, run_name: str, run_dir: Path, group: str | None, job_type: str, tags: list[str],
                entity: str | None, run_id: str | None) -> dict:
    """``wandb.init`` keyword arguments of a training run (``project`` comes from ``init_trackers``)."""
    import wandb

    return dict(name=run_name, dir=str(run_dir), mode=mode, group=group, job_type=job_type, tags=tags,
                entity=entity, resume="allow", id=run_id or secrets.token_hex(4),
                settings=wandb.Settings(init_timeout=20, silent=True, console="off"))


def define_metrics(run, monitor: str, monitor_mode: str) -> None:
    """``epoch`` as the x-axis of the per-epoch metrics; the monitored metric summarised by its best."""
    run.define_metric("epoch")
    for name in EPOCH_METRICS:
        run.define_metric(name, step_metric="epoch")
    # a metric's own definition replaces the glob's, so the monitored one names its x-axis again
    run.define_metric(monitor, step_metric="epoch" if monitor.startswith("val/") else None, summary=monitor_mode)


def announce(run, mode: str) -> None:
    where = getattr(run, "dir", "")
    if mode == "offline":
        log.info("W&B offline run in %s (upload later: wandb sync %s)", Path(where).parent, Path(where).parent)
    else:
        log.info("W&B %s run: %s", mode, getattr(run, "url", ""))


def mask_images(images, truths, preds, captions: list[str], class_labels: dict[int, str]) -> list:
    """``wandb.Image``s of ``(H, W, 3)`` images in [0, 1] with the ground truth and the prediction as
    ``masks=`` overlays (``(H, W)`` 0/1 arrays; W&B toggles each per class)."""
    import numpy as np
    import wandb

    labels = {0: "background", **class_labels}
    return [wandb.Image((np.asarray(img) * 255).round().astype(np.uint8), caption=cap,
                        masks={"ground_truth": {"mask_data": np.asarray(t, dtype=np.uint8), "class_labels": labels},
                               "prediction": {"mask_data": np.asarray(p, dtype=np.uint8), "class_labels": labels}})
            for img, t, p, cap in zip(images, truths, preds, captions)]


def finish_run(run, monitor: str, best, best_epoch, checkpoint: Path | None, artifact_name: str) -> None:
    """The end of a training run: ``best/<monitor>`` and ``best/epoch`` in the summary; ``checkpoint``
    (checkpoints/best) as a model artifact when given. Never raises."""
    try:
        if best is not None:
            run.summary.update({f"best/{monitor}": best, "best/epoch": best_epoch})
        if checkpoint is not None and checkpoint.is_dir():
            import wandb

            art = wandb.Artifact(artifact_name, type="model",
                                 metadata={"monitor": monitor, "best": best, "epoch": best_epoch})
            art.add_dir(str(checkpoint))
            run.log_artifact(art, aliases=["best", f"epoch-{best_epoch}"])
    except Exception as exc:  # W&B must never stop training
        log.warning("W&B end of run skipped (%s: %s)", type(exc).__name__, exc)


def to_summary(track, run_dir: Path, values: dict, media: dict[str, Path] | None = None,
               tables: dict[str, list[dict]] | None = None) -> bool:
    """Write ``values`` (and ``media`` files: PNG as images, GIF as videos; ``tables``: lists of rows as
    ``wandb.Table``s) into the summary of the run's own W&B run (the id in its trainer_state.json), as
    evaluate.py / probe.py / interpolate.py do: summary only, no history row, so no new segment.
    ``track``: the run's track config. Returns whether it was written; never raises."""
    mode = resolve_wandb_mode(track.wandb)
    if mode == "disabled" or "wandb" not in track.report_to:
        return False
    try:  # the one reader of the file (checked against its schema: wandb_id a string)
        state = read_state(Path(run_dir) / "checkpoints" / "last")
    except SandboxError:
        state = {}
    if not state.get("wandb_id"):
        log.info("W&B: %s has no W&B run (trained without it); results stay in its files", run_dir)
        return False
    try:
        import wandb

        prepare_env(mode)
        run = wandb.init(project=track.project, entity=track.entity, id=state["wandb_id"], resume="allow",
                         dir=str(run_dir), mode=mode, settings=wandb.Settings(init_timeout=20, silent=True,
                                                                               console="off"))
        update = dict(values)
        for key, f in (media or {}).items():
            update[key] = wandb.Video(str(f)) if Path(f).suffix == ".gif" else wandb.Image(str(f))
        for key, rows in (tables or {}).items():
            if rows:
                cols = list(rows[0])
                update[key] = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        run.summary.update(update)
        run.finish()
        return True
    except Exception as exc:  # W&B must never stop the command
        log.warning("W&B summary skipped (%s: %s)", type(exc).__name__, exc)
        return False


def flat(prefix: str, values: dict) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>/a/b": 1}``: the numbers of a result file, for :func:`to_summary`."""
    out = {}
    for k, v in values.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            out.update(flat(key, v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out
