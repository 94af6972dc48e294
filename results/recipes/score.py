"""Grade recipe runs on 1,000 samples against 1,000 held-out test images (issue 28's acceptance), with the
real-vs-real floor beside each number: the trained domain evaluator's Fréchet distance, KID, render-back validity,
parameter coverage and W1, the classifier two-sample test on its features (logistic, held-out AUC with a DeLong
interval and log-likelihood gain) and, as the independent check, the small pixel CNN two-sample test
(``c2st_pixels``: a network that never saw the evaluator's features). Samples come from noise seeded as a
study's scoring seeds it (seed + SCORE_NOISE_OFFSET), from checkpoints/best. The floor is as many training
images as test images, scored the same way.

    python results/recipes/score.py --run /tmp/recipe_runs/flow_attractors --out results/recipes/score_flow.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.analysis.probe import FLOOR, SCORE_NOISE_OFFSET, probe_run  # noqa: E402
from sandbox.build import build_data  # noqa: E402
from sandbox.metrics.two_sample import c2st_pixels  # noqa: E402
from sandbox.runs.load import load_run  # noqa: E402

KEYS = ("kid_domain", "fid_domain", "validity", "param_coverage", "param_w1", "c2st_auc", "c2st_auc_lo",
        "c2st_auc_hi", "c2st_nll_gain", "kid_own")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a generative attractors run directory")
    p.add_argument("--n", type=int, default=1000, help="samples and test images (default 1000)")
    p.add_argument("--evaluators", default="/tmp/sandbox_evaluators", help="cache of the trained evaluators")
    p.add_argument("--out", required=True, help="JSON file to write")
    a = p.parse_args()
    cfg, model = load_run(Path(a.run), "best", device="cpu", task="generative")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_test=a.n, augment=[]))
    t0 = time.time()
    res = probe_run(cfg, model, "test", samples=a.n, fit=0, label=a.run, nearest_max=0, baselines=True,
                    untrained=False, noise_seed=cfg.seed + SCORE_NOISE_OFFSET, evaluators=a.evaluators)
    # the independent check: a pixel CNN two-sample test, samples vs test and the floor (training vs test)
    test = build_data(cfg, ("test",))["test"]
    real = torch.stack([test[i]["image"] for i in range(len(test))])
    g = torch.Generator().manual_seed(cfg.seed + SCORE_NOISE_OFFSET)
    with torch.no_grad():
        fake = torch.cat([model.sample(min(250, a.n - i), g).float().cpu() for i in range(0, a.n, 250)])
    train = build_data(cfg, ("train",))["train"]
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:len(real)]
    floor = torch.stack([train[int(i)]["image"] for i in pick])
    pixels = {"samples": c2st_pixels(real, fake, seed=cfg.seed), FLOOR: c2st_pixels(real, floor, seed=cfg.seed)}
    state = json.loads((Path(a.run) / "checkpoints" / "best" / "trainer_state.json").read_text())
    out = {"run": a.run, "model": cfg.model.name, "step": state.get("step"), "epoch": state.get("epoch"),
           "elapsed_s": state.get("elapsed"), "n": a.n, "seconds_to_score": round(time.time() - t0, 1),
           "samples": {k: res.get(f"{k}_samples") for k in KEYS} | pixels["samples"],
           "floor": {k: res.get(f"{k}_{FLOOR}") for k in KEYS} | pixels[FLOOR],
           "evaluator": res.get("evaluator"), "evaluator_heldout": res.get("evaluator_heldout")}
    Path(a.out).write_text(json.dumps(out, indent=2))
    for k in out["samples"]:
        print(f"{k:22s} samples {out['samples'][k]!s:>24}   floor {out['floor'][k]!s:>24}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
