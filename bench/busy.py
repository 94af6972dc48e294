"""A run on a busy machine: the main job's training time beside 0, 1, 2, 3 busy neighbours (processes that
spin one core each), with the threads fixed at all cores (what the sandbox did before: `train.threads=<cores>`)
and following the free cores (`train.threads=0`, the default: sandbox/engine/runtime.py ThreadGovernor).

    python bench/busy.py                      # ~10 min on 2 cores; -> bench/results/busy.{json,md}
    python bench/busy.py --neighbours 0,1 --epochs 2 --train 160

Each cell trains `configs/unet_dice.yaml` (128 px, batch 16) for `--epochs` epochs of `--train` images in a
subprocess and reads the LAST epoch's `train_time` (training steps only, from metrics.jsonl: start-up, data
rendering and validation excluded). The slowdown is that time over the idle time of the same policy, and the
fair share is `(cores + neighbours) / cores` (each runnable thread of a fully busy machine gets its share).
The goal (issue 32): <= 2x with one neighbour on 2 cores, <= 5x with three.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cores, load1, machine_info, md_table, wait_for_quiet, write_results  # noqa: E402

SPIN = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass"


def train_time(threads: int, epochs: int, n_train: int, out: Path, name: str) -> float:
    """The last epoch's seconds in training steps of the main job at ``threads`` torch threads."""
    cmd = [sys.executable, str(ROOT / "sandbox" / "train.py"), "--config", str(ROOT / "configs" / "unet_dice.yaml"),
           f"out_dir={out}", f"name={name}", f"train.epochs={epochs}", f"data.num_train={n_train}",
           "data.num_val=16", "train.num_images=0", "track.wandb=disabled", f"train.threads={threads}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if r["split"] == "val"][-1]["train_time"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neighbours", default="0,1,2,3")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=160, help="training images per epoch (batch 16)")
    ap.add_argument("--no-wait", action="store_true", help="start even if the machine is busy")
    ap.add_argument("--out", default="busy")
    args = ap.parse_args()
    quiet = {} if args.no_wait else wait_for_quiet()
    n_cores, rows, raw = cores(), [], []
    idle = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(x) for x in args.neighbours.split(",")]:
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=3600)]) for _ in range(k)]
            try:
                time.sleep(1.0 if k else 0.0)
                for policy, threads in (("all cores", n_cores), ("free cores", 0)):
                    t0 = time.time()
                    secs = train_time(threads, args.epochs, args.train, Path(tmp), f"n{k}_{threads}")
                    idle.setdefault(policy, secs) if k == 0 else None
                    raw.append({"neighbours": k, "policy": policy, "train_s": secs, "wall_s": time.time() - t0,
                                "load1": load1()})
                    rows.append({"neighbours": k, "policy": policy, "train_s": round(secs, 2),
                                 "slowdown": round(secs / idle[policy], 2) if policy in idle else None,
                                 "fair": round((n_cores + k) / n_cores, 2)})
                    print(rows[-1], flush=True)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
    md = (f"Main job (UNet w32, 128 px, batch 16, bf16 + channels_last by default), last of {args.epochs} epochs "
          f"of {args.train} images, training steps only; {n_cores} cores; neighbours spin one core each.\n\n"
          + md_table(rows, [("neighbours", "neighbours", ""), ("policy", "threads", ""),
                            ("train_s", "s in training steps", ""), ("slowdown", "x idle (same policy)", ""),
                            ("fair", "fair share x", "")]))
    print(md)
    write_results(args.out, {"machine": machine_info(), "quiet": quiet, "args": vars(args), "runs": raw}, md)


if __name__ == "__main__":
    main()
