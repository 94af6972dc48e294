"""Weights & Biases through Accelerate's trackers.

W&B mode (``track.wandb``): ``disabled``; ``online`` / ``offline`` as asked; ``auto`` honours
``WANDB_MODE`` when set, else ``online`` when an API key is configured (``WANDB_API_KEY`` or a
``~/.netrc`` entry for api.wandb.ai) and ``offline`` otherwise, so a machine with no key never
prompts, blocks or needs the network. A W&B failure is logged and training goes on. Only the
main process has a tracker.
"""
from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path

log = logging.getLogger("sandbox")


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


def start_wandb(accelerator, mode: str, project: str, run_name: str, config: dict, run_dir: Path,
                group: str | None, job_type: str, tags: list[str], entity: str | None,
                run_id: str | None) -> str | None:
    """Initialise the W&B tracker (main process only does real work); returns the run id or None."""
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    env = os.environ.get("WANDB_MODE")
    if env is not None and env.strip().lower() not in WANDB_ENV_MODES:
        # wandb validates its environment itself and refuses to start on e.g. an empty WANDB_MODE
        log.warning("WANDB_MODE=%r is not online/offline/disabled: running W&B %s", env, mode)
        os.environ["WANDB_MODE"] = mode
    try:
        import wandb

        kwargs = dict(name=run_name, dir=str(run_dir), mode=mode, group=group, job_type=job_type, tags=tags,
                      entity=entity, resume="allow", id=run_id or secrets.token_hex(4),
                      settings=wandb.Settings(init_timeout=20, silent=True, console="off"))
        accelerator.init_trackers(project, config=config, init_kwargs={"wandb": kwargs})
        if accelerator.is_main_process:
            run = accelerator.get_tracker("wandb", unwrap=True)
            where = getattr(run, "dir", "")
            if mode == "offline":
                log.info("W&B offline run in %s (upload later: wandb sync %s)", Path(where).parent, Path(where).parent)
            else:
                log.info("W&B %s run: %s", mode, getattr(run, "url", ""))
        return kwargs["id"]
    except Exception as exc:  # W&B must never stop training
        accelerator.trackers = []
        log.warning("W&B could not start (%s: %s); continuing with local files only", type(exc).__name__, exc)
        return None


def log_files(track, run_dir: Path, files: list[Path], prefix: str) -> None:
    """Attach ``files`` (PNG as images, GIF as videos, under ``<prefix>/<suffix>``) to the run's W&B
    run (same id, offline unless logged in); ``track``: the run's track config. Never raises."""
    import json

    mode = resolve_wandb_mode(track.wandb)
    if mode == "disabled":
        return
    try:
        import wandb

        state = json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())
        run = wandb.init(project=track.project, entity=track.entity, id=state.get("wandb_id"),
                         resume="allow", dir=str(run_dir), mode=mode,
                         settings=wandb.Settings(init_timeout=20, silent=True, console="off"))
        run.log({f"{prefix}/{f.suffix[1:]}": (wandb.Video(str(f)) if f.suffix == ".gif" else wandb.Image(str(f)))
                 for f in files})
        run.finish()
    except Exception as exc:  # W&B must never stop the command
        log.warning("W&B logging skipped (%s: %s)", type(exc).__name__, exc)
