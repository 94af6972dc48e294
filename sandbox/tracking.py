"""Tracking: Weights & Biases through Accelerate's trackers, plus plain files.

W&B mode (``track.wandb``): ``disabled``; ``online`` / ``offline`` as asked; ``auto``
honours ``WANDB_MODE`` when set, else ``online`` when an API key is configured
(``WANDB_API_KEY`` or a ``~/.netrc`` entry for api.wandb.ai) and ``offline`` otherwise,
so a machine with no key never prompts, blocks or needs the network. A W&B failure is
logged and training goes on. Only the main process has a tracker or writes files.
"""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import secrets
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from sandbox.rundir import write_atomic  # noqa: E402

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


def truncate_metrics(path: Path, epoch: int, step: int) -> int:
    """Drop records written after the checkpoint being resumed (``epoch`` epochs done, ``step``
    steps), so the file reads as if the run had never stopped. Atomic; returns records dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line torn by the kill
            continue
        if r.get("step", 0) <= step and (r.get("split") != "val" or r.get("epoch", 0) < epoch):
            keep.append(line)
    if len(keep) != len(lines):
        write_atomic(path, "".join(k + "\n" for k in keep))
    return len(lines) - len(keep)


class MetricsLog:
    """Append-only ``metrics.jsonl`` on the main process, mirrored to the Accelerate trackers."""

    def __init__(self, path: Path, accelerator, start_time: float | None = None):
        self.path = Path(path)
        self.accelerator = accelerator
        self.start = start_time if start_time is not None else time.time()
        self.wandb_failed = False

    def log(self, split: str, epoch: int, step: int, values: dict[str, float], **extra: Any) -> dict:
        record = {"split": split, "epoch": epoch, "step": step, "time": round(time.time() - self.start, 3),
                  **extra, **{k: _clean(v) for k, v in values.items()}}
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self._to_trackers({k: v for k, v in values.items() if isinstance(v, (int, float))}, step)
        return record

    def _to_trackers(self, values: dict, step: int) -> None:
        if self.wandb_failed or not self.accelerator.trackers:
            return
        try:
            self.accelerator.log(values, step=step)
        except Exception as exc:  # W&B must never stop training
            self.wandb_failed = True
            log.warning("W&B logging failed (%s); metrics still go to %s", exc, self.path)

    def log_image(self, key: str, path: Path, step: int, caption: str = "") -> None:
        if not self.accelerator.is_main_process or self.wandb_failed or not self.accelerator.trackers:
            return
        try:
            import wandb

            tracker = self.accelerator.get_tracker("wandb", unwrap=True)
            tracker.log({key: wandb.Image(str(path), caption=caption)}, step=step)
        except Exception as exc:  # W&B must never stop training
            log.warning("W&B image logging failed (%s)", exc)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep the fact as text
    return v


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


# ----------------------------------------------------------------------------- plots

def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: the rest is still good
    return records


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """``plots/loss.png`` (train per log step vs val per epoch) and ``plots/metrics.png`` (val metrics)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    epoch_series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        for k, v in r.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or "/" not in k:
                continue
            series[k].append((r["step"], v))
            if r.get("split") == "val":
                epoch_series[k].append((r["epoch"], v))
    written = []
    loss_keys = sorted(k for k in series if k.split("/")[1] == "loss")
    if loss_keys:
        parts = [k for k in loss_keys if k.count("/") >= 3]
        fig, axes = plt.subplots(1, 2 if parts else 1, figsize=(12 if parts else 6.5, 4), squeeze=False)
        ax = axes[0, 0]
        for k in ("train/loss", "val/loss"):
            if k in series:
                xs, ys = zip(*series[k])
                ax.plot(xs, ys, "-" if k.startswith("train") else "o-", label=k, alpha=0.9)
        ax.set(xlabel="optimizer step", ylabel="loss", title="loss: train (per log step) vs val (per epoch)")
        ax.grid(alpha=0.3)
        ax.legend()
        if parts:
            ax = axes[0, 1]
            for k in parts:
                xs, ys = zip(*series[k])
                ax.plot(xs, ys, "-" if k.startswith("train") else "o--", label=k, alpha=0.9)
            ax.set(xlabel="optimizer step", title="loss parts (unweighted)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "loss.png"))
    metric_keys = sorted(k for k in epoch_series if k.split("/")[1] != "loss")
    if metric_keys:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for k in metric_keys:
            xs, ys = zip(*epoch_series[k])
            ax.plot([x + 1 for x in xs], ys, "o-", label=k)
        ax.set(xlabel="epoch", ylabel="score", title="validation metrics")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, out_dir / "metrics.png"))
    return written


def _save(fig, path: Path) -> Path:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
