"""What a training run prints: the banner before the first epoch and one line per epoch."""
from __future__ import annotations

import shlex

from sandbox.invocation import command


def banner(model_name: str, n_params: int, device: str, processes: int, threads: int | str | None, precision: str,
           channels_last: bool, data: str, n_train: int, n_val: int, size: int, batch: int, epochs: int,
           steps_per_epoch: int, run: str) -> str:
    dev = device + (f" x{processes} processes" if processes > 1 else "")
    thr = "" if threads is None else f", {threads}" if isinstance(threads, str) else f", {threads} torch threads"
    return (f"sandbox: {model_name} ({n_params / 1e6:.2f} M params) on {dev}{thr}, "
            f"precision {precision}, channels_last {channels_last} | "
            f"{data} {n_train} train / {n_val} val at {size} px, batch {batch} | {epochs} epochs x "
            f"{steps_per_epoch} steps | run {run}")


def epoch_line(epoch: int, epochs: int, train: dict, val: dict, seconds: float, monitor: str,
               best: float | None, best_epoch: int | None) -> str:
    """``epoch`` counts from 1."""
    keys = ["train/loss"] + [k for k in val]
    vals = {**train, **val}
    parts = "  ".join(f"{k} {vals[k]:.4f}" for k in keys if k in vals and not k.startswith("val/loss/"))
    best_s = f"  best {monitor} {best:.4f} (epoch {best_epoch})" if best is not None else ""
    return f"epoch {epoch}/{epochs}  {parts}{best_s}  {seconds:.1f} s"


#: what to run after a run of each task: (command, its arguments, why); printed by :func:`next_lines`
NEXT = {"segmentation": [("evaluate", "--run {run}", "scores on the test split"),
                         ("predict", "--run {run} --input <images>", "masks for your images"),
                         ("compare", "--run {run} <other runs>", "side by side")],
        "generative": [("probe", "--run {run}", "fid_own, latent probe (test split)"),
                       ("interpolate", "--run {run} --random 3", "walk the latent space"),
                       ("compare", "--run {run} <other runs>", "side by side")]}


def next_lines(run: str, task: str) -> list[str]:
    """``next:`` and the commands of NEXT for ``task`` on ``run``, in the form this install runs them
    (``python sandbox/evaluate.py`` in a checkout, ``sandbox-evaluate`` installed), comments aligned."""
    steps = NEXT.get(task, [])
    cmds = [f"{command(name)} {args.format(run=shlex.quote(str(run)))}" for name, args, _ in steps]
    width = max(map(len, cmds), default=0)
    return ["next:"] + [f"  {cmd:<{width}}  # {why}" for cmd, (_, _, why) in zip(cmds, steps)]


def run_summary(run: str, seconds: float, monitor: str, best: float | None, best_epoch: int | None,
                task: str) -> str:
    """The end of a run: where it is, how long it took, its best monitored value, what to run next."""
    best_s = (f"; best {monitor} {best:.4f} at epoch {best_epoch} (checkpoints/best)" if best is not None
              else f"; {monitor} was never logged, checkpoints/best is the last epoch")
    took = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
    return "\n".join([f"done: {run} in {took}{best_s}"] + next_lines(run, task))


def stages_summary(run: str, seconds: float, stages: list[tuple[str, str, str, float | None, int | None]],
                   task: str) -> str:
    """The end of a staged run: each stage's run and best (``(label, directory, monitor, best, best_epoch)``),
    the total time, and what to run next on ``run`` (which loads its final stage)."""
    took = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
    lines = [f"done: {run}, {len(stages)} stages in {took}; {run} loads the last stage's checkpoints"]
    for label, where, monitor, best, best_epoch in stages:
        lines.append(f"  {label}: {where}" + (f"  best {monitor} {best:.4f} at epoch {best_epoch}"
                                              if best is not None else ""))
    lines += next_lines(run, task)
    return "\n".join(lines)
