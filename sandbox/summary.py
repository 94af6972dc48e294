"""Print what a config's model costs and sees, measured rather than assumed: parameters, forward
FLOPs per image, bottleneck (predicted vs measured), receptive field and activation memory.

    python sandbox/summary.py --config configs/unet_dice.yaml [key.path=value ...]
    python sandbox/summary.py --config configs/unet_dice.yaml --all-models   # one row per segmentation model
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import cli_entry, setup_cli  # noqa: E402
from sandbox.errors import SandboxError  # noqa: E402

NOTES = """\
GFLOPs: forward convolutions and matmuls, 2 per multiply-add; a training step costs ~3x per image.
Receptive field: side of the box of input pixels that move the centre output (backprop, eval mode);
measured at a larger input when it reached the border; larger than the input = the centre sees it all.
Activations: leaf-module outputs kept for backward at data.batch_size in fp32, a rough estimate."""


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/unet_dice.yaml")
    parser.add_argument("--all-models", action="store_true",
                        help="one row per registered segmentation model, with the same config otherwise")
    parser.add_argument("overrides", nargs="*", help="key.path=value, e.g. data.size=64 model.width=8")
    args = parser.parse_args()
    from sandbox import load_config
    from sandbox.analysis.measure import segmentation_models, summarize
    from sandbox.analysis.tables import format_table

    cfg = load_config(args.config, args.overrides)  # a bad config stops here with one line
    if not args.all_models:
        rows = [summarize(cfg)]
    else:
        rows = []
        for name in segmentation_models():
            try:
                rows.append(summarize(load_config(args.config, args.overrides + [f"model.name={name}"])))
            except SandboxError as exc:  # e.g. simpleconv with model.upsample set: skip it, say why
                print(f"skipped {name}: {exc}", file=sys.stderr)
    print(format_table(rows))
    print()
    print(NOTES)


if __name__ == "__main__":
    main()
