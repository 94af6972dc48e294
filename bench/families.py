"""Calibration of configs/studies/generative_families.yaml: seconds per training step of each family,
and of its evaluation (sampling, inversion), so that its epochs give equal training seconds.

    python bench/families.py                    # ~2 min on 2 cores; prints a table and epochs for 90 s
    python bench/families.py --budget 60 --rounds 3

Every cell of the study is built as the sweep builds it (its config, the study's overrides, the cell's
keys; the data shrunk to --steps batches) with its real trainer, in ONE process; then, round-robin so
that load from other jobs hits every family alike, each family trains --steps steps (``train_step`` on
its own loader, data cached) per round. Times are owned CPU time (``time.process_time``) at --threads
torch threads (default 1: on shared cores, spinning OpenMP threads waiting for a descheduled sibling
inflate both wall and CPU time of multi-threaded runs; one thread's CPU time per step hardly moves with
load). s/step is the median over rounds of each round's mean. ``--scale-to S``: the seconds per step of
the ``--ref`` cell on idle cores measured elsewhere (e.g. bench/results/denoising.md): every family's
s/step is multiplied by S / (the ref cell's s/step here), i.e. the ratios measured here on the idle
scale. The epochs for ``--budget`` seconds are ``budget / (s/step x steps per epoch)`` rounded (at least
1). Sampling: ``model.sample`` of --samples images in eval mode (EMA), fp32, CPU s per 100; inversion:
``model.encode`` of 64 images (models with an encoder). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STUDY = ROOT / "configs/studies/generative_families.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=str(STUDY))
    p.add_argument("--steps", type=int, default=8, help="training steps per family per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, default=90.0, help="training seconds per run to calibrate for")
    p.add_argument("--samples", type=int, default=100, help="images sampled to time sample()")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see above)")
    p.add_argument("--scale-to", type=float, help="idle s/step of the --ref cell measured elsewhere")
    p.add_argument("--ref", default="family-flow", help="the cell --scale-to refers to")
    args = p.parse_args()

    import torch

    from sandbox.analysis.study import machine
    from sandbox.analysis.sweep import load_study, make_cells, override, study_overrides
    from sandbox.config.loading import load_config
    from sandbox.trainers import build_trainer

    study = load_study(args.study)
    config = str(ROOT / study["config"])
    full_steps = {}
    trainers = {}
    out = Path(tempfile.mkdtemp(prefix="families_bench_"))
    for cell in make_cells(study["grid"]):
        ov = study_overrides(study) + [override(k, v) for k, v in cell.overrides.items()]
        cfg = load_config(config, ov)
        full_steps[cell.name] = -(-cfg.data.num_train // cfg.data.batch_size)
        tiny = ov + [f"train.threads={args.threads}", f"data.num_train={args.steps * cfg.data.batch_size}", "data.num_val=8", "data.num_test=1", "train.epochs=100",
                     "track.wandb=disabled", "track.report_to=[]", f"out_dir={out}", f"name={cell.name}"]
        t0 = time.perf_counter()
        trainers[cell.name] = build_trainer(load_config(config, tiny))
        print(f"built {cell.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {n: [] for n in trainers}
    for r in range(args.rounds + 1):  # round 0: warm-up, not counted
        for name, tr in trainers.items():
            tr.model.train()
            t0, w0 = time.process_time(), time.perf_counter()
            for batch in tr.train_loader:
                tr.train_step(tr.fit_batch(batch))
            if r:
                times[name].append((time.process_time() - t0) / len(tr.train_loader))
            print(f"round {r} {name}: {(time.process_time() - t0) / len(tr.train_loader):.4f} CPU s/step "
                  f"({(time.perf_counter() - w0) / len(tr.train_loader):.4f} wall)", file=sys.stderr, flush=True)
    scale = args.scale_to / statistics.median(times[args.ref]) if args.scale_to else 1.0
    rows = []
    for name, tr in trainers.items():
        m = tr.unwrapped.eval()
        g = torch.Generator().manual_seed(0)
        t0 = time.process_time()
        m.sample(args.samples, g)
        sample_s = (time.process_time() - t0) * 100 / args.samples
        enc = None
        if m.encodes:
            x = torch.rand(64, 3, tr.cfg.data.size, tr.cfg.data.size, generator=g)
            t0 = time.process_time()
            m.encode(x)
            enc = (time.process_time() - t0) * 100 / 64
        s_step = statistics.median(times[name]) * scale
        epoch_s = s_step * full_steps[name]
        rows.append((name, s_step, full_steps[name], epoch_s, max(1, round(args.budget / epoch_s)), sample_s, enc))
    mach = machine()
    print(f"machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']} ({torch.get_num_threads()} threads); "
          f"{args.rounds} rounds x {args.steps} steps per family, median of round means; CPU time"
          + (f", s/step scaled by {scale:.3f} ({args.ref} = {args.scale_to} s/step)" if args.scale_to else "")
          + "; sampling and encoding columns unscaled")
    print(f"{'cell':<14}{'s/step':>8}{'steps/ep':>9}{'s/epoch':>9}{f'ep({args.budget:g}s)':>10}"
          f"{'s/100 samples':>15}{'s/100 encode':>14}")
    for name, s, n, e, ep, smp, enc in rows:
        print(f"{name:<14}{s:>8.4f}{n:>9}{e:>9.1f}{ep:>10}{smp:>15.2f}{'' if enc is None else f'{enc:.2f}':>14}")


if __name__ == "__main__":
    main()
