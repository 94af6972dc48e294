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


#: optimizers whose step is normalised per parameter: an lr above 1 is never a sensible peak for them
ADAM_FAMILY = ("adam", "adamw")


def end_slope(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """``d loss / d log lr`` at the end of a (smoothed) curve: the least-squares slope over its last
    tenth (at least 3 points), so that one noisy step does not flip its sign."""
    n = max(3, len(losses) // 10)
    xs, ys = [math.log(v) for v in lrs[-n:]], list(losses[-n:])
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def still_falling(lrs: Sequence[float], losses: Sequence[float], stopped_early: bool = False) -> bool:
    """Whether the curve was still going down where the test ended: its real last slope, not where its
    minimum lies (a minimum one step before the end with the loss rising after it is a curve that turned)."""
    return not stopped_early and len(losses) >= 3 and end_slope(lrs, losses) < 0


def range_advice(result: dict, optimizer: str) -> str | None:
    """The warning for a curve that never turned (``result["still_falling"]``), or None. It never
    advises an lr above 1 for Adam-family optimizers: there the range is exhausted at 1."""
    if not result["still_falling"]:
        return None
    end = result["lrs"][-1]
    head = f"warning: the loss was still falling at --max-lr {end:.1e}: "
    if optimizer in ADAM_FAMILY and end >= 1:
        return head + (f"the curve did not turn, and the range is exhausted ({optimizer} needs no lr above 1); the "
                       "suggestion is the steepest descent seen: check it on the plot")
    higher = min(1.0, end * 10) if optimizer in ADAM_FAMILY else end * 10
    return head + ("the test never reached the side where the loss rises, so both numbers can be too low; run it "
                   f"again with a higher --max-lr (e.g. --max-lr {higher:.2g})")


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
            "stopped_early": stopped, "still_falling": still_falling(lrs, losses, stopped)}
