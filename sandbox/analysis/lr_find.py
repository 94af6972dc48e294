"""The LR range test (Smith 2015) on a trainer's own step."""
from __future__ import annotations

from sandbox.errors import SandboxError


def lr_range_test(trainer, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100,
                  smooth: float = 0.9, diverge: float = 4.0) -> dict:
    """Run the test on ``trainer`` (its model is trained: use a throwaway trainer).

    Returns ``{"lrs", "losses" (smoothed, bias-corrected), "suggestion", "stopped_early"}``; the
    suggestion is the lr at the steepest descent of the smoothed loss (in log lr), searched
    before the minimum; the test stops once the loss exceeds ``diverge`` x its best.
    """
    import math

    import torch
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
    lo = torch.tensor(losses)
    stop = int(lo.argmin())  # the steepest descent before the minimum
    grads = (lo[1:stop + 1] - lo[:stop]) / math.log(factor) if stop > 0 else torch.tensor([0.0])
    k = int(grads.argmin()) if stop > 0 else 0
    return {"lrs": lrs, "losses": losses, "suggestion": lrs[k], "min_over_10": lrs[stop] / 10,
            "stopped_early": stopped, "still_falling": not stopped and stop >= len(lrs) - 2}


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(result["suggestion"], color="tab:red", ls="--", label=f"suggested lr {result['suggestion']:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
