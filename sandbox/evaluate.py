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
    parser.add_argument("--run", required=True, help="run directory, e.g. runs/unet_dice")
    parser.add_argument("--split", default="test", choices=["test", "val", "train", "all", "whole"])
    parser.add_argument("--which", default="best", help="checkpoint: best | last | epoch_NNN (default best)")
    parser.add_argument("--mask-threshold", "--threshold", dest="threshold", type=float, default=0.5,
                        help="P(mask) above which a pixel is foreground (as in predict.py)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's data.batch_size")
    parser.add_argument("--resolution", default="net", choices=["net", "original"],
                        help="score at the net's data.size (as training does) or at each image's own size (folders)")
    parser.add_argument("--tag", default="", help="file name tag: eval/<split>_<tag>.json")
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/other data.image_dir=images")
    args = parser.parse_intermixed_args()
    if not 0 < args.threshold < 1:
        raise SandboxError(f"--mask-threshold: got {args.threshold}, expected a probability in (0, 1)")
    if args.batch_size is not None and args.batch_size < 1:
        raise SandboxError(f"--batch-size: got {args.batch_size}, expected a positive integer")
    if args.tag and (not args.tag.replace("-", "").replace("_", "").replace(".", "").isalnum()):
        raise SandboxError(f"--tag: got {args.tag!r}, expected letters, digits, '-', '_' or '.'")
    import time

    from sandbox.analysis.evaluation import eval_config, free_stem, table, write_results
    from sandbox.build import build_data
    from sandbox.runs.checkpoints import read_state
    from sandbox.runs.inference import evaluate_dataset
    from sandbox.runs.load import checkpoint_dir, load_run

    run, ckpt = checkpoint_dir(args.run, args.which)
    cfg, model = load_run(args.run, args.which, args.overrides, task="segmentation", need=("mask",))
    cfg = eval_config(cfg, run, args.overrides)
    if args.resolution == "original" and cfg.data.name != "folder":
        raise SandboxError(f"--resolution original: {cfg.data.name} images exist only at data.size; "
                           "it needs a labelled folder (data.name=folder)")
    splits = ("train", "val", "test") if args.split in ("all", "whole") else (args.split,)
    datasets = build_data(cfg, splits)
    state = read_state(ckpt) if (ckpt / "trainer_state.json").is_file() else {}
    names = [args.split] if args.split != "all" else list(splits)
    stems = [n + (f"_{args.tag}" if args.tag else "") for n in names]
    suffix = free_stem(run / "eval", stems)
    if any(o.startswith("data.root=") for o in args.overrides) and args.split not in ("whole", "all"):
        print(f"note: scoring the {args.split} split of {cfg.data.root}; --split whole scores every image")
    bs = args.batch_size or cfg.data.batch_size
    results: dict[str, list[dict]] = {}
    for s in splits:
        if not len(datasets[s]):
            if args.split in ("all", "whole"):  # e.g. a folder split with data.val_fraction=0
                print(f"{s}: empty, skipped")
                continue
            raise SandboxError(f"the {s} split of {cfg.data.root or cfg.data.name} is empty; pick another --split")
        t0 = time.time()
        recs = evaluate_dataset(model, datasets[s], args.threshold, bs, cfg.train.channels_last, progress=s,
                                original_size=args.resolution == "original")
        results[s] = [{"split": s, **r} if args.split == "whole" else r for r in recs]
        print(f"{s}: {len(recs)} images in {time.time() - t0:.1f} s")
    if args.split == "whole":
        results = {"whole": [r for recs in results.values() for r in recs]}
    net = args.resolution == "net"
    where = f"at {cfg.data.size} px" if net else "at each image's own size"
    meta = {"run": str(run), "checkpoint": str(ckpt), "epoch": state.get("epoch"), "step": state.get("step"),
            "threshold": args.threshold, "resolution": cfg.data.size if net else "original", "batch_size": bs,
            "device": str(next(model.parameters()).device), "overrides": args.overrides,
            "data": {k: v for k, v in vars(cfg.data).items() if k != "augment"},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name, stem in zip(names, stems):
        if name not in results:
            continue
        path = run / "eval" / f"{stem}{suffix}"
        result = write_results(path, results[name], {"split": name, **meta})
        print(f"\n{name}: {result['n']} images, {ckpt} (epoch {state.get('epoch')}), threshold {args.threshold}, "
              f"{where}\n{table(result)}\n"
              f"wrote {path}.json and {path}.csv")


if __name__ == "__main__":
    main()
