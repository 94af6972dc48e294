"""The reconstruction trainer (``autoencoder`` and ``vae``; the base of the AAE's): the model's own
objective (:meth:`~sandbox.models.autoencoders.AutoEncoder.objective`) on the registry loss.

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

from sandbox.nn.ema import update_ema

from sandbox.data.loader import collate
from sandbox.losses import CompositeLoss
from sandbox.metrics import regression_metrics
from sandbox.metrics.generative import own_features
from sandbox.trainers.sampling import SamplingTrainer
from sandbox.viz.grids import save_grid


class ReconstructionTrainer(SamplingTrainer):
    """Models that encode and decode (``ae``, ``vae``; ``aae`` adds its adversarial phases)."""

    def __init__(self, cfg, model, datasets, loss: CompositeLoss):
        self.loss_fn = loss
        super().__init__(cfg, model, datasets)
        n = max(8, min(cfg.train.num_images, 16))
        val = datasets.get("val")
        self.fixed_val = collate([val[i] for i in range(min(n, len(val)))])["image"] if val is not None and len(val) else None

    def configure_optimizers(self):
        return [self.optimizer_for(self.model.parameters())]

    # ------------------------------------------------------------------ training
    def kl_weight(self) -> float:
        """The regulariser's weight at this step (the VAE's KL): ``beta * min(1, step / (kl_warmup_frac *
        total_steps))``; models without a regulariser ignore it."""
        t = self.cfg.train
        warm = t.kl_warmup_frac * self.total_steps
        return t.beta * (min(1.0, self.state["step"] / warm) if warm > 0 else 1.0)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Gaussian noise shaped like ``like``: this process's slice of the global batch's draw."""
        return self.shard_draw(lambda n: torch.randn((n, *like.shape[1:]), dtype=like.dtype, device=like.device),
                               like.shape[0])

    def reconstruction(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        """The registry loss on ``image`` alone: ``(total, {"loss/image/<name>": value})``."""
        total, parts = self.loss_fn({"image": out["image"]}, {"image": batch["image"]})
        return total, {f"loss/{k}": v for k, v in parts.items()}

    def reconstruction_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Forward, the model's objective, backward and step of optimizer 0: ``(total, parts)``."""
        m = self.unwrapped
        out = self.model(self.to_input(batch["image"]), **m.train_inputs(self.noise))
        total, scalars = m.objective(out, batch, self.loss_fn, self.kl_weight())
        if self.backward_and_step(total, parts=scalars) and self.accelerator.sync_gradients:
            update_ema(m)
        return total.detach(), scalars

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        total, scalars = self.reconstruction_step(batch)
        return {"loss": total, **scalars}

    # ------------------------------------------------------------------ evaluation
    def per_image(self, batch: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image validation values of one batch (``(B,)`` each); the model is in eval mode."""
        x = batch["image"]
        m = self.unwrapped
        out = self.model(self.to_input(x))
        recon = out["image"].float()
        total, parts = self.reconstruction({"image": recon}, batch)
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
            out.update(self.sample_metrics(torch.cat(real)))
        out.update(self.probe())
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

    def extra_images(self, epoch: int) -> list[Path]:
        rec = self.reconstructions()
        if rec is None:
            return []
        return [save_grid(rec, self.run.images / f"recon_epoch{epoch + 1:03d}.png", nrow=len(rec) // 2,
                          title=f"validation, epoch {epoch + 1}", row_labels=("inputs", "reconstructions"))]
