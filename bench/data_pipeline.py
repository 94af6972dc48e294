"""Data pipeline throughput: ``dancers`` rendering + augmentation through the trainer's DataLoader
(batch 16, persistent workers, the trainer's sampler and collate) with 0/1/2 workers, against the
rate at which the main job's training step consumes images.

    python bench/data_pipeline.py                 # 128 px, 0/1/2 workers, render + augment, then cached
    python bench/data_pipeline.py --workers 0,2 --images 640 --no-train
    python bench/data_pipeline.py --device cuda --width 64 --size 256 --workers 0,2,4,8   # does it keep a GPU busy?

Three numbers per worker count, medians over round-robin rounds (each round measures every row
and the consumption rate, so load from other jobs on the cores hits them alike):
  * loader img/s: one pass of the loader alone (worker start-up excluded), with every sample
    rendered (``cache=False``: the first epoch of a run) and with the renders cached before the
    workers fork (``data.cache=true``, later epochs: augmentation only);
  * ratio = loader img/s / the training consumption rate of the same round (issue 7 target: >= 5x
    with the default workers);
  * end-to-end train img/s: ``--train-steps`` training steps fed by a fresh epoch of that loader,
    so the workers compete with the training threads for the same cores (this decides the best
    ``data.num_workers`` here; epoch start-up is included, as in a real epoch).
The consumption rate is the main job's step (UNet width 16 (``--width``), depth 3, 128 px (``--size``),
batch 16, the precision ``train.mixed_precision=auto`` resolves to, channels_last) on an in-memory
batch, on ``--device`` (a GPU: is the CPU loader fast enough to keep it busy?)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

# the augmentation of configs/human_seg_*.yaml: flips, a small affine, brightness/contrast
AUGMENT = [{"HorizontalFlip": {"p": 0.5}},
           {"Affine": {"scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05], "rotate": [-10, 10], "p": 0.5}},
           {"RandomBrightnessContrast": {"brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.3}}]
COLUMNS = [("data", "samples", "s"), ("workers", "workers", "d"),
           ("loader_img_s", "loader img/s (median)", ".0f"), ("loader_best", "loader img/s (best)", ".0f"),
           ("ratio", "x consumption (median of rounds)", ".1f"),
           ("train_img_s", "end-to-end train img/s (median)", ".2f"), ("train_best", "end-to-end (best)", ".2f")]


def dataset(size: int, images: int, augment: bool, cached: bool):
    from sandbox.data.synthetic import Dancers
    from sandbox.data.transforms import Augmented, build_augment

    ds = Dancers("train", num=images, size=size, seed=0, difficulty=0.8, cache=cached)
    if cached:  # render once in this process: forked workers inherit the filled cache
        for i in range(len(ds)):
            ds[i]
    return Augmented(ds, build_augment(AUGMENT), seed=0) if augment else ds


def loader(ds, workers: int, batch: int, pin: bool = False) -> DataLoader:
    """The trainer's training loader (``Trainer._loader``) for ``ds`` (it pins memory on CUDA)."""
    from sandbox.data.loader import EpochShuffle, collate

    keys = bool(getattr(ds, "epoch_keys", False))
    return DataLoader(ds, batch_size=batch, sampler=EpochShuffle(len(ds), 0, keys),
                      generator=torch.Generator().manual_seed(0), num_workers=workers, collate_fn=collate,
                      drop_last=True, persistent_workers=workers > 0, pin_memory=pin)


def set_epoch(dl: DataLoader, epoch: int) -> None:
    dl.sampler.set_epoch(epoch)
    if hasattr(dl.dataset, "set_epoch"):
        dl.dataset.set_epoch(epoch)


def loader_rate(dl: DataLoader, first: bool = False) -> float:
    """img/s of one pass over ``dl``; with ``first`` an untimed pass runs before (it starts the
    persistent workers, and fills nothing: caches are filled before the workers fork)."""
    if first:
        set_epoch(dl, 0)
        for _ in dl:
            pass
    set_epoch(dl, getattr(dl.sampler, "epoch", 0) + 1)
    n, t0 = 0, time.perf_counter()
    for b in dl:
        n += b["image"].shape[0]
    return n / (time.perf_counter() - t0)


def main_job_mode(device: torch.device) -> str:
    from sandbox.engine.runtime import resolve_mixed_precision

    auto = resolve_mixed_precision("auto", cpu=device.type == "cpu")
    return ("bf16" if auto == "bf16" else "fp32") + "+cl"


