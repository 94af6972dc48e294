"""Predict person masks for images of any size and format with a trained segmentation run.

    python sandbox/predict.py --run runs/human_seg_unet --input photos/ [--out DIR]
    python sandbox/predict.py --run runs/human_seg_unet --input a.jpg b.png --mask-dir masks/
    python sandbox/predict.py --run runs/human_seg_unet --input ../shared/data/human_seg --failures-only --fail-below 0.8

Each image (jpg, png, bmp, tif, ...; grayscale, RGBA and 16-bit become RGB) is fitted to the net's
size with the run's data.resize, predicted, and P(mask) is mapped back to the original size. Writes
<name>_mask.png (0/255 at P > --mask-threshold, default 0.5) and <name>_overlay.png (the mask tinted green; with ground truth
the errors instead: TP green, FP red, FN blue, and the Dice drawn on it); for a run with a depth head
also <name>_depth.png (16-bit grayscale, depth in [0, 1] x 65535: the numbers) and
<name>_depth_color.png (viridis, near = yellow: the picture); plus predictions.csv, into
--out (default runs/<name>/predictions; a non-empty folder is never overwritten: <out>_2, ... is used).

Ground truth: --mask-dir (paired by file stem), or the run's mask_dir when --input is a dataset root
of the run's layout (or its image_dir). --failures-only keeps the images with Dice < --fail-below and
writes failures.csv sorted by Dice. Non-image files are skipped and counted. An unreadable image
stops the run naming it (what was written so far stays); --skip-unreadable skips it with a warning.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import cli_entry, setup_cli  # noqa: E402
from sandbox.errors import SandboxError  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", required=True, help="run directory, e.g. runs/human_seg_unet")
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", help="output folder (default runs/<name>/predictions)")
    parser.add_argument("--which", default="best", help="checkpoint: best | last | epoch_NNN (default best)")
    parser.add_argument("--mask-dir", help="ground-truth masks, paired with the images by file stem")
    parser.add_argument("--failures-only", action="store_true", help="keep only images with Dice < --fail-below")
    parser.add_argument("--fail-below", type=float, default=0.8, help="Dice below which an image is a failure")
    parser.add_argument("--mask-threshold", type=float, default=0.5,
                        help="P(mask) above which a pixel is foreground (as in evaluate.py)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="skip unreadable images (warned) instead of stopping")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's data.batch_size")
    args = parser.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        raise SandboxError(f"--batch-size: got {args.batch_size}, expected a positive integer")
    if not 0 < args.mask_threshold < 1:
        raise SandboxError(f"--mask-threshold: got {args.mask_threshold}, expected a probability in (0, 1)")
    import numpy as np
    from PIL import Image

    from sandbox.analysis.prediction import fresh_dir, gather, output_names, overlay, read_pair, save_depth, scores, write_csv
    from sandbox.data.splits import list_images
    from sandbox.runs.inference import predict_maps
    from sandbox.runs.load import checkpoint_dir, load_run

    run, _ = checkpoint_dir(args.run, args.which)
    cfg, model = load_run(args.run, args.which, task="segmentation", need=("mask",))
    files, gt, skipped = gather(args.input, cfg.data.image_dir, cfg.data.mask_dir)
    gt = Path(args.mask_dir) if args.mask_dir else gt
    if gt is not None and not gt.is_dir():
        raise SandboxError(f"--mask-dir {str(gt)!r}: no such folder; expected a folder of masks named like the images")
    try:
        masks = list_images(gt) if gt is not None else {}
    except SandboxError as exc:
        raise SandboxError(f"--mask-dir: {exc}") from None
    paired = {f: masks.get(f.stem) for f in files}
    lone = [f.name for f, m in paired.items() if m is None]
    if gt is not None and len(lone) == len(files):
        raise SandboxError(f"none of the {len(files)} images has a mask in {gt} (paired by file stem, "
                           f"e.g. {files[0].name} -> {files[0].stem}.png)")
    if args.failures_only and gt is None:
        raise SandboxError("--failures-only needs ground truth: give --mask-dir DIR, or an --input dataset root with "
                           f"{cfg.data.image_dir}/ and {cfg.data.mask_dir}/ (the run's layout)")
    if gt is not None and lone:
        print(f"warning: {len(lone)} image(s) have no mask in {gt} ({', '.join(lone[:3])}): not scored")
    out = fresh_dir(Path(args.out) if args.out else run / "predictions")
    names, rows, bad, bs = output_names(files), [], [], args.batch_size or cfg.data.batch_size
    for start in range(0, len(files), bs):
        loaded = []
        for f in files[start:start + bs]:
            try:
                loaded.append((f, *read_pair(f, paired[f], cfg.data.mask_threshold)))
            except SandboxError as exc:
                if not args.skip_unreadable:
                    raise SandboxError(f"{exc}; {len(rows)} image(s) before it were predicted into {out}; "
                                       "--skip-unreadable skips such files") from None
                bad.append(str(exc))
        maps = predict_maps(model, [img for _, img, _ in loaded], cfg.data.size, cfg.data.resize,
                            cfg.train.channels_last)
        for (f, img, truth), heads in zip(loaded, maps):
            pred = heads["mask"] > args.mask_threshold
            dice, iou = scores(pred, truth) if truth is not None else ("", "")
            written = not args.failures_only or (truth is not None and dice < args.fail_below)
            if written:
                Image.fromarray(pred.astype(np.uint8) * 255).save(out / f"{names[f]}_mask.png")
                overlay(img, pred, truth, dice if truth is not None else None).save(out / f"{names[f]}_overlay.png")
                if "depth" in heads:
                    save_depth(heads["depth"], out / names[f])
            rows.append({"name": names[f], "image": str(f), "mask": str(paired[f] or ""), "height": img.shape[0],
                         "width": img.shape[1], "foreground": round(float(pred.mean()), 6),
                         "dice": dice if dice == "" else round(dice, 6), "iou": iou if iou == "" else round(iou, 6),
                         "written": written})
    write_csv(out / "predictions.csv", rows)
    scored = [r for r in rows if r["dice"] != ""]
    if args.failures_only:
        write_csv(out / "failures.csv", sorted((r for r in scored if r["written"]), key=lambda r: r["dice"]))
    for msg in bad:
        print(f"warning: skipped {msg}")
    summary = f"predicted {len(rows)} image(s) into {out}"
    summary += f"; skipped {skipped} non-image file(s)" if skipped else ""
    if scored:
        summary += f"; mean Dice {sum(r['dice'] for r in scored) / len(scored):.4f} over {len(scored)} with masks"
    if args.failures_only:
        summary += f"; {sum(r['written'] for r in scored)} failure(s) with Dice < {args.fail_below} (failures.csv)"
    print(summary)


if __name__ == "__main__":
    main()
