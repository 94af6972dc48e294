"""Export a trained run's network so it runs without the sandbox: ONNX (onnxruntime) or TorchScript.

    python sandbox/export.py --run runs/unet_dice                        # -> runs/unet_dice/export/
    python sandbox/export.py --run runs/unet_dice --format torchscript --out shipped/
    python sandbox/predict.py --model runs/unet_dice/export/model.onnx --input photos/

Writes model.onnx (or model.pt), preprocessing.json (the input it expects: RGB float32 NCHW in [0, 1],
the size it was trained at and the side multiple it accepts; its outputs and class names) and
MODEL_CARD.md (data, splits, config, test metrics from eval/test.json, the export check, limits).
Segmentation nets take any batch, height and width (sides divisible by 2**model.depth); ae, vae, aae
and dcgan runs export their decoder (latent -> image); ddpm and flow runs are refused. Before it is
kept, the file is run by onnxruntime (torch.jit.load) on images at two sizes and must agree with
PyTorch within 1e-4 x max(1, |output|); otherwise nothing is written. An existing export is never
overwritten (export_2, ...). ONNX needs: pip install 'sandbox[export]'.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import cli_entry, setup_cli  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", required=True, help="run directory, e.g. runs/unet_dice")
    parser.add_argument("--which", default="best", help="checkpoint: best | last | epoch_NNN (default best)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--out", help="output folder (default runs/<name>/export)")
    args = parser.parse_args()
    from sandbox.analysis.export import export_run

    export_run(args.run, args.which, args.format, args.out, say=print)


if __name__ == "__main__":
    main()
