"""The base of every generative trainer: samples from fixed noise, their fid_own, kid_own, precision,
recall and diversity against the validation images, the latent probe (models that encode, data with known
parameters), sample grids each epoch, ``plots/generative.png`` with the training curves, Adam's beta1."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from sandbox.data.transforms import unaugmented
from sandbox.engine.optim import set_beta1
from sandbox.engine.trainer import Trainer
from sandbox.metrics.generative import own_features, sample_scores
from sandbox.metrics.probe import encode_dataset, latent_probe
from sandbox.viz.curves import plot_generative
from sandbox.viz.grids import save_grid

log = logging.getLogger("sandbox")
GRID = 64  # images in a sample grid (8 x 8)


class SamplingTrainer(Trainer):
    kind = "generative"
    beta1_default = 0.9

    def optimizer_for(self, params, lr: float | None = None):
        """An optimizer (and its scheduler) for the trainable ``params``, Adam's beta1 set to
        ``train.beta1`` or this trainer's default."""
        opt, sched = self.make_optimizer([p for p in params if p.requires_grad], lr)
        beta1 = self.cfg.train.beta1 if self.cfg.train.beta1 is not None else self.beta1_default
        return set_beta1(opt, beta1), sched

    @torch.no_grad()
    def samples(self, n: int, seed_offset: int = 0) -> torch.Tensor:
        """``n`` samples from fixed noise (the same every epoch), float32 on the device."""
        g = torch.Generator().manual_seed(self.cfg.seed + seed_offset)
        m = self.unwrapped
        was = m.training
        m.eval()
        with self.accelerator.autocast():
            out = torch.cat([m.sample(min(256, n - i), g).float() for i in range(0, n, 256)])
        m.train(was)
        return out

    def sample_metrics(self, real_features: torch.Tensor) -> dict[str, float]:
        """``val/fid_own``, ``val/kid_own``, ``val/precision``, ``val/recall`` and ``val/diversity`` of
        ``train.fid_samples`` samples against the features of the validation images (the samples'
        features computed once for all of them; precision and recall left out with 3 images or fewer)."""
        fake = own_features(self.samples(self.cfg.train.fid_samples))
        scores = sample_scores(real_features, fake, seed=self.cfg.seed)
        return {f"val/{k}": v for k, v in scores.items() if k != "kid_own_std" and not math.isnan(v)}

    def probe(self) -> dict[str, float]:
        """Latent probe R² on data with known parameters (attractors): the model's codes of the validation
        images, fitted on the first ``train.probe_samples`` training images; nothing for a model that
        does not encode."""
        train, val = self.datasets["train"], self.datasets.get("val")
        train = unaugmented(train)  # the latent probe reads the images as stored
        n = min(self.cfg.train.probe_samples, len(train))
        m = self.unwrapped
        if n < 4 or val is None or len(val) < 2 or "params" not in val[0] or not m.encodes:
            return {}
        with self.accelerator.autocast():
            cf, pf = encode_dataset(m, train, list(range(n)))
            cv, pv = encode_dataset(m, val, list(range(len(val))))
        r = latent_probe(cf, pf, cv, pv)
        return {"val/probe_r2_linear": r["linear"], "val/probe_r2_kernel": r["kernel"]}

    def extra_images(self, epoch: int) -> list[Path]:
        """More pictures of the epoch beside the sample grid (reconstructions, for models that encode)."""
        return []

    def save_images(self, epoch: int) -> list[Path]:
        paths = [save_grid(self.samples(GRID), self.run.images / f"samples_epoch{epoch + 1:03d}.png",
                           title=f"samples, epoch {epoch + 1}")]
        return paths + self.extra_images(epoch)

    def extra_plots(self, records: list[dict]) -> None:
        try:
            plot_generative(records, self.run.plots / "generative.png")
        except (OSError, ValueError) as exc:  # a plot must never stop training
            log.warning("plots/generative.png not written (%s)", exc)
