"""Predict person masks for images of any size and format with a trained segmentation run.

    python sandbox/predict.py --run runs/human_seg_unet --input photos/ [--out DIR]
    python sandbox/predict.py --run runs/human_seg_unet --input a.jpg b.png --mask-dir masks/
    python sandbox/predict.py --run runs/human_seg_unet --input ../shared/data/human_seg --failures-only --fail-below 0.8
    python sandbox/predict.py --model runs/human_seg_unet/export/model.onnx --input photos/   # no checkpoints

Each image (jpg, png, bmp, tif, ...; grayscale, RGBA and 16-bit become RGB) is fitted to the net's
size with the run's data.resize, predicted, and P(mask) is mapped back to the original size. Writes
<name>_mask.png (0/255 at P > --mask-threshold, default 0.5) and <name>_overlay.png (the mask tinted green; with ground truth
the errors instead: TP green, FP red, FN blue, and the Dice drawn on it); for a run with a depth head
also <name>_depth.png (16-bit grayscale, depth in [0, 1] x 65535: the numbers) and
<name>_depth_color.png (viridis, near = yellow: the picture); plus predictions.csv, into
--out (default runs/<name>/predictions; a non-empty folder is never overwritten: <out>_2, ... is used).
A run with several classes (data.classes, or a class target such as dancers' parts: configs/unet_parts.yaml)
writes each class map as <name>_<target>.png (<name>_classes.png for the mask): a palette PNG whose pixel values
are the class ids and whose palette the class colours, and <name>_<target>_overlay.png (<name>_overlay.png):
the image tinted by class with the colour legend of the trainer's panels; with ground truth (class masks as
data.classes reads them: palette, RGB or index PNGs) predictions.csv adds per-class IoU, mIoU (over the classes
in the image's truth), pixel accuracy and the worst class, and its dice/iou columns are mean Dice and mIoU.

Ground truth: --mask-dir (paired by file stem), or the run's mask_dir when --input is a dataset root
of the run's layout (or its image_dir). --failures-only keeps the images with Dice < --fail-below and
writes failures.csv sorted by Dice. Non-image files are skipped and counted. An unreadable image
stops the run naming it (what was written so far stays); --skip-unreadable skips it with a warning.
--tta flip averages the prediction of each image and of its mirror.
--model runs a model exported by sandbox-export (ONNX through onnxruntime, or TorchScript) with the size
and resize policy of its preprocessing.json; the default --out is then predictions/ beside the export folder.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import add_number, cli_entry, setup_cli  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", help="run directory, e.g. runs/human_seg_unet")
    parser.add_argument("--model", help="instead of --run: a file exported by sandbox-export (model.onnx or "
                        "model.pt, with its preprocessing.json beside it)")
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", help="output folder (default runs/<name>/predictions)")
    parser.add_argument("--which", help="checkpoint of --run: best | last | epoch_NNN (default best)")
    parser.add_argument("--mask-dir", help="ground-truth masks, paired with the images by file stem")
    parser.add_argument("--failures-only", action="store_true", help="keep only images with Dice < --fail-below")
    add_number(parser, "--fail-below", within="[0, inf)", kind=float, default=0.8,
               help="Dice below which an image is a failure (above 1: every image)")
    add_number(parser, "--mask-threshold", within="(0, 1)", kind=float, default=0.5,
               help="P(mask) above which a pixel is foreground (as in evaluate.py)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="skip unreadable images (warned) instead of stopping")
    add_number(parser, "--batch-size", within="data.batch_size", help="default: the run's data.batch_size")
    parser.add_argument("--tta", default="none", choices=["none", "flip"],
                        help="flip: also predict the mirrored image and average the two (test-time augmentation)")
    args = parser.parse_args()
    from sandbox.analysis.prediction import predict_run

    predict_run(args.run, args.input, args.which, args.out, args.mask_dir, args.mask_threshold, args.fail_below,
                args.failures_only, args.skip_unreadable, args.batch_size, tta=args.tta, say=print,
                model_file=args.model)

if __name__ == "__main__":
    main()
