"""Sweep a grid of config values x seeds (each cell-seed a normal run), then summarise with error bars.

    python sandbox/sweep.py --config configs/unet_dice.yaml --grid model.name=unet,hourglass \\
        --grid model.depth=2,3 --seeds 3 --name arch train.epochs=4 data.size=64
    python sandbox/sweep.py --study configs/studies/models.yaml      # -> runs/studies/models/report.md

Runs are named <sweep>/<cell>_s<seed> (e.g. runs/arch/model-unet_depth-3_s1), share the W&B group
<sweep>, carry the swept values as tags and in their config, and the model name as job_type.
Grid values are read as YAML ([8,16],[16,32] is two lists; {l1: 1.0},{mse: 1.0} two mappings).
Seeds are seed, seed+1, ...: the seed sets the weights, the data order AND the synthetic samples.
Rerunning the same command continues: finished runs (checkpoints/last at train.epochs) are
skipped, partial ones resumed, ones without a checkpoint restarted. Each run is a subprocess
`python sandbox/train.py` (a crash does not end the sweep; ~4 s start-up); --in-process trains
here (tests, tiny runs). --jobs N: N at once, cores/N threads each (on 2 cores 1 is faster).
SIGTERM or Ctrl-C stops the runs under way as it stops a run (each saves its checkpoint), waits for
them, prints the command to continue and exits 128 + signal; on Linux a sweep that dies (even by
SIGKILL) takes its runs with it the same way; a run still being written is never resumed beside it.
Writes into runs/<sweep>/: summary.md, summary.csv (per cell: <stat>_mean, _std (n-1), _cv of
every final val/* metric, best <metric>, its epoch, epoch_time, total_time), runs.csv, plots/,
compare/ (the best seed of each cell), logs/; and report.md: the study protocol first (selected on
val, scored on test, per cell mean/std/95 % CI, paired Holm-adjusted tests: analysis/study.py). A
grid sweep reports under it too (its monitor's metric on test, every cell against the first);
--quick keeps the val-only summary.md alone.
--launcher slurm: one Slurm array task per run (submitit: analysis/slurm.py; resources from the flags or
the study file's slurm: {time: 90, ...}); --status: each run's state; --report: report the finished runs.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import add_number, cli_entry, setup_cli  # noqa: E402
from sandbox.errors import ConfigError, SandboxError  # noqa: E402
from sandbox.invocation import command as command_line  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--config", help="base YAML config, e.g. configs/unet_dice.yaml")
    parser.add_argument("--study", help="a study file (configs/studies/*.yaml): config, grid, seeds, overrides")
    parser.add_argument("--grid", action="append", default=[], help="key.path=v1,v2 (repeat for more axes)")
    add_number(parser, "--seeds", within="[1, 1000]",
               help="runs per cell, seeds seed..seed+N-1 (default 1; a study's own)")
    parser.add_argument("--name", help="sweep name: runs/<name>/ and the W&B group (default from config and grid)")
    parser.add_argument("--out", "--out-dir", dest="out_dir",
                        help="parent of the sweep folder (default runs; studies: runs/studies)")
    parser.add_argument("--metric", help="metric for 'best' (default the config's train.monitor)")
    add_number(parser, "--jobs", within="[1, 256]", default=1, help="runs at once (default 1: fastest on 2 cores)")
    parser.add_argument("--in-process", action="store_true", help="train in this process (no subprocesses)")
    parser.add_argument("--quick", action="store_true", help="a grid sweep's val-only summary: no test scoring, "
                        "intervals or paired tests (by default a grid reports under the study protocol)")
    parser.add_argument("overrides", nargs="*", help="key.path=value for every run, e.g. train.epochs=3")
    from sandbox.analysis.slurm import add_arguments, launch
    add_arguments(parser)  # --launcher slurm and its resources, --status, --report
    args = parser.parse_intermixed_args()
    import shlex
    import time

    from sandbox import load_config
    from sandbox.analysis.study import grid_study
    from sandbox.analysis.sweep import (check_study, evaluate_finished, execute, load_study, make_cells, parse_grid,
                                        plan, study_overrides)
    from sandbox.analysis.sweep_report import write_summary

    study = load_study(args.study) if args.study else {}
    if args.study and (args.config or args.grid):
        raise ConfigError("--study holds the config and the grid; give extra key.path=value overrides instead")
    config = study.get("config") or args.config
    if not config:
        raise ConfigError("give --config CFG --grid key=v1,v2 [...], or --study configs/studies/<study>.yaml")
    if args.jobs < 1 or (args.jobs > 1 and args.in_process):
        raise ConfigError(f"--jobs {args.jobs}: expected 1 or more (and 1 with --in-process)")
    grid = study.get("grid") or parse_grid(args.grid)
    cells = make_cells(grid)
    name = args.name or (Path(args.study).stem if study else f"{Path(config).stem}_" + "_".join(
        k.split(".")[-1] for k in grid))
    out_dir = Path(args.out_dir or ("runs/studies" if study else "runs"))
    if args.quick and study:
        raise ConfigError("--quick is for a grid sweep; a study reports under its own protocol")
    if not study and not args.quick:  # a grid sweep: the same protocol as a study (val-selected, scored on test)
        study = grid_study(cells, load_config(config, args.overrides))
    extra = study_overrides(study) + args.overrides
    specs = plan(config, cells, study.get("seeds", 1) if args.seeds is None else args.seeds, extra, name, out_dir)
    check_study(study, args.study, config, specs)
    metric = args.metric or study.get("metric") or load_config(config, extra).train.monitor
    command = " ".join([command_line("sweep"), shlex.join(sys.argv[1:])])  # rerun as it is: it continues
    if args.launcher == "slurm" or args.status or args.report:
        print(launch(args, specs, config, study, metric, out_dir / name, command))
        return
    t0 = time.time()
    failed = execute(specs, config, args.jobs, args.in_process, command) + evaluate_finished(specs, config, study)
    report = write_summary(specs, out_dir / name, metric, study, command, time.time() - t0)
    print(report.read_text())
    if failed:
        raise SandboxError(f"{len(failed)} of {len(specs)} runs failed ({', '.join(failed)}); their logs are in "
                           f"{out_dir / name / 'logs'}; rerun the same command to retry them")


if __name__ == "__main__":
    main()
