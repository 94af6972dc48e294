"""Does a conditional sample have the factors it was asked for? Factor R² and the sample grade per guidance w.

    res = guidance_sweep(cfg, model, evaluator, n=256, weights=(0, 1, 2, 4), split="test", out=run / "images")
    res["per_w"]["2"] == {"r2": {"a": .., "b": .., ...}, "r2_mean": .., "kid_domain": .., "fid_domain": .., "grid": ..}

For a conditional run (``data.condition``), ``n`` conditions are drawn from ``split`` (a seeded permutation,
cycled when the split is smaller); every guidance scale w samples them from the **same** noise (so the columns
differ by w alone). The trained domain evaluator (attractors: :func:`sandbox.metrics.render_back.
attractor_evaluator`, regressing ``(a, b, c, d)`` from an image) estimates each sample's factors, and
:func:`factor_r2` scores them against the factors asked for: ``1 - SS_res / SS_tot`` per factor, ``SS_tot``
about the asked factors' mean (1: every estimate is the asked value; 0: no better than answering the mean;
below 0 for estimates unrelated to the asked ones, about -1 for a shuffled copy of them). The sample grade is
the evaluator-feature KID (and Fréchet distance) of the samples against every image of ``split``
(:func:`sandbox.metrics.evaluators.domain_scores`): w = 0 is the unconditional model, w > 1 trades diversity
for adherence (Ho & Salimans 2022). Only the factors the evaluator regresses are scored (attractors: all four).

The evaluator's own ceiling is its held-out R² on real images (``evaluator_heldout``, reported beside).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from sandbox.build import build_data
from sandbox.data.conditions import conditions_of
from sandbox.errors import SandboxError
from sandbox.metrics.evaluators import Evaluator, domain_scores
from sandbox.viz.grids import save_grid

WEIGHTS = (0.0, 1.0, 2.0, 4.0)
GRID = 64  # samples shown in each w's grid (8 x 8)


def factor_r2(asked: torch.Tensor, estimated: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """``{name: R²}`` of ``estimated`` against ``asked`` (both ``(N, F)``, columns ``names``): ``1 - sum((e - a)²)
    / sum((a - mean(a))²)`` per column (float64). NaN for a column whose asked values do not vary."""
    a, e = torch.as_tensor(asked).double(), torch.as_tensor(estimated).double()
    if a.shape != e.shape or a.ndim != 2 or a.shape[1] != len(names) or len(a) < 2:
        raise SandboxError(f"factor R²: asked {tuple(a.shape)} and estimated {tuple(e.shape)} factors; expected two "
                           f"(N >= 2, {len(names)}) tables for {', '.join(names)}")
    ss_res = (e - a).square().sum(0)
    ss_tot = (a - a.mean(0)).square().sum(0)
    r2 = torch.where(ss_tot > 1e-12, 1 - ss_res / ss_tot.clamp_min(1e-12), torch.full_like(ss_tot, float("nan")))
    return {n: float(v) for n, v in zip(names, r2)}


def pick_conditions(table: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` rows of ``table`` ``(N, F)`` in a permutation seeded ``seed``, cycled when ``n > N``."""
    if not len(table):
        raise SandboxError("the split has no conditions to sample; give a split with images")
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(seed))
    return table[order[torch.arange(n) % len(table)]]


@torch.no_grad()
def guidance_sweep(cfg, model, evaluator: Evaluator, n: int = 256, weights: Sequence[float] = WEIGHTS,
                   split: str = "test", seed: int | None = None, out: str | Path | None = None,
                   batch: int = 256) -> dict:
    """Factor R² (:func:`factor_r2`) and ``kid_domain``/``fid_domain`` of ``n`` samples of the conditional
    ``model`` (eval mode) at each guidance w of ``weights``, conditioned on ``n`` conditions of ``split``;
    noise and conditions seeded ``seed`` (None: ``cfg.seed``), the same noise for every w. ``out``: the folder
    of the grids ``guidance_w<w>.png`` (None: none written). See the module doc."""
    if not getattr(model, "conditional", False):
        raise SandboxError("guidance sweep: this run was trained without data.condition, so it has no condition "
                           "to guide towards; train with data.condition (e.g. configs/flow_attractors_cond.yaml)")
    if n < 2 or not weights:
        raise SandboxError(f"guidance sweep: {n} samples and {len(weights)} guidance scales; expected n >= 2 and "
                           "at least one w")
    seed = cfg.seed if seed is None else seed
    data = build_data(cfg, (split,))[split]
    asked = pick_conditions(conditions_of(data), n, seed)
    names = [f.name for f in model.factors]
    scored = [i for i, f in enumerate(model.factors) if f.name in evaluator.meta.get("names", ())]
    if not scored:
        raise SandboxError(f"guidance sweep: the evaluator regresses {', '.join(evaluator.meta.get('names', ())) or 'nothing'}, "
                           f"none of the run's factors {', '.join(names)}")
    columns = [list(evaluator.meta["names"]).index(names[i]) for i in scored]
    real = torch.stack([data[i]["image"] for i in range(len(data))])
    real_features = evaluator.features(real)
    dev = next(model.parameters()).device
    noise = model.prior(n, torch.Generator().manual_seed(seed))
    per_w = {}
    for w in weights:
        g = torch.Generator().manual_seed(seed + 1)  # a stochastic sampler's fresh noise: the same for every w
        fake = torch.cat([model.decode(noise[i:i + batch].to(dev), g, asked[i:i + batch], float(w)).float().cpu()
                          for i in range(0, n, batch)])
        est = evaluator.regress(fake)[:, columns]
        r2 = factor_r2(asked[:, scored], est, [names[i] for i in scored])
        grade = domain_scores(evaluator, real, fake, seed=seed, real_features=real_features)
        row = {"r2": r2, "r2_mean": sum(r2.values()) / len(r2), "kid_domain": grade["kid_domain"],
               "fid_domain": grade["fid_domain"]}
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            row["grid"] = str(save_grid(fake[:GRID], Path(out) / f"guidance_w{float(w):g}.png",
                                        title=f"guidance w = {float(w):g}, first {min(GRID, n)} of {n} conditions"))
        per_w[f"{float(w):g}"] = row
    return {"split": split, "n": n, "n_real": len(real), "seed": seed, "factors": names,
            "scored": [names[i] for i in scored], "evaluator": evaluator.meta.get("key"),
            "evaluator_heldout": evaluator.meta.get("heldout"), "per_w": per_w}


def table(res: dict) -> str:
    """The sweep as lines: one per w, R² per factor, their mean, kid_domain and fid_domain."""
    names = res["scored"]
    head = f"{'w':>5} " + " ".join(f"{'R2 ' + n:>8}" for n in names) + f" {'R2 mean':>8} {'kid_dom':>9} {'fid_dom':>9}"
    lines = [head]
    for w, row in res["per_w"].items():
        lines.append(f"{w:>5} " + " ".join(f"{row['r2'][n]:8.3f}" for n in names)
                     + f" {row['r2_mean']:8.3f} {row['kid_domain']:9.4f} {row['fid_domain']:9.3f}")
    return "\n".join(lines)
