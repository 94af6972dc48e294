"""Factor R² and sample grade per guidance scale of a conditional attractors run (issue 31): n conditions drawn
from the test split, sampled at each w from the same noise, each sample's (a, b, c, d) estimated by the trained
attractor evaluator (cached in --evaluators, trained there once when absent) and scored against the factors asked
for; kid_domain/fid_domain against the split's images. Writes <run>/eval/guidance_<split>.json and
<run>/images/guidance_w<w>.png (sandbox/analysis/guidance.py).

    python results/conditional/guidance.py --run runs/flow_attractors_cond --n 256 --w 0 1 2 4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.analysis.guidance import WEIGHTS, guidance_sweep, table  # noqa: E402
from sandbox.errors import SandboxError  # noqa: E402
from sandbox.metrics.evaluators import STEPS  # noqa: E402
from sandbox.metrics.render_back import EVAL_IMAGES, attractor_evaluator  # noqa: E402
from sandbox.runs.load import checkpoint_dir, load_run  # noqa: E402
from sandbox.runs.rundir import inside, write_atomic  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a conditional attractors run (data.condition: params)")
    p.add_argument("--which", default="best", help="checkpoint: best, last or epoch_NNN")
    p.add_argument("--n", type=int, default=256, help="conditions (= samples per w; default 256)")
    p.add_argument("--w", type=float, nargs="+", default=list(WEIGHTS), help="guidance scales (default 0 1 2 4)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--sample-steps", type=int, help="sampling steps (default: the run's model.sample_steps)")
    p.add_argument("--evaluators", help="cache of the trained evaluators (default <out_dir>/.evaluators)")
    p.add_argument("--evaluator-steps", type=int, default=STEPS, help=argparse.SUPPRESS)  # tests: a tiny evaluator
    p.add_argument("--evaluator-images", type=int, default=EVAL_IMAGES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        path, _ = checkpoint_dir(a.run, a.which)
        cfg, model = load_run(a.run, a.which, task="generative")
        if cfg.data.name != "attractors":
            raise SandboxError(f"--run {a.run}: data.name {cfg.data.name}; this script scores attractors runs")
        model.set_sample_steps(a.sample_steps, "--sample-steps")
        cache = Path(a.evaluators) if a.evaluators else Path(cfg.out_dir) / ".evaluators"
        ev = attractor_evaluator(cache, cfg.data.size, cfg.seed, steps=a.evaluator_steps, images=a.evaluator_images)
        t0 = time.time()
        res = guidance_sweep(cfg, model, ev, a.n, a.w, a.split, out=inside(path, path / "images"))
    except SandboxError as exc:
        sys.exit(f"error: {exc}")
    res.update(run=str(path), which=a.which, seconds=round(time.time() - t0, 1), sample_steps=model.sample_steps)
    out = inside(path, path / "eval" / f"guidance_{a.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(res, indent=2))
    print(table(res))
    print(f"evaluator held-out R² (its ceiling on real images): {res['evaluator_heldout']}")
    print(f"wrote {out} and {len(res['per_w'])} grids in {path / 'images'}")


if __name__ == "__main__":
    main()
