"""The reconstruction trainer (``autoencoder`` and ``vae``; the base of the AAE's): the engine's step on the
model's own loss (:meth:`~sandbox.models.autoencoders.AutoEncoder.loss`) with the registry loss.

Training loss: the reconstruction loss from the loss registry (``loss: {image: {l1: 0.16,
ms_ssim: 0.84}}``, parts logged as ``train/loss/image/<name>``), plus for the VAE
``beta * w(t) * KL / (C*H*W)`` with the KL in nats per image (``train/loss/vae/kl``) and
``w(t)`` rising linearly from 0 to 1 over ``train.kl_warmup_frac`` of the steps
(``train/kl_weight``, Bowman et al. 2016).

Validation (``evaluate``): reconstruction ``mse``, ``psnr`` (dB, data range 1) and ``ssim``
per image; ``loss`` (reconstruction + the full-weight KL term); ``fid_own`` and
``diversity`` of ``train.fid_samples`` samples against the validation images
(:mod:`sandbox.metrics.generative`); for the VAE the ELBO in nats per image and bits per dimension under a
Gaussian decoder whose variance is calibrated on the split (sigma² = mean squared error,
Rybkin et al. 2021), with a sampled code, bits on the 8-bit scale (``+ log2 256``); on
``attractors`` the latent probe R² (linear and kernel) of validation codes.

Images each epoch: ``images/recon_epochNNN.png`` (fixed validation images over their
reconstructions) and ``images/samples_epochNNN.png`` (fixed noise); ``plots/generative.png``.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch


from sandbox.data.loader import collate
from sandbox.losses import CompositeLoss
from sandbox.metrics import regression_metrics
from sandbox.metrics.generative import own_features
from sandbox.engine.trainer import Trainer
from sandbox.trainers.sampling import BETA1, generative_plot, probe, sample_grid, sample_metrics
from sandbox.viz.grids import save_grid


class ReconstructionTrainer(Trainer):
    """Models that encode and decode (``ae``, ``vae``; ``aae`` adds its adversarial phases): one optimizer,
    the engine's step (``model.loss``: forward, the registry loss, the VAE's KL at its warm-up weight; EMA)."""

    kind = "generative"
    beta1_default = BETA1

    def __init__(self, cfg, model, datasets, loss: CompositeLoss):
        super().__init__(cfg, model, datasets, loss)
        n = max(8, min(cfg.train.num_images, 16))
        val = datasets.get("val")
        self.fixed_val = collate([val[i] for i in range(min(n, len(val)))])["image"] if val is not None and len(val) else None

    def configure_optimizers(self):
        return [self.make_optimizer(self.model.parameters())]

    # ------------------------------------------------------------------ evaluation
    def per_image(self, batch: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image validation values of one batch (``(B,)`` each); the model is in eval mode."""
        x = batch["image"]
        m = self.unwrapped
        out = self.model(self.to_input(x))
        recon = out["image"].float()
        total, parts = self.loss_fn({"image": recon}, {"image": batch["image"]})
        parts = {f"loss/{k}": v for k, v in parts.items()}
        n = x.shape[0]
        reg = regression_metrics(recon, x)
        mse = reg["rmse"].square()
        values = {"mse": mse, "psnr": -10 * torch.log10(mse.clamp_min(1e-10)), "ssim": reg["ssim"],
                  **{k: v.float().expand(n) for k, v in parts.items()}}

        def eps(like: torch.Tensor) -> torch.Tensor:
            return self.shard_draw(lambda k: torch.randn((k, *like.shape[1:]), generator=g), n).to(x.device)

        with self.accelerator.autocast():
            term, extra = m.validation_terms(out, x, eps, self.cfg.train.beta)
        values.update(extra)
        total = total + term
        values["loss"] = total.float().expand(n) if total.ndim == 0 else total.float()
        return values

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        acc, t = self.accelerator, self.cfg.train
        self.model.eval()
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        per: dict[str, list[torch.Tensor]] = defaultdict(list)
        real = []
        for batch in loader:
            batch = self.fit_batch(batch)
            values = self.per_image(batch, g)
            values["features"] = own_features(batch["image"])
            gathered = acc.gather_for_metrics({k: v.contiguous() for k, v in values.items()})
            real.append(gathered.pop("features"))
            for k, v in gathered.items():
                per[k].append(v)
        self.model.train()
        res = {k: torch.cat(v).float() for k, v in per.items()}
        out = {f"val/{k}": float(v.mean()) for k, v in res.items() if k not in ("sse_sampled",)}
        out.update(self.unwrapped.validation_summary(res))
        if t.fid_samples and real:
            out.update(sample_metrics(self, torch.cat(real)))
        out.update(probe(self))
        return out

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def reconstructions(self) -> torch.Tensor | None:
        if self.fixed_val is None:
            return None
        m = self.unwrapped
        was = m.training
        m.eval()
        x = self.fixed_val.to(self.accelerator.device)
        with self.accelerator.autocast():
            recon = m(self.to_input(x))["image"].float()
        m.train(was)
        return torch.cat([x.float(), recon])  # first row: inputs, second: reconstructions

    def save_images(self, epoch: int) -> list[Path]:
        """The sample grid and ``images/recon_epochNNN.png`` (fixed validation images over their reconstructions)."""
        paths = [sample_grid(self, epoch)]
        rec = self.reconstructions()
        if rec is None:
            return paths
        return paths + [save_grid(rec, self.run.images / f"recon_epoch{epoch + 1:03d}.png", nrow=len(rec) // 2,
                                  title=f"validation, epoch {epoch + 1}", row_labels=("inputs", "reconstructions"))]

    def extra_plots(self, records: list[dict]) -> None:
        generative_plot(self, records)
