"""Compare trained runs: overlaid curves, one table, predictions of every run on the same inputs.

    python sandbox/compare.py --run runs/unet_dice runs/hourglass_dice runs/simpleconv_dice
    python sandbox/compare.py --run runs/a runs/b --out runs/compare/a_vs_b --metric val/iou --images 6

Writes into --out (default runs/compare/<run names joined by _vs_>, or a timestamp when that is long):
  report.md          the table (model, params, GFLOPs, mean epoch time, best metric and its epoch,
                     final val metrics) and the pictures below
  table.csv          the same table as numbers
  curves_epoch.png   train/val loss and every val metric vs epoch, one line per run
  curves_time.png    the same vs wall time
  predictions.png    each run's checkpoints/best on the same first validation images
Runs of different kinds (segmentation vs generative) are refused. Library: compare_runs(runs, out, metric)
(sweep.py calls it over the best seed of each cell). Generative runs show reconstructions
decode(encode(x)) of the same inputs (samples for a model without an encoder).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import add_number, cli_entry, setup_cli  # noqa: E402
from sandbox.errors import SandboxError  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", nargs="+", default=[], help="run directories, e.g. runs/unet_dice runs/hourglass_dice")
    parser.add_argument("runs", nargs="*", help="the same, without --run")
    parser.add_argument("--out", help="output folder (default runs/compare/<names>)")
    parser.add_argument("--metric", help="the metric that picks each run's best epoch (default: the first run's "
                                         "train.monitor, e.g. val/dice)")
    add_number(parser, "--images", within="train.num_images", low=1, default=4,
               help="validation images in predictions.png (default 4)")
    args = parser.parse_args()
    if not args.run + args.runs:
        parser.error("give the runs to compare: --run runs/a runs/b ...")
    from sandbox.analysis.compare import compare_runs, default_out
    from sandbox.analysis.reports import open_run

    paths = [Path(p) for p in args.run + args.runs]
    runs = [open_run(p) for p in paths]  # a path that is not a run stops here with one line
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # same run name in two folders: tell them apart by path
        for r in runs:
            r.label = str(r.path)
    metric = args.metric or runs[0].cfg.train.monitor
    if not any(metric in e for r in runs for e in r.epochs):
        have = sorted({k for r in runs for e in r.epochs for k in e if k.startswith("val/")})
        raise SandboxError(f"--metric {metric!r} is not logged by these runs; accepted: {', '.join(have)}")
    report = compare_runs(runs, Path(args.out) if args.out else default_out(paths), metric, args.images)
    print(report.read_text())
    print(f"wrote {report.parent}/ (report.md, table.csv, curves_epoch.png, curves_time.png, predictions.png)")


if __name__ == "__main__":
    main()
