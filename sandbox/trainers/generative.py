"""Autoencoder and VAE trainer on the shared skeleton; the base of the GAN and AAE trainers.

Training loss: the reconstruction loss from the loss registry (``loss: {image: {l1: 0.16,
ms_ssim: 0.84}}``, parts logged as ``train/loss/image/<name>``), plus for the VAE
``beta * w(t) * KL / (C*H*W)`` with the KL in nats per image (``train/loss/vae/kl``) and
``w(t)`` rising linearly from 0 to 1 over ``train.kl_warmup_frac`` of the steps
(``train/kl_weight``, Bowman et al. 2016).

Validation (``evaluate``): reconstruction ``mse``, ``psnr`` (dB, data range 1) and ``ssim``
per image; ``loss`` (reconstruction + the full-weight KL term); ``fid_own`` and
``diversity`` of ``train.fid_samples`` samples against the validation images
(:mod:`sandbox.probe`); for the VAE the ELBO in nats per image and bits per dimension under a
Gaussian decoder whose variance is calibrated on the split (sigma² = mean squared error,
Rybkin et al. 2021), with a sampled code, bits on the 8-bit scale (``+ log2 256``); on
``attractors`` the latent probe R² (linear and kernel) of validation codes.

Images each epoch: ``images/recon_epochNNN.png`` (fixed validation images over their
reconstructions) and ``images/samples_epochNNN.png`` (fixed noise); ``plots/generative.png``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sandbox.data.transforms import unaugmented
from sandbox.losses import CompositeLoss
from sandbox.metrics import regression_metrics
from sandbox.models.autoencoders import VAE
from sandbox.probe import encode_dataset, frechet_distance, latent_probe, mean_pairwise_distance, own_features
from sandbox.trainers import TRAINERS
from sandbox.trainers.base import Trainer, collate

GRID = 64  # images in a sample grid (8 x 8)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, scale: int = 2, pad: int = 2) -> Path:
    """``(N, C, H, W)`` in [0, 1] -> one PNG of ``nrow`` images per row (nearest upscaling ``scale``)."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=pad, pad_value=1.0)
    arr = (grid.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    im = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


class GenerativeTrainer(Trainer):
    """``ae`` and ``vae`` (registered as the ``autoencoder`` and ``vae`` trainers)."""

    kind = "generative"
    beta1_default = 0.9

    def __init__(self, cfg, model, datasets, loss: CompositeLoss):
        self.loss_fn = loss
        super().__init__(cfg, model, datasets)
        m = self.unwrapped
        self.is_vae = isinstance(m, VAE)
        self.dims = m.in_channels * m.size * m.size
        n = max(8, min(cfg.train.num_images, 16))
        val = datasets.get("val")
        self.fixed_val = collate([val[i] for i in range(min(n, len(val)))])["image"] if val is not None and len(val) else None

    # ------------------------------------------------------------------ optimizers
    def set_beta1(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        beta1 = self.cfg.train.beta1 if self.cfg.train.beta1 is not None else self.beta1_default
        for group in opt.param_groups:
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])
        return opt

    def optimizer_for(self, params, lr: float | None = None):
        opt, sched = self.make_optimizer([p for p in params if p.requires_grad], lr)
        return self.set_beta1(opt), sched

    def configure_optimizers(self):
        return [self.optimizer_for(self.model.parameters())]

    # ------------------------------------------------------------------ training
    def kl_weight(self) -> float:
        """``beta * min(1, step / (kl_warmup_frac * total_steps))``."""
        t = self.cfg.train
        warm = t.kl_warmup_frac * self.total_steps
        return t.beta * (min(1.0, self.state["step"] / warm) if warm > 0 else 1.0)

    def reconstruction(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        total, parts = self.loss_fn({"image": out["image"]}, {"image": batch["image"]})
        return total, {f"loss/{k}": v for k, v in parts.items()}

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.is_vae:  # each process its own slice of the global batch's noise
            out = self.model(self.to_input(x), noise=lambda mu: self.shard_draw(
                lambda n: torch.randn((n, *mu.shape[1:]), dtype=mu.dtype, device=mu.device), mu.shape[0]))
        else:
            out = self.model(self.to_input(x))
        total, scalars = self.reconstruction(out, batch)
        if self.is_vae:
            kl = VAE.kl(out["mu"], out["logvar"]).mean()
            weight = self.kl_weight()
            total = total + weight * kl / self.dims
            scalars.update({"loss/vae/kl": kl.detach(), "kl_weight": torch.tensor(weight, device=kl.device)})
        if self.backward_and_step(total, parts=scalars) and self.accelerator.sync_gradients:
            self.unwrapped.update_ema()
        return {"loss": total.detach(), **scalars}

    # ------------------------------------------------------------------ evaluation
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

    def per_image(self, batch: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image validation values of one batch (``(B,)`` each); the model is in eval mode."""
        x = batch["image"]
        out = self.model(self.to_input(x))
        recon = out["image"].float()
        total, parts = self.reconstruction({"image": recon}, batch)
        n = x.shape[0]
        reg = regression_metrics(recon, x)
        mse = reg["rmse"].square()
        values = {"mse": mse, "psnr": -10 * torch.log10(mse.clamp_min(1e-10)), "ssim": reg["ssim"],
                  **{k: v.float().expand(n) for k, v in parts.items()}}
        if self.is_vae:
            kl = VAE.kl(out["mu"], out["logvar"])
            mu = out["mu"]
            eps = self.shard_draw(lambda k: torch.randn((k, *mu.shape[1:]), generator=g), n).to(x.device)
            with self.accelerator.autocast():
                sampled = self.unwrapped.decode(out["mu"] + torch.exp(0.5 * out["logvar"]) * eps).float()
            values.update({"kl": kl, "sse_sampled": (sampled - x.float()).square().flatten(1).sum(1)})
            total = total + self.cfg.train.beta * kl / self.dims
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
        if self.is_vae:
            sigma2 = float(res["mse"].mean()) if "mse" in res else 1.0
            nll = 0.5 * self.dims * math.log(2 * math.pi * max(sigma2, 1e-10)) + res["sse_sampled"] / (2 * sigma2)
            elbo = -(nll + res["kl"])
            out.update({"val/elbo": float(elbo.mean()), "val/bpd": float(-elbo.mean() / (self.dims * math.log(2)) + 8),
                        "val/sigma": math.sqrt(sigma2)})
        if t.fid_samples and real:
            feats_real = torch.cat(real)
            feats_fake = own_features(self.samples(t.fid_samples))
            out["val/fid_own"] = frechet_distance(feats_real, feats_fake)
            out["val/diversity"] = mean_pairwise_distance(feats_fake) / max(mean_pairwise_distance(feats_real), 1e-12)
        out.update(self.probe())
        return out

    def probe(self) -> dict[str, float]:
        """Latent probe R² on attractors (val codes, fitted on the first ``train.probe_samples`` training images)."""
        train, val = self.datasets["train"], self.datasets.get("val")
        train = unaugmented(train)  # the latent probe reads the images as stored
        n = min(self.cfg.train.probe_samples, len(train))
        if n < 4 or val is None or len(val) < 2 or "params" not in val[0] or not hasattr(self.unwrapped, "encoder"):
            return {}
        m = self.unwrapped
        with self.accelerator.autocast():
            cf, pf = encode_dataset(m, train, list(range(n)))
            cv, pv = encode_dataset(m, val, list(range(len(val))))
        r = latent_probe(cf, pf, cv, pv)
        return {"val/probe_r2_linear": r["linear"], "val/probe_r2_kernel": r["kernel"]}

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def reconstructions(self) -> torch.Tensor | None:
        if self.fixed_val is None or not hasattr(self.unwrapped, "encoder"):
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
        paths = [save_grid(self.samples(GRID), self.run.images / f"samples_epoch{epoch + 1:03d}.png")]
        rec = self.reconstructions()
        if rec is not None:
            paths.append(save_grid(rec, self.run.images / f"recon_epoch{epoch + 1:03d}.png", nrow=len(rec) // 2))
        try:
            from sandbox.trainers.adversarial import plot_generative

            plot_generative(self.run.metrics, self.run.plots / "generative.png")
        except (OSError, ValueError) as exc:  # a plot must never stop training
            import logging

            logging.getLogger("sandbox").warning("plots/generative.png not written (%s)", exc)
        return paths


TRAINERS.register("autoencoder")(GenerativeTrainer)
TRAINERS.register("vae")(GenerativeTrainer)
