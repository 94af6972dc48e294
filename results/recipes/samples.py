"""The sample grid of results/recipes/README.md: 16 samples of each recipe's run from its checkpoints/best,
from noise seeded as a study's scoring seeds it (seed + sandbox.analysis.probe.SCORE_NOISE_OFFSET), one
row pair per recipe, the first rows real test images of the same data config.

    python results/recipes/samples.py --run runs/flow_attractors runs/ddpm_attractors
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.analysis.probe import SCORE_NOISE_OFFSET  # noqa: E402
from sandbox.build import build_data  # noqa: E402
from sandbox.runs.load import load_run  # noqa: E402
from sandbox.viz.grids import save_grid  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs="+", required=True, help="run directories (their checkpoints/best)")
    p.add_argument("--n", type=int, default=16, help="images per row")
    p.add_argument("--out", default=str(Path(__file__).with_name("samples.png")))
    a = p.parse_args()
    rows, labels = [], []
    for run in a.run:
        cfg, model = load_run(Path(run), "best", device="cpu", task="generative")
        if not labels:  # the real test images of the same data config, for reference
            test = build_data(cfg, ("test",))["test"]
            rows.append(torch.stack([test[i]["image"] for i in range(2 * a.n)]))
            labels += ["real (test)", ""]
        g = torch.Generator().manual_seed(cfg.seed + SCORE_NOISE_OFFSET)
        with torch.no_grad():
            rows.append(model.sample(2 * a.n, g).float().cpu())
        state = json.loads((Path(run) / "checkpoints" / "best" / "trainer_state.json").read_text())
        labels += [f"{cfg.model.name} ({Path(run).name})", f"step {state['step']}"]
    out = save_grid(torch.cat(rows), Path(a.out), nrow=a.n, scale=3,
                    title="attractor recipes, checkpoints/best (32 px)", row_labels=labels)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
