"""Probing a generative run: fid_own, kid_own, precision and recall of its samples against two noise
baselines and the real-vs-real floor, the distance of its samples to their nearest training image
against that of held-out real images (memorisation), Inception FID/KID given a local weights file,
and the latent probe of its trained against an untrained encoder (datasets with known
generating parameters, e.g. attractors). See :mod:`sandbox.metrics.generative` and
:mod:`sandbox.metrics.probe` for what the numbers mean.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from sandbox.build import build_data, build_model
from sandbox.config import Config
from sandbox.data.conditions import conditions_of
from sandbox.data.render import progress
from sandbox.data.transforms import unaugmented
from sandbox.metrics.generative import (frechet_distance, kid, min_distances, own_features, sample_scores,
                                       spectrum_scores)
from sandbox.metrics.inception import inception_features
from sandbox.metrics.probe import encode_dataset, latent_probe

FLOOR = "real_train_vs_heldout"  # the row of training images scored as if they were samples
NEAREST_MAX = 10000  # training images searched for each sample's nearest one


def draw_samples(model, held, n: int, g: torch.Generator, chunk: int = 256) -> torch.Tensor:
    """``n`` samples of ``model`` (float32, CPU) in chunks, noise from ``g``. A conditional model samples under
    ``held``'s conditions (cycled) at its own guidance, as its per-epoch samples do (trainers/sampling.py):
    without them it would be graded at w = 0, another model than the one trained and validated."""
    table = conditions_of(held) if getattr(model, "conditional", False) else None
    out = []
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        kw = {} if table is None else {"condition": table[torch.arange(i, i + k) % len(table)]}
        out.append(model.sample(k, g, **kw).float().cpu())
    return torch.cat(out)


def probe_run(cfg: Config, model, split: str = "test", samples: int = 512, fit: int = 4000,
              label: str = "", inception=None, nearest_max: int = NEAREST_MAX, baselines: bool = True,
              untrained: bool = True, noise_seed: int | None = None, evaluators: str | Path | None = None) -> dict:
    """Everything probe.py prints for a loaded generative ``model`` (eval mode) on ``split``; ``inception``:
    a network from :func:`sandbox.metrics.inception.load_inception` adds Inception FID/KID. A study's
    evaluation leaves out what it does not report: ``baselines`` (noise and the real-vs-real floor),
    ``untrained`` (the probe of an untrained encoder), ``nearest_max=0`` (nearest training images).
    ``sample_time_per_100``: seconds of ``model.sample`` per 100 samples (batches of 256, this process's
    torch threads: ``threads``), a timing of this machine. ``noise_seed`` (None: ``cfg.seed``, the noise of the
    trainer's per-epoch samples) seeds the samples' noise and the baselines. ``evaluators``: the cache directory
    of the trained evaluators; set, datasets that have one (attractors) add :func:`domain_metrics`."""
    data = build_data(cfg, ("train", split))
    held = data[split]
    g = torch.Generator().manual_seed(cfg.seed if noise_seed is None else noise_seed)
    real = torch.stack([held[i]["image"] for i in progress(range(len(held)), f"probe: {split} images")])
    t0 = time.perf_counter()
    fake = draw_samples(model, held, samples, g)
    timing = {"sample_time_per_100": (time.perf_counter() - t0) * 100 / samples, "threads": torch.get_num_threads()}
    # baselines: Gaussian noise matched to the data's per-channel mean and variance (no layout at all), and
    # to its per-pixel mean and variance (the "mean image + noise", a much stronger one); the floor:
    # as many training images, real against real
    shape = (samples, *real.shape[1:])
    per_channel = real.mean((0, 2, 3), keepdim=True)[0], real.std((0, 2, 3), keepdim=True)[0]
    sets = {"samples": fake}
    train = unaugmented(data["train"])  # the images as stored
    if baselines:
        for name, (mean, std) in {"noise_channel": per_channel, "noise_pixel": (real.mean(0), real.std(0))}.items():
            sets[name] = (mean + std * torch.randn(shape, generator=g)).clamp(0, 1)
        # a seeded random subset: folder datasets list files sorted by name, and UTKFace's names start
        # with the age, so the first N training images are the youngest faces (floor 1.57 instead of 0.11)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:len(real)]
        sets[FLOOR] = torch.stack([train[int(i)]["image"] for i in progress(pick, "probe: training images (floor)")])
    fr = own_features(real)
    res = {"run": label, "split": split, "n_real": len(real), "n_generated": samples, **timing}
    for name, images in sets.items():
        res.update({f"{k}_{name}": v for k, v in sample_scores(fr, own_features(images), seed=cfg.seed).items()})
        res.update({f"{k}_{name}": v for k, v in spectrum_scores(real, images).items()})
    if evaluators is not None:
        res.update(domain_metrics(cfg, real, sets, evaluators, train))
    if nearest_max:
        res.update(nearest_train(train, {"samples": fake, "heldout": real}, nearest_max, cfg.seed))
    if inception is not None:
        inception = inception.to(next(model.parameters()).device)
        ir = inception_features(inception, real)
        for name in ("samples", FLOOR):
            fi = inception_features(inception, sets[name])
            res[f"fid_inception_{name}"] = frechet_distance(ir, fi)
            res[f"kid_inception_{name}"], res[f"kid_inception_std_{name}"] = kid(ir, fi, seed=cfg.seed)
    if "params" in held[0] and model.encodes and fit >= 4:
        fit_idx = list(range(min(len(train), fit)))
        nets = [("trained", model)] + ([("untrained", build_model(cfg).to(next(model.parameters()).device))]
                                       if untrained else [])
        for which, net in nets:
            cf, pf = encode_dataset(net, train, fit_idx, desc=f"probe: encoding training images ({which})")
            ct, pt = encode_dataset(net, held, list(range(len(held))), desc=f"probe: encoding {split} images ({which})")
            res[f"probe_{which}"] = latent_probe(cf, pf, ct, pt)
        res["probe_fit_images"] = len(fit_idx)
    return res


DOMAIN_KEYS = ("fid_domain", "kid_domain", "precision_domain", "recall_domain", "validity", "param_coverage",
               "param_w1", "c2st_auc", "c2st_auc_lo", "c2st_auc_hi", "c2st_nll_gain")


def domain_metrics(cfg: Config, real: torch.Tensor, sets: dict[str, torch.Tensor], cache: str | Path, train) -> dict:
    """The trained evaluator's numbers for each image set of ``sets`` against ``real`` (``<key>_<set>``, keys
    :data:`DOMAIN_KEYS`): Fréchet distance, KID, precision/recall in its features, the classifier two-sample
    test on them and, for attractors, render-back validity and parameter coverage (:mod:`sandbox.metrics.
    evaluators`, ``render_back``, ``face_evaluator``, ``two_sample``). The evaluator learns from the train split
    (``train``; attractors: the train stream of ``cfg``'s data seed and size) once, then is read from ``cache``.
    Datasets without an evaluator (neither attractors nor UTKFace names): ``{}``."""
    from sandbox.metrics.evaluators import domain_scores
    from sandbox.metrics.face_evaluator import face_evaluator, is_utkface
    from sandbox.metrics.render_back import attractor_evaluator, attractor_scores
    from sandbox.metrics.two_sample import c2st

    if cfg.data.name == "attractors":
        ev = attractor_evaluator(cache, cfg.data.size, cfg.seed)
    elif is_utkface(train):
        ev = face_evaluator(cache, train, cfg.seed)
    else:
        return {}
    fr = ev.features(real)
    res = {"evaluator": ev.meta["key"], "evaluator_heldout": ev.meta["heldout"]}
    for name, images in sets.items():
        scores = {**domain_scores(ev, real, images, seed=cfg.seed, real_features=fr),
                  **c2st(fr, ev.features(images), seed=cfg.seed)}
        if cfg.data.name == "attractors":
            scores.update(attractor_scores(ev, real, images, seed=cfg.seed))
        res.update({f"{k}_{name}": v for k, v in scores.items()})
    return res


SAMPLE_KEYS = ("fid_own", "kid_own", "precision", "recall", "diversity", "spectral_l1", "hf_log_ratio")
# A study's evaluation samples from noise seeded ``seed + SCORE_NOISE_OFFSET``, not from the per-epoch samples'
# noise (seeded ``seed``): a run whose epoch was picked by its per-epoch kid_own (a GAN's monitor) would
# otherwise be scored on the very samples that picked it.
SCORE_NOISE_OFFSET = 10_007
# what score_run writes (DOMAIN_KEYS: datasets with an evaluator, validity and param_*: attractors; others read n/a)
EVAL_KEYS = (*SAMPLE_KEYS, *DOMAIN_KEYS, "probe_r2_linear", "probe_r2_kernel", "sample_time_per_100")


def score_run(run: str | Path, split: str = "val", samples: int | None = None, fit: int | None = None,
              which: str = "best", evaluators: str | Path | None = None) -> Path:
    """A study's evaluation of a generative run: :func:`probe_run` on ``checkpoints/<which>`` without the
    baselines, written as ``eval/<split>[_N].json`` (``split``, ``checkpoint``, ``epoch``, ``means``: the
    :data:`EVAL_KEYS`, the latent probe only for models with an encoder), from fresh noise
    (:data:`SCORE_NOISE_OFFSET`). ``samples``/``fit`` (None: the
    run's ``train.fid_samples``/``train.probe_samples``): samples scored against every image of the split,
    training images the probe fits on. Attractor and UTKFace runs add :data:`DOMAIN_KEYS` from the evaluator cached in
    ``evaluators`` (None: ``<cfg.out_dir>/.evaluators``, beside the runs, outside the project's tracked tree).
    Returns the file."""
    from sandbox.analysis.evaluation import eval_config, free_stem
    from sandbox.errors import SandboxError
    from sandbox.runs.checkpoints import read_state
    from sandbox.runs.load import checkpoint_dir, load_run
    from sandbox.runs.rundir import inside, write_atomic

    path, ckpt = checkpoint_dir(str(run), which)
    cfg, model = load_run(str(run), which, task="generative")
    cfg = eval_config(cfg, path, [])
    samples, fit = samples or cfg.train.fid_samples, fit if fit is not None else cfg.train.probe_samples
    if samples < 2:
        raise SandboxError(f"{path}: {samples} samples to score; give the study sample_eval: {{samples: N}} (N >= 2) "
                           "or the run train.fid_samples")
    noise_seed = cfg.seed + SCORE_NOISE_OFFSET
    cache = Path(cfg.out_dir) / ".evaluators" if evaluators is None else Path(evaluators)
    res = probe_run(cfg, model, split, samples, fit, label=str(path), nearest_max=0, baselines=False, untrained=False,
                    noise_seed=noise_seed, evaluators=cache)
    means = {k: res[f"{k}_samples"] for k in SAMPLE_KEYS} | {"sample_time_per_100": res["sample_time_per_100"]}
    means.update({k: res[f"{k}_samples"] for k in DOMAIN_KEYS if f"{k}_samples" in res})
    if "probe_trained" in res:
        means.update(probe_r2_linear=res["probe_trained"]["linear"], probe_r2_kernel=res["probe_trained"]["kernel"])
    state = read_state(ckpt)
    meta = {"run": str(path), "split": split, "checkpoint": str(ckpt), "epoch": state.get("epoch"),
            "step": state.get("step"), "n": res["n_real"], "samples": samples, "noise_seed": noise_seed,
            "fit": res.get("probe_fit_images"), "evaluator": res.get("evaluator"),
            "evaluator_heldout": res.get("evaluator_heldout"),
            "threads": res["threads"], "device": str(next(model.parameters()).device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "means": means}
    out = inside(path, path / "eval" / f"{split}{free_stem(path / 'eval', [split])}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(meta, indent=2))
    return out


def nearest_train(train, queries: dict[str, torch.Tensor], most: int = NEAREST_MAX, seed: int = 0,
                  chunk: int = 256) -> dict:
    """Median distance of each query set's images to their nearest training image, in own features and in
    pixels (RMS over values), over ``most`` training images at most (a seeded subset of a larger set),
    read chunk by chunk: ``nearest_features_<name>``, ``nearest_pixels_<name>``, ``nearest_train_images``."""
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:most].tolist()
    feats = {name: own_features(x) for name, x in queries.items()}
    best = {(kind, name): torch.full((len(x),), float("inf"), dtype=torch.float64)
            for name, x in queries.items() for kind in ("features", "pixels")}
    for i in progress(range(0, len(pick), chunk), "probe: nearest training images (chunks)"):
        ref = torch.stack([train[j]["image"] for j in pick[i:i + chunk]])
        ref_feats = own_features(ref)
        for name, x in queries.items():
            best["features", name] = torch.minimum(best["features", name], min_distances(feats[name], ref_feats))
            if x.shape[1:] == ref.shape[1:]:
                pixels = min_distances(x.flatten(1), ref.flatten(1)) / x[0].numel() ** 0.5
                best["pixels", name] = torch.minimum(best["pixels", name], pixels)
    out = {"nearest_train_images": len(pick)}
    for (kind, name), d in best.items():
        out[f"nearest_{kind}_{name}"] = float(d.median()) if torch.isfinite(d).all() else math.nan
    return out


def report(res: dict) -> str:
    """The probe.py result as short tables: the samples' own-feature scores against the noise baselines
    and the real-vs-real floor, their nearest-training-image distance against held-out real images',
    Inception FID/KID when computed, and the latent probe R² of the trained against the untrained encoder."""
    w = 58
    cols = {"fid_own": ".3f", "kid_own": ".5f", "precision": ".3f", "recall": ".3f", "diversity": ".3f"}

    def row(label: str, *values: float, fmt=(".3f",) * 5) -> str:
        return f"  {label:<{w}}" + "".join(f"{v:>11{f}}" for v, f in zip(values, fmt))

    def head(title: str, *names: str) -> str:
        return f"{title:<{w + 2}}" + "".join(f"{n:>11}" for n in names)

    rows = {"samples": "samples", "noise_channel": "Gaussian noise, per-channel mean/std (baseline)",
            "noise_pixel": "Gaussian noise, per-pixel mean/std (baseline)", FLOOR: "training images vs held-out (the floor)"}
    lines = [f"{res['run']}: {res['n_real']} held-out {res['split']} images, {res['n_generated']} samples",
             head("own features, NOT Inception FID (fid, kid: lower is better)", *cols)]
    lines += [row(label, *(res[f"{c}_{key}"] for c in cols), fmt=tuple(cols.values())) for key, label in rows.items()]
    spec = {"spectral_l1": ".3f", "hf_log_ratio": ".3f"}
    lines += [head("pixel power spectrum vs held-out (log10; hf<0 blur, >0 noise)",
                   "spec_l1", "hf_ratio")]
    lines += [row(label, *(res[f"{c}_{key}"] for c in spec), fmt=tuple(spec.values())) for key, label in rows.items()]
    near = {k: (res[f"nearest_{k}_samples"], res[f"nearest_{k}_heldout"]) for k in ("features", "pixels")}
    lines += [head(f"nearest of {res['nearest_train_images']} training images, median distance", "features", "pixels"),
              row("samples", near["features"][0], near["pixels"][0], fmt=(".3f", ".4f")),
              row("held-out real images (the reference)", near["features"][1], near["pixels"][1], fmt=(".3f", ".4f")),
              row("ratio samples / held-out (well below 1: memorised)",
                  *(a / b if b > 0 else math.nan for a, b in near.values()))]
    lines += [f"sampling: {res['sample_time_per_100']:.2f} s per 100 samples ({res['threads']} torch threads)"]
    if "fid_inception_samples" in res:
        lines += [head("Inception (pool3 of the weights file given)", "fid", "kid")]
        lines += [row(rows[key], res[f"fid_inception_{key}"], res[f"kid_inception_{key}"], fmt=(".3f", ".5f"))
                  for key in ("samples", FLOOR)]
    if "probe_trained" in res:
        lines += [head("latent probe R² on held-out images (fit: %d train)" % res["probe_fit_images"],
                       "linear", "kernel")]
        lines += [row(f"{label} encoder", res[f"probe_{label}"]["linear"], res[f"probe_{label}"]["kernel"])
                  for label in ("trained", "untrained")]
    return "\n".join(lines)