def step_rate(step, data: dict, steps: int = 3) -> float:
    """img/s of ``steps`` training steps on a fixed in-memory batch (the consumption rate)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(data).item()
        times.append(time.perf_counter() - t0)
    return data["image"].shape[0] / statistics.median(times)


def train_rate(dl: DataLoader, step, epoch: int, steps: int) -> float:
    """img/s of ``steps`` training steps fed by a fresh epoch of ``dl`` (epoch start included)."""
    set_epoch(dl, epoch)
    n, t0 = 0, time.perf_counter()
    for i, b in enumerate(dl):
        if i == steps:
            break
        n += b["image"].shape[0]
        step(b).item()
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--width", type=int, default=16, help="width of the consuming UNet (16: the main job's)")
    p.add_argument("--images", type=int, default=480, help="samples per epoch (multiple of the batch)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--train-steps", type=int, default=10, help="end-to-end steps per worker count and round")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds (medians are reported)")
    p.add_argument("--no-train", action="store_true", help="skip the end-to-end training measurement")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default="cpu", help="where the consuming training step runs: cpu, cuda, cuda:N")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--out", default="data_pipeline")
    args = p.parse_args(argv)
    threads = common.set_threads(0)
    dev = common.device_of(args.device)
    quiet = {"load_before": round(common.load1(), 2), "waited_s": 0.0} if args.no_wait \
        else common.wait_for_quiet(args.max_load)
    mode = main_job_mode(dev)
    augment = not args.no_augment
    probe = dataset(args.size, 64, False, False)
    t0 = time.perf_counter()
    for i in range(64):
        probe.render(i)
    render_ms = 1000 * (time.perf_counter() - t0) / 64
    consume_step = common.make_step(common.build("unet", args.width), mode, device=dev)
    fixed = common.batch_for(args.size, args.batch, device=dev)
    for _ in range(2):
        consume_step(fixed).item()
    rows, loaders = [], []
    for cached in (False, True):
        ds = dataset(args.size, args.images, augment, cached)
        for w in [int(x) for x in args.workers.split(",")]:
            rows.append({"data": ("cached render" if cached else "render") + (" + augment" if augment else ""),
                         "workers": w, "rates": [], "ratios": [], "train": []})
            loaders.append(loader(ds, w, args.batch, pin=dev.type == "cuda"))
    consumption_rounds, loads = [], []
    for r in range(args.rounds):  # round-robin, so that other jobs' load hits every row alike
        rate = step_rate(consume_step, fixed)
        consumption_rounds.append(rate)
        for row, dl in zip(rows, loaders):
            row["rates"].append(loader_rate(dl, first=r == 0))
            row["ratios"].append(row["rates"][-1] / rate)
        loads.append(round(common.load1(), 2))
        print(f"loader round {r + 1}/{args.rounds}: consumption {rate:.2f} img/s, "
              f"{[round(row['rates'][-1]) for row in rows]} img/s, load {loads[-1]}", flush=True)
    if not args.no_train:
        steps = {i: common.make_step(common.build("unet", args.width), mode, device=dev) for i in range(len(rows))}
        for r in range(args.rounds):
            for i, (row, dl) in enumerate(zip(rows, loaders)):
                row["train"].append(train_rate(dl, steps[i], 100 + r, args.train_steps))
            loads.append(round(common.load1(), 2))
            print(f"train round {r + 1}/{args.rounds}: {[round(row['train'][-1], 2) for row in rows]} img/s", flush=True)
    for row in rows:
        row.update(loader_img_s=statistics.median(row["rates"]), loader_best=max(row["rates"]),
                   ratio=statistics.median(row["ratios"]),
                   train_img_s=statistics.median(row["train"]) if row["train"] else None,
                   train_best=max(row["train"]) if row["train"] else None)
    rate, best_rate = statistics.median(consumption_rounds), max(consumption_rounds)
    source = f"measured in this run, median of {args.rounds} rounds x 3 steps on an in-memory batch"
    del loaders
    res = {"command": "python bench/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
           "machine": common.machine_info(), "device": str(dev), "threads": threads, "load": {**quiet, "during": loads},
           "size": args.size, "batch": args.batch, "images_per_epoch": args.images, "augment": AUGMENT if augment else [],
           "render_ms_per_img": round(render_ms, 2), "train_mode": mode,
           "consumption_img_s": round(rate, 2), "consumption_best_img_s": round(best_rate, 2),
           "consumption_rounds": [round(x, 2) for x in consumption_rounds], "consumption_source": source,
           "rows": rows}
    md = "\n".join([
        f"Command: `{res['command']}`", "",
        f"{args.size} px dancers (difficulty 0.8), batch {args.batch}, {args.images} images per epoch, "
        f"persistent workers; augment: {json.dumps(res['augment'])}.",
        f"Rendering alone: {render_ms:.2f} ms/img in the main process. Load (1-min avg): "
        f"{quiet['load_before']} before, {loads} during.",
        f"Training consumption (UNet w{args.width}, {args.size} px, {mode}, on {dev}): **{rate:.2f} img/s** median, {best_rate:.2f} "
        f"best round ({source}). Per-round ratios divide each loader pass by that round's consumption, "
        "so load from other jobs slows both sides of a ratio alike; best = the least disturbed round.", "",
        common.md_table(rows, COLUMNS)])
    j, m = common.write_results(args.out, res, md)
    print(md)
    print(f"\nwrote {j} and {m}")


if __name__ == "__main__":
    main()
