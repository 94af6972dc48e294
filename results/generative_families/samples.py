"""The sample grid of results/generative_families/README.md: 8 samples of each family's seed-0 run, from its
checkpoints/best (the checkpoint the study scored), one row per family, from noise seeded as the study's
evaluation seeds it (seed + sandbox.analysis.probe.SCORE_NOISE_OFFSET), first row real test images.

    python results/generative_families/samples.py      # after the study; reads runs/studies/generative_families/
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.analysis.probe import SCORE_NOISE_OFFSET  # noqa: E402
from sandbox.build import build_data  # noqa: E402
from sandbox.runs.load import load_run  # noqa: E402
from sandbox.viz.grids import save_grid  # noqa: E402

FAMILIES = ("ae", "vae", "aae", "dcgan", "ddpm", "flow")
STUDY = ROOT / "runs/studies/generative_families"


def main(n: int = 8) -> None:
    rows, labels = [], []
    for fam in FAMILIES:
        cfg, model = load_run(STUDY / f"family-{fam}_s0", "best", device="cpu", task="generative")
        if not labels:  # the real test images of the same seed, for reference
            test = build_data(cfg, ("test",))["test"]
            rows.append(torch.stack([test[i]["image"] for i in range(n)]))
            labels.append("real (test)")
        g = torch.Generator().manual_seed(cfg.seed + SCORE_NOISE_OFFSET)
        with torch.no_grad():
            rows.append(model.sample(n, g).float().cpu())
        labels.append(fam)
    out = save_grid(torch.cat(rows), Path(__file__).with_name("samples.png"), nrow=n, scale=3,
                    title="generative families, seed 0, checkpoints/best", row_labels=labels)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
