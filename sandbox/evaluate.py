"""Evaluate a trained segmentation run: per-image Dice, IoU, pixel accuracy and boundary F1
(plus depth L1 / RMSE / SSIM for depth models on data with depth), at the net's resolution.

    python sandbox/evaluate.py --run runs/unet_dice                        # test split, checkpoints/best
    python sandbox/evaluate.py --run runs/unet_dice --split all --which last
    python sandbox/evaluate.py --run runs/human_seg_unet --split whole data.root=/other data.image_dir=images

--split: test | val | train | all (the three, one file each) | whole (every image as one set,
e.g. an external labelled folder given by data.* overrides). Folder runs reuse runs/<name>/splits/
unless an override names another folder. Writes runs/<name>/eval/<split>[_<tag>].json (summary
and how it was evaluated) and .csv (one row per image); existing files are never overwritten:
the next free suffix is used (test_2.json, ...) and printed. --resolution original (folders) scores
P(mask) mapped back to each image's own size against its full-size mask, as predict.py does.
--tta flip averages the prediction of each image and of its mirror (recorded in the .json's "tta").
The means also go into the summary of the run's W&B run (eval/<split>/<metric>, with the per-image
table eval/<split>/images), when it was trained with W&B.
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
    parser.add_argument("--run", required=True, help="run directory, e.g. runs/unet_dice")
    parser.add_argument("--split", default="test", choices=["test", "val", "train", "all", "whole"])
    parser.add_argument("--which", default="best", help="checkpoint: best | last | epoch_NNN (default best)")
    add_number(parser, "--mask-threshold", "--threshold", dest="threshold", within="(0, 1)", kind=float, default=0.5,
               help="P(mask) above which a pixel is foreground (as in predict.py)")
    add_number(parser, "--batch-size", within="data.batch_size", help="default: the run's data.batch_size")
    parser.add_argument("--resolution", default="net", choices=["net", "original"],
                        help="score at the net's data.size (as training does) or at each image's own size (folders)")
    parser.add_argument("--tag", default="", help="file name tag: eval/<split>_<tag>.json")
    parser.add_argument("--tta", default="none", choices=["none", "flip"],
                        help="flip: also predict the mirrored image and average the two (test-time augmentation)")
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/other data.image_dir=images")
    args = parser.parse_intermixed_args()
    if args.tag and (not args.tag.replace("-", "").replace("_", "").replace(".", "").isalnum()):
        raise SandboxError(f"--tag: got {args.tag!r}, expected letters, digits, '-', '_' or '.'")
    from sandbox.analysis.evaluation import evaluate_run

    evaluate_run(args.run, args.which, args.split, args.threshold, args.batch_size, args.resolution, args.tag,
                 args.overrides, tta=args.tta, say=print)

if __name__ == "__main__":
    main()
