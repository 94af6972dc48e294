"""The references table of results/evaluators/: every sample metric on real images and on degraded copies of them.

    python results/evaluators/references.py                       # attractors, 32 px, configs/flow_attractors.yaml
    python results/evaluators/references.py --n 200 --out /tmp/x  # quicker

Writes ``references.md`` (the table, whether each metric orders the references as a person would, timings)
and ``references.csv`` into ``--out``. A script here, not an option of probe.py: the table describes the
metrics on a dataset, not a trained run (probe.py needs ``--run``); it is rerun when a metric changes.
The evaluator is cached in ``--cache`` (default runs/.evaluators, the same cache score_run uses).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox import load_config  # noqa: E402
from sandbox.analysis.reports import write_csv  # noqa: E402
from sandbox.analysis.tables import format_table  # noqa: E402
from sandbox.build import build_data  # noqa: E402
from sandbox.metrics.evaluators import STEPS, domain_scores  # noqa: E402
from sandbox.metrics.generative import kid, own_features, spectrum_scores  # noqa: E402
from sandbox.metrics.two_sample import c2st, c2st_pixels  # noqa: E402
from sandbox.metrics.references import orders, references, score_references  # noqa: E402
from sandbox.metrics.render_back import EVAL_IMAGES, attractor_evaluator, attractor_scores, render, similarity  # noqa: E402

METRICS = ("kid_own", "spectral_l1", "hf_log_ratio", "fid_domain", "kid_domain", "precision_domain", "recall_domain",
           "validity", "param_coverage", "param_w1", "c2st_auc", "c2st_auc_lo", "c2st_auc_hi", "c2st_nll_gain", "c2st_pixels_auc", "c2st_pixels_nll_gain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/flow_attractors.yaml"))
    ap.add_argument("--n", type=int, default=500, help="images per set (the held-out pool is 2n val images)")
    ap.add_argument("--cache", default=str(ROOT / "runs/.evaluators"))
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--steps", type=int, default=STEPS, help="evaluator training steps (a quick look: fewer)")
    ap.add_argument("--images", type=int, default=EVAL_IMAGES, help="training images of the evaluator")
    args = ap.parse_args()
    cfg = load_config(args.config, [f"data.num_val={2 * args.n}"])
    t0 = time.perf_counter()
    ev = attractor_evaluator(args.cache, cfg.data.size, cfg.seed, steps=args.steps, images=args.images)
    t_eval = time.perf_counter() - t0
    val = build_data(cfg, ("val",))["val"]
    pool = torch.stack([val[i]["image"] for i in range(len(val))])
    anchor, sets = references(pool, seed=cfg.seed)
    own_anchor, dom_anchor = own_features(anchor), ev.features(anchor)
    scorers = {
        "own": lambda a, x: {"kid_own": kid(own_anchor, own_features(x), seed=cfg.seed)[0], **spectrum_scores(a, x)},
        "domain": lambda a, x: domain_scores(ev, a, x, seed=cfg.seed, real_features=dom_anchor),
        "render_back": lambda a, x: attractor_scores(ev, a, x, seed=cfg.seed),
        "c2st": lambda a, x: c2st(dom_anchor, ev.features(x), seed=cfg.seed),
        "c2st_pixels": lambda a, x: c2st_pixels(a, x, seed=cfg.seed),
    }
    rows = score_references(anchor, sets, scorers)
    truth = torch.stack([val[i]["params"] for i in range(len(val))]).numpy()
    ceiling = float(similarity(pool, render(truth, cfg.data.size, seed=cfg.seed + 1)).mean())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "references.csv")
    ordered = orders(rows)
    check = [{"metric": m, "real best": o["floor_best"], "collapsed last": o["collapsed_last"],
              "used to rank": o["ranks"]} for m, o in ordered.items()]
    meta = ev.meta
    lines = [f"# Sample metrics on references: {cfg.data.name}, {cfg.data.size} px, seed {cfg.seed}", "",
             f"`python results/evaluators/references.py` ({time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} "
             f"torch threads). {args.n} images per set, each scored against {args.n} other val images.", "",
             format_table([{k: r[k] for k in ("set", *METRICS)} for r in rows]), "",
             "## Does each metric order the references as a person would?", "", format_table(check), "",
             f"Render-back ceiling (real images against their rendering from their TRUE parameters, other orbit "
             f"seed): {ceiling:.3f}.", "",
             f"Domain evaluator: {meta['key']}, held-out R² {meta['heldout']}, trained in {meta['train_seconds']} s "
             f"wall / {meta.get('train_cpu_seconds')} s CPU ({meta['threads']} threads); this script loaded or trained "
             f"it in {t_eval:.1f} s.", "",
             "Seconds per set and scorer:", "",
             format_table([{k: r[k] for k in r if k == "set" or k.endswith("_s")} for r in rows])]
    (out / "references.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
