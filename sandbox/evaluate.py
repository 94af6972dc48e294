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

from sandbox.errors import SandboxError, cli_entry, setup_cli  # noqa: E402

# overrides that point at other data: the run's own splits/ no longer apply
OTHER_DATA = ("data.name", "data.root", "data.image_dir", "data.mask_dir", "data.depth_dir", "data.splits",
              "data.val_fraction", "data.test_fraction", "data.train_fraction", "data.num_train",
              "data.num_val", "data.num_test", "data.seq_len", "data.difficulty")


def eval_config(cfg, run: Path, overrides: list[str]):
    """The run's config for evaluation: no augmentation, the run's splits/, mask-only on folders without depth."""
    import dataclasses

    data = dataclasses.replace(cfg.data, augment=[])
    if (run / "splits").is_dir() and not any(o.startswith(OTHER_DATA) for o in overrides):
        data = dataclasses.replace(data, splits=str(run / "splits"))
    loss = cfg.loss
    if data.name == "folder" and not data.depth_dir:  # a depth model on masks only: score the mask
        loss = {k: v for k, v in loss.items() if k != "depth"}
    return dataclasses.replace(cfg, data=data, loss=loss)


def free_stem(folder: Path, stems: list[str]) -> str:
    """The first suffix ("", "_2", "_3", ...) for which no ``<stem><suffix>.json/.csv`` exists yet."""
    k = 1
    while True:
        suffix = "" if k == 1 else f"_{k}"
        if not any((folder / f"{s}{suffix}{ext}").exists() for s in stems for ext in (".json", ".csv")):
            return suffix
        k += 1


def write_results(path: Path, records: list[dict], meta: dict) -> dict:
    """``path.json`` (summary: n, means, mean/median/min per metric, ``meta``) and ``path.csv`` (per image)."""
    import csv
    import json

    import numpy as np

    keys = [k for k in records[0] if k not in ("index", "stem", "path", "split")]
    summary = {k: {"mean": float(np.mean([r[k] for r in records])),
                   "median": float(np.median([r[k] for r in records])),
                   "min": float(np.min([r[k] for r in records]))} for k in keys}
    result = {**meta, "n": len(records), "means": {k: s["mean"] for k, s in summary.items()}, "summary": summary}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2))
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return result


def table(result: dict) -> str:
    lines = [f"{'metric':<14}{'mean':>9}{'median':>9}{'min':>9}"]
    lines += [f"{k:<14}{s['mean']:>9.4f}{s['median']:>9.4f}{s['min']:>9.4f}" for k, s in result["summary"].items()]
    return "\n".join(lines)


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", required=True, help="run directory, e.g. runs/unet_dice")
    parser.add_argument("--split", default="test", choices=["test", "val", "train", "all", "whole"])
    parser.add_argument("--which", default="best", help="checkpoint: best | last | epoch_NNN (default best)")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(mask) above which a pixel is foreground")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's data.batch_size")
    parser.add_argument("--resolution", default="net", choices=["net", "original"],
                        help="score at the net's data.size (as training does) or at each image's own size (folders)")
    parser.add_argument("--tag", default="", help="file name tag: eval/<split>_<tag>.json")
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/other data.image_dir=images")
    args = parser.parse_intermixed_args()
    if not 0 < args.threshold < 1:
        raise SandboxError(f"--threshold: got {args.threshold}, expected a probability in (0, 1)")
    if args.batch_size is not None and args.batch_size < 1:
        raise SandboxError(f"--batch-size: got {args.batch_size}, expected a positive integer")
    if args.tag and (not args.tag.replace("-", "").replace("_", "").replace(".", "").isalnum()):
        raise SandboxError(f"--tag: got {args.tag!r}, expected letters, digits, '-', '_' or '.'")
    import time

    from sandbox.build import build_data
    from sandbox.rundir import read_state
    from sandbox.runs import checkpoint_dir, evaluate_dataset, load_run

    run, ckpt = checkpoint_dir(args.run, args.which)
    cfg, model = load_run(args.run, args.which, args.overrides)
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
