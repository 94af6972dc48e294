"""Curves: a run's training plots, sweep and comparison curves, the generative panel, the LR range test.

Each function takes plain records (dicts as in metrics.jsonl, or objects with ``.epochs`` rows) and
writes a PNG; none reads files.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from sandbox.viz.backend import plt


def integer_ticks(ax) -> None:
    """Whole-number ticks on the x axis (epochs, steps); ``min_n_ticks=1`` so that a one-epoch curve gets
    them too (with the default 2, a view of 0.95..1.05 holds one integer and matplotlib falls back to
    0.96, 0.98, ...)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """``plots/loss.png`` (train per log step vs val per epoch), ``plots/metrics.png`` (val metrics) and
    ``plots/lr.png`` (train/lr per log step)."""
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
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend()
        if parts:
            ax = axes[0, 1]
            for k in parts:
                xs, ys = zip(*series[k])
                ax.plot(xs, ys, "-" if k.startswith("train") else "o--", label=k, alpha=0.9)
            ax.set(xlabel="optimizer step", title="loss parts (unweighted)")
            integer_ticks(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "loss.png"))
    metric_keys = sorted(k for k in epoch_series if k.split("/")[1] != "loss")
    if metric_keys:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for k in metric_keys:
            xs, ys = zip(*epoch_series[k])
            ax.plot(xs, ys, "o-", label=k)
        ax.set(xlabel="epoch", ylabel="score", title="validation metrics")
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, out_dir / "metrics.png"))
    if series.get("train/lr"):
        written.append(plot_lr(series["train/lr"], out_dir / "lr.png"))
    return written


def plot_lr(points: list[tuple[float, float]], path: Path) -> Path:
    """``plots/lr.png``: the learning rate the optimizer ran at, per logged step (log scale when it spans
    10x or more, as warm-up and annealing do)."""
    xs, ys = zip(*points)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot(xs, ys, ".-", ms=3)
    positive = [y for y in ys if y > 0]
    if positive and max(positive) >= 10 * min(positive) and len(positive) == len(ys):
        ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="lr", title="learning rate (train/lr, per log step)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def curve_keys(groups: dict[str, list]) -> list[str]:
    keys = {k for runs in groups.values() for r in runs for e in r.epochs for k in e}
    vals = sorted(k for k in keys if k.startswith("val/") and not k.startswith("val/loss"))
    return [k for k in ("train/loss", "val/loss") if k in keys] + vals


def plot_groups(groups: dict[str, list], path: Path, x: str = "epoch") -> Path:
    """One panel per metric, one line per group vs ``x`` (``epoch`` or ``time``); a group of several
    runs (seeds) shows its mean with a ±1 std band over the epochs all of them reached."""
    keys = curve_keys(groups)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for i, key in enumerate(keys):
        ax = axes[i // cols, i % cols]
        for label, runs in groups.items():
            n = min(len(r.epochs) for r in runs)
            ys = np.array([[e.get(key, np.nan) for e in r.epochs[:n]] for r in runs])
            xs = np.array([[e[x] for e in r.epochs[:n]] for r in runs]).mean(0)
            mean = ys.mean(0)
            line, = ax.plot(xs / (60 if x == "time" else 1), mean, "o-", ms=3, label=label)
            if len(runs) > 1:
                std = ys.std(0, ddof=1)
                ax.fill_between(xs / (60 if x == "time" else 1), mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(title=key, xlabel="epoch" if x == "epoch" else "wall time (min)")
        if x == "epoch":
            integer_ticks(ax)
        ax.grid(alpha=0.3)
    for j in range(len(keys), rows * cols):
        axes[j // cols, j % cols].axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_metric_vs(lines: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str, path: Path) -> Path:
    """``{line label: [(x, mean, std), ...]}`` -> error-bar lines; log x when x spans 20x or more."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs_all = []
    for label, pts in lines.items():
        pts = sorted(pts)
        xs, ms, ss = (np.array(v, dtype=float) for v in zip(*pts))
        xs_all += list(xs)
        ax.errorbar(xs, ms, yerr=np.nan_to_num(ss), fmt="o-", capsize=3, label=label)
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 20:
        ax.set_xscale("log")
    elif all(float(x).is_integer() for x in xs_all):
        integer_ticks(ax)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} vs {xlabel} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_generative(records: list[dict], out: Path) -> Path | None:
    """``plots/generative.png`` from metrics.jsonl ``records``: discriminator means and KL by step;
    fid_own, diversity, probe R² and the denoising models' loss per t-bucket by epoch."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    panels = [("train", ["train/d_real", "train/d_fake", "train/d_prior", "train/d_code"], "D means (by step)"),
              ("train", ["train/loss/vae/kl"], "KL, nats per image (by step)"),
              ("val", ["val/fid_own"], "fid_own (by epoch; not Inception FID)"),
              ("val", ["val/diversity", "val/probe_r2_linear", "val/probe_r2_kernel", "val/ssim"],
               "diversity, probe R², SSIM (by epoch)"),
              ("val", [f"val/loss_t{b}" for b in range(5)], "val loss per t-bucket, t0 = least noise (by epoch)")]
    panels = [(s, [k for k in keys if any(k in r for r in (train if s == "train" else val))], title)
              for s, keys, title in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (split, keys, title) in zip(axes[0], panels):
        rows = train if split == "train" else val
        for k in keys:
            pts = [(r["step"] if split == "train" else r["epoch"], r[k]) for r in rows
                   if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot(*zip(*pts), "-" if split == "train" else "o-", label=k.split("/", 1)[1])
        ax.set(title=title, xlabel="optimizer step" if split == "train" else "epoch")
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_lr_find(result: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(result["suggestion"], color="tab:red", ls="--", label=f"suggested lr {result['suggestion']:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
