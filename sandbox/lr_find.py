"""LR range test (Smith 2015): raise the learning rate exponentially over a few hundred
steps, watch the smoothed training loss, suggest the lr where it falls fastest.

    python sandbox/lr_find.py --config configs/unet_dice.yaml [--min-lr 1e-6] [--max-lr 1] [--steps 100]

Uses the config's own trainer step (model, loss, optimizer, mixed precision), on a throwaway
copy of the run; writes ``runs/lr_find/<name>/lr_find.png`` and ``lr_find.csv`` and prints the
suggestion. Set it as ``train.lr`` (the peak for onecycle / cyclic).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.errors import SandboxError, cli_entry, setup_cli  # noqa: E402


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


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--max-lr", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", help="output folder (default runs/lr_find/<name>, never overwritten)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_intermixed_args()
    if not 0 < args.min_lr < args.max_lr:
        raise SandboxError(f"--min-lr {args.min_lr:g} and --max-lr {args.max_lr:g}: expected 0 < min < max")
    if args.steps < 10:
        raise SandboxError(f"--steps {args.steps}: expected at least 10")
    import tempfile

    from sandbox import build_trainer, load_config

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(cfg.out_dir) / "lr_find" / cfg.name
    base, n = out, 1
    while out.exists() and any(out.iterdir()):
        n += 1
        out = base.with_name(f"{base.name}_{n}")
    with tempfile.TemporaryDirectory() as tmp:
        throwaway = load_config(args.config, args.overrides + [
            f"out_dir={tmp}", "name=lr_find", "train.scheduler=none", "track.wandb=disabled",
            "train.resume=null"])
        trainer = build_trainer(throwaway)
        result = lr_range_test(trainer, args.min_lr, args.max_lr, args.steps)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, out / "lr_find.png", f"LR range test: {cfg.name}")
    (out / "lr_find.csv").write_text("lr,loss\n" + "".join(f"{a:.6g},{b:.6f}\n" for a, b in zip(result["lrs"], result["losses"])))
    print(f"suggested lr {result['suggestion']:.2e} (steepest descent; tried {result['lrs'][0]:.1e}.."
          f"{result['lrs'][-1]:.1e}{', stopped at divergence' if result['stopped_early'] else ''}); "
          f"the conservative rule (lr at the minimum / 10) gives {result['min_over_10']:.2e}")
    print(f"plot: {out / 'lr_find.png'}  (set it with train.lr={result['suggestion']:.2e})")
    if result["still_falling"]:
        print(f"warning: the loss was still falling at --max-lr {result['lrs'][-1]:.1e}: the test never reached the "
              f"side where the loss rises, so both numbers can be too low; run it again with a higher --max-lr")


if __name__ == "__main__":
    main()
