"""Probing a generative run: fid_own of its samples against two noise baselines and the real-vs-real
floor, and the latent probe of its trained against an untrained encoder (datasets with known
generating parameters, e.g. attractors). See :mod:`sandbox.metrics.generative` and
:mod:`sandbox.metrics.probe` for what the numbers mean.
"""
from __future__ import annotations

import torch

from sandbox.build import build_data, build_model
from sandbox.config import Config
from sandbox.data.render import progress
from sandbox.data.transforms import unaugmented
from sandbox.metrics.generative import frechet_distance, mean_pairwise_distance, own_features
from sandbox.metrics.probe import encode_dataset, latent_probe


def probe_run(cfg: Config, model, split: str = "test", samples: int = 512, fit: int = 4000,
              label: str = "") -> dict:
    """Everything probe.py prints for a loaded generative ``model`` (eval mode) on ``split``."""
    data = build_data(cfg, ("train", split))
    held = data[split]
    g = torch.Generator().manual_seed(cfg.seed)
    real = torch.stack([held[i]["image"] for i in progress(range(len(held)), f"probe: {split} images")])
    fake = torch.cat([model.sample(min(256, samples - i), g).float().cpu() for i in range(0, samples, 256)])
    # baselines: Gaussian noise matched to the data's per-channel mean and variance (no layout at all), and
    # to its per-pixel mean and variance (the "mean image + noise", a much stronger one); the floor:
    # as many training images, real against real
    shape = (samples, *real.shape[1:])
    per_channel = real.mean((0, 2, 3), keepdim=True)[0], real.std((0, 2, 3), keepdim=True)[0]
    baselines = {"noise_channel": per_channel, "noise_pixel": (real.mean(0), real.std(0))}
    fr, ff = own_features(real), own_features(fake)
    spread = mean_pairwise_distance(fr)
    res = {"run": label, "split": split, "n_real": len(real), "n_generated": samples,
           "fid_own_samples": frechet_distance(fr, ff), "diversity_samples": mean_pairwise_distance(ff) / spread}
    for name, (mean, std) in baselines.items():
        fn = own_features((mean + std * torch.randn(shape, generator=g)).clamp(0, 1))
        res[f"fid_own_{name}"], res[f"diversity_{name}"] = frechet_distance(fr, fn), mean_pairwise_distance(fn) / spread
    train = unaugmented(data["train"])  # the images as stored
    # a seeded random subset: folder datasets list files sorted by name, and UTKFace's names start
    # with the age, so the first N training images are the youngest faces (floor 1.57 instead of 0.11)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:len(real)]
    other = torch.stack([train[int(i)]["image"] for i in progress(pick, "probe: training images (floor)")])
    res["fid_own_real_train_vs_heldout"] = frechet_distance(fr, own_features(other))
    if "params" in held[0] and model.encodes:
        fit_idx = list(range(min(len(train), fit)))
        for which, net in (("trained", model), ("untrained", build_model(cfg).to(next(model.parameters()).device))):
            cf, pf = encode_dataset(net, train, fit_idx, desc=f"probe: encoding training images ({which})")
            ct, pt = encode_dataset(net, held, list(range(len(held))), desc=f"probe: encoding {split} images ({which})")
            res[f"probe_{which}"] = latent_probe(cf, pf, ct, pt)
        res["probe_fit_images"] = len(fit_idx)
    return res


def report(res: dict) -> str:
    """The probe.py result as a short table: fid_own of the samples against its baselines and floor,
    and the latent probe R² of the trained against the untrained encoder."""
    w = 66

    def row(label: str, *values: float) -> str:
        return f"  {label:<{w}}" + "".join(f"{v:>11.3f}" for v in values)

    lines = [f"{res['run']}: {res['n_real']} held-out {res['split']} images, {res['n_generated']} samples",
             f"{'fid_own (own features, NOT Inception FID; lower is better)':<{w + 2}}{'fid_own':>11}{'diversity':>11}",
             row("samples", res["fid_own_samples"], res["diversity_samples"]),
             row("Gaussian noise, per-channel mean/std (baseline)", res["fid_own_noise_channel"],
                 res["diversity_noise_channel"]),
             row("Gaussian noise, per-pixel mean/std (baseline)", res["fid_own_noise_pixel"],
                 res["diversity_noise_pixel"]),
             row("training images vs held-out (the floor)", res["fid_own_real_train_vs_heldout"])]
    if "probe_trained" in res:
        lines += [f"{'latent probe R² on held-out images, fitted on %d training images' % res['probe_fit_images']:<{w + 2}}"
                  f"{'linear':>11}{'kernel':>11}"]
        lines += [row(f"{label} encoder", res[f"probe_{label}"]["linear"], res[f"probe_{label}"]["kernel"])
                  for label in ("trained", "untrained")]
    return "\n".join(lines)
