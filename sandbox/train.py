"""Train a model from a YAML config.

    accelerate launch sandbox/train.py --config configs/unet_dice.yaml [key.path=value ...]
    python sandbox/train.py --config configs/unet_dice.yaml train.epochs=3 model.depth=4
    python sandbox/train.py --resume runs/unet_dice            # continue a run with its own config.yaml
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import cli_entry, setup_cli  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--config", help="YAML config, e.g. configs/unet_dice.yaml (with --resume: by default "
                                          "the run's own config.yaml)")
    parser.add_argument("--resume", help="continue a run: its directory or a checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="key.path=value, e.g. train.epochs=3 model.name=hourglass")
    args = parser.parse_intermixed_args()
    from sandbox import build_trainer, load_config

    overrides = args.overrides + ([f"train.resume={args.resume}"] if args.resume else [])
    config = args.config
    if config is None:
        if not args.resume:
            parser.error("--config is required (or --resume RUN, which continues a run with its own config.yaml)")
        from sandbox.runs.checkpoints import resumed_run

        config = str(resumed_run(args.resume) / "config.yaml")
    cfg = load_config(config, overrides)
    trainer = build_trainer(cfg)
    trainer.fit()
    trainer.accelerator.print(f"done: {trainer.run.path} (config.yaml, metrics.jsonl, checkpoints/, plots/, images/)")


if __name__ == "__main__":
    main()
