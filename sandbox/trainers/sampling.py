"""What every generative trainer shows of its model: samples from fixed noise, their fid_own, kid_own,
precision, recall and diversity against the validation images, the latent probe (models that encode, data
with known parameters), sample grids each epoch and ``plots/generative.png`` with the training curves.
Functions of the trainer (its model, accelerator, config and data), called from each generative trainer."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from sandbox.data.conditions import conditions_of
from sandbox.data.transforms import unaugmented
from sandbox.metrics.generative import own_features, sample_scores
from sandbox.metrics.probe import encode_dataset, latent_probe
from sandbox.viz.curves import plot_generative
from sandbox.viz.grids import save_grid

log = logging.getLogger("sandbox")
GRID = 64  # images in a sample grid (8 x 8)
BETA1 = 0.9  # Adam's beta1 of the generative trainers unless train.beta1 (the adversarial ones: 0.5)


def sample_conditions(tr, n: int) -> torch.Tensor | None:
    """The conditions of a conditional model's ``n`` per-epoch samples: the validation split's first ``n``
    (cycled when it has fewer; the training split's without a validation split), so that the samples'
    scores against the validation images compare like with like. None for an unconditional model."""
    if not getattr(tr.unwrapped, "conditional", False):
        return None
    split = tr.datasets.get("val")
    table = conditions_of(split if split is not None and len(split) else tr.datasets["train"])
    return table[torch.arange(n) % len(table)]


@torch.no_grad()
def samples(tr, n: int, seed_offset: int = 0) -> torch.Tensor:
    """``n`` samples of ``tr``'s model from fixed noise (the same every epoch), float32 on the device; a
    conditional model's under :func:`sample_conditions` (at the model's guidance)."""
    g = torch.Generator().manual_seed(tr.cfg.seed + seed_offset)
    m = tr.unwrapped
    cond = sample_conditions(tr, n)
    was = m.training
    m.eval()
    with tr.accelerator.autocast():
        if cond is None:
            out = torch.cat([m.sample(min(256, n - i), g).float() for i in range(0, n, 256)])
        else:
            out = torch.cat([m.sample(min(256, n - i), g, condition=cond[i:i + 256]).float()
                             for i in range(0, n, 256)])
    m.train(was)
    return out


def sample_metrics(tr, real_features: torch.Tensor) -> dict[str, float]:
    """``val/fid_own``, ``val/kid_own``, ``val/precision``, ``val/recall`` and ``val/diversity`` of
    ``train.fid_samples`` samples against the features of the validation images (the samples'
    features computed once for all of them; precision and recall left out with 3 images or fewer)."""
    fake = own_features(samples(tr, tr.cfg.train.fid_samples))
    scores = sample_scores(real_features, fake, seed=tr.cfg.seed)
    return {f"val/{k}": v for k, v in scores.items() if k != "kid_own_std" and not math.isnan(v)}


def probe(tr) -> dict[str, float]:
    """Latent probe R² on data with known parameters (attractors): the model's codes of the validation
    images, fitted on the first ``train.probe_samples`` training images; nothing for a model that
    does not encode."""
    train, val = tr.datasets["train"], tr.datasets.get("val")
    train = unaugmented(train)  # the latent probe reads the images as stored
    n = min(tr.cfg.train.probe_samples, len(train))
    m = tr.unwrapped
    if n < 4 or val is None or len(val) < 2 or "params" not in val[0] or not m.encodes:
        return {}
    with tr.accelerator.autocast():
        cf, pf = encode_dataset(m, train, list(range(n)))
        cv, pv = encode_dataset(m, val, list(range(len(val))))
    r = latent_probe(cf, pf, cv, pv)
    return {"val/probe_r2_linear": r["linear"], "val/probe_r2_kernel": r["kernel"]}


def sample_grid(tr, epoch: int) -> Path:
    """``images/samples_epochNNN.png``: a grid of samples from fixed noise."""
    return save_grid(samples(tr, GRID), tr.run.images / f"samples_epoch{epoch + 1:03d}.png",
                     title=f"samples, epoch {epoch + 1}")


def generative_plot(tr, records: list[dict]) -> None:
    """``plots/generative.png`` from the metrics ``records``; a failed plot never stops training."""
    try:
        plot_generative(records, tr.run.plots / "generative.png")
    except (OSError, ValueError) as exc:
        log.warning("plots/generative.png not written (%s)", exc)
