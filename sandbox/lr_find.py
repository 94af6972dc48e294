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

from sandbox.cli import add_number, cli_entry, setup_cli  # noqa: E402

LR = "[1e-12, 1000]"  # train.lr is any positive number; the test multiplies max/min over its steps: finite
from sandbox.errors import SandboxError  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--config", required=True)
    add_number(parser, "--min-lr", within=LR, kind=float, default=1e-6)
    add_number(parser, "--max-lr", within=LR, kind=float, default=1.0)
    add_number(parser, "--steps", within="[10, 10000]", default=100, help="optimizer steps (a few hundred is usual)")
    parser.add_argument("--out", help="output folder (default runs/lr_find/<name>, never overwritten)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_intermixed_args()
    if not 0 < args.min_lr < args.max_lr:
        raise SandboxError(f"--min-lr {args.min_lr:g} and --max-lr {args.max_lr:g}: expected 0 < min < max")
    import tempfile

    from sandbox import build_trainer, load_config
    from sandbox.analysis.lr_find import lr_range_test, range_advice
    from sandbox.viz.curves import plot_lr_find

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
    plot_lr_find(result, out / "lr_find.png", f"LR range test: {cfg.name}")
    (out / "lr_find.csv").write_text("lr,loss\n" + "".join(f"{a:.6g},{b:.6f}\n" for a, b in zip(result["lrs"], result["losses"])))
    print(f"suggested lr {result['suggestion']:.2e} (steepest descent; tried {result['lrs'][0]:.1e}.."
          f"{result['lrs'][-1]:.1e}{', stopped at divergence' if result['stopped_early'] else ''}); "
          f"the conservative rule (lr at the minimum / 10) gives {result['min_over_10']:.2e}")
    print(f"plot: {out / 'lr_find.png'}  (set it with train.lr={result['suggestion']:.2e})")
    advice = range_advice(result, cfg.train.optimizer)
    if advice:
        print(advice)


if __name__ == "__main__":
    main()
