"""The LR range test (Smith 2015) on a trainer's own step; :func:`suggest` picks from its curve."""
from __future__ import annotations

import math
from typing import Sequence

from sandbox.errors import SandboxError


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> tuple[int, int]:
    """``(k, stop)`` on a (smoothed) loss curve over increasing lrs: ``stop`` the index of its minimum
    (the first, if several), ``k`` the index where its steepest descent in log lr starts, searched
    before the minimum (the segment ``k -> k + 1`` with the most negative ``d loss / d log lr``;
    0 when the curve starts at its minimum). The suggested lr is ``lrs[k]``."""
    stop = min(range(len(losses)), key=losses.__getitem__)
    if stop == 0:
        return 0, 0
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(stop)]
    return min(range(stop), key=slopes.__getitem__), stop


def lr_range_test(trainer, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100,
                  smooth: float = 0.9, diverge: float = 4.0) -> dict:
    """Run the test on ``trainer`` (its model is trained: use a throwaway trainer).

    Returns ``{"lrs", "losses" (smoothed, bias-corrected), "suggestion", "stopped_early"}``; the
    suggestion is the lr at the steepest descent of the smoothed loss (in log lr), searched
    before the minimum; the test stops once the loss exceeds ``diverge`` x its best.
    """
    from tqdm.auto import tqdm

    if len(trainer.optimizers) != 1:
        raise SandboxError(f"lr_find: the {trainer.cfg.model.name} trainer steps {len(trainer.optimizers)} "
                           "optimizers; the range test needs a single one (a supervised model)")
    opt = trainer.optimizers[0][0]
    trainer.optimizers = [(opt, None)]  # we set the lr ourselves
    factor = (max_lr / min_lr) ** (1 / max(1, steps - 1))
    lrs, losses, avg, best, stopped = [], [], 0.0, math.inf, False
    batches = iter(())
    bar = tqdm(range(steps), desc="lr range test", disable=not trainer.accelerator.is_local_main_process)
    trainer.model.train()
    for i in bar:
        try:
            batch = next(batches)
        except StopIteration:
            trainer.train_loader.set_epoch(i)
            batches = iter(trainer.train_loader)
            batch = next(batches)
        lr = min_lr * factor**i
        for group in opt.param_groups:
            group["lr"] = lr
        with trainer.accelerator.accumulate(trainer.model):
            loss = float(trainer.train_step(trainer.fit_batch(batch))["loss"])
        if not math.isfinite(loss):
            stopped = True
            break
        avg = smooth * avg + (1 - smooth) * loss
        value = avg / (1 - smooth ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        bar.set_postfix(lr=f"{lr:.2e}", loss=f"{value:.4f}")
        if i > 5 and value > diverge * best:
            stopped = True
            break
    if len(lrs) < 5:
        raise SandboxError(f"lr_find: the loss diverged after {len(lrs)} steps; lower --min-lr (got {min_lr:g})")
    k, stop = suggest(lrs, losses)  # the steepest descent before the minimum
    return {"lrs": lrs, "losses": losses, "suggestion": lrs[k], "min_over_10": lrs[stop] / 10,
            "stopped_early": stopped, "still_falling": not stopped and stop >= len(lrs) - 2}
