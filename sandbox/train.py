"""Train a model from a YAML config.

    accelerate launch sandbox/train.py --config configs/unet_dice.yaml [key.path=value ...]
    python sandbox/train.py --config configs/unet_dice.yaml train.epochs=3 model.depth=4
    python sandbox/train.py --resume runs/unet_dice            # continue a run with its own config.yaml
    python sandbox/train.py --config configs/unet_dice.yaml --restart   # afresh, where a start failed before
                                                                        # its first checkpoint
    python sandbox/train.py --config configs/unet_stages.yaml   # stages: one run in stages (--resume: the rest)

SIGTERM or Ctrl-C: the run saves checkpoints/last after the current step, prints the resume command
and exits with 143 / 130; a second signal stops at once.
"""
import os
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
    parser.add_argument("--restart", action="store_true", help="start afresh in a run directory that holds no "
                        "complete checkpoint (a failed start); refused where there is one: --resume it")
    parser.add_argument("overrides", nargs="*", help="key.path=value, e.g. train.epochs=3 model.name=hourglass")
    args = parser.parse_intermixed_args()
    from sandbox import build_trainer, load_config
    from sandbox.errors import SandboxError
    from sandbox.runs.restart import check_resumable, clear_failed_start, complete_checkpoint, existing_run

    if args.restart and args.resume:
        parser.error("--restart starts a run afresh, --resume continues one: give one of them")
    overrides = args.overrides + ([f"train.resume={args.resume}"] if args.resume else [])
    config = args.config
    if config is None and not args.resume:
        parser.error("--config is required (or --resume RUN, which continues a run with its own config.yaml)")
    if args.resume and config is None:
        config = str(check_resumable(args.resume) / "config.yaml")
    cfg = load_config(config, overrides)
    run = Path(cfg.out_dir) / cfg.name
    if args.restart and cfg.train.resume:
        parser.error(f"--restart starts a run afresh, but the config resumes {cfg.train.resume} (train.resume)")
    if cfg.stages:  # one run in stages: runs/<name>/stages/<k>_<stage>/, each resumable (sandbox/trainers/stages.py)
        from sandbox.trainers.stages import fit_stages

        fit_stages(cfg, restart=args.restart)  # prints each stage's start and the summary (main process)
        return
    if cfg.train.resume:
        check_resumable(cfg.train.resume)  # a run with nothing to resume: the way on is --restart
    elif args.restart and complete_checkpoint(run) is not None:  # a run to resume is never cleared
        raise SandboxError(existing_run(run, restart=True))
    elif args.restart and os.environ.get("RANK", "0") == "0":  # the main process alone; the others wait for it
        removed = clear_failed_start(run)
        if removed:
            print(f"restart: cleared {', '.join(removed)} in {run}")
    trainer = build_trainer(cfg)
    trainer.fit()
    trainer.accelerator.print(trainer.summary())


if __name__ == "__main__":
    main()
