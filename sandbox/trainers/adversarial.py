"""GAN and AAE trainers: several optimizers stepped inside the one skeleton loop.

``gan`` (DCGAN, non-saturating loss, Goodfellow et al. 2014): per batch, the discriminator
step on real images vs detached ``G(z)`` (optimizer 1), then every ``train.n_critic``-th
batch the generator step with the discriminator frozen (optimizer 0). Logged: the loss
parts ``train/loss/gan/{d,g}`` and the mean probabilities ``train/d_real`` = D(x) and
``train/d_fake`` = D(G(z)) (taken before the discriminator's step); with ``train.param_mse`` the
generator's MSE to the real images of its parameters (``train/loss/gan/param_mse``), with ``model.invert``
the inverter's MSE (``train/loss/invert``) and the latent probe of its codes (``val/probe_r2_*``): a discriminator that
wins outright (D(x) -> 1, D(G(z)) -> 0) or a collapse (``val/diversity`` falling) shows in
``plots/generative.png``.

``aae`` (Makhzani et al. 2015), per batch: (1) reconstruction phase: encoder + decoder on
the registry loss (optimizer 0); (2) regularisation phase: the latent discriminator on
prior samples (real) vs detached codes (fake) (optimizer 1), then the encoder alone to make
its codes pass as prior samples (optimizer 2). Both regularisation optimizers run at
``train.d_lr``, by default a tenth of ``train.lr``: with the encoder's adversarial step at the
full rate (measured on attractors, lr 3e-3, study 5) the prior matching overrode reconstruction
(PSNR 13.5 dB, probe kernel R² 0.325, against 17.0 dB and 0.762 at lr / 10). ``train/d_prior`` and ``train/d_code`` are the
discriminator's mean probabilities.

Discriminator losses are ``binary_cross_entropy_with_logits`` in float32 (AMP-safe), with
optional one-sided label smoothing (``train.label_smoothing``) on the discriminator's real
targets; the generator/encoder always aims at 1. Adam's
beta1 defaults to 0.5 here (Radford et al. 2016; ``train.beta1``).

Several processes: the sub-modules are called outside the model's forward, so these trainers
have no DDP wrapper (``Trainer.ddp = False``): the skeleton averages each optimizer's gradients
across processes before it steps. The noise (``z``, prior samples) is drawn for the global batch
and sliced per process (``Trainer.shard_draw``): P processes x batch B train as one x P*B.
"""
from __future__ import annotations

import torch

from sandbox.nn.ema import update_ema
import torch.nn.functional as F

from sandbox.data.transforms import unaugmented
from sandbox.metrics.generative import own_features
from sandbox.trainers.reconstruction import ReconstructionTrainer
from sandbox.trainers.sampling import SamplingTrainer


def bce_logits(logits: torch.Tensor, real: bool, smoothing: float = 0.0) -> torch.Tensor:
    """Mean BCE of ``(B, 1)`` logits against all-real (``1 - smoothing``) or all-fake (0) labels, float32,
    autocast off. Smoothing applies to real labels only (one-sided, Salimans et al. 2016): a
    discriminator asked for 0.9 on real images stops pushing its logits towards infinity."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 - smoothing if real else 0.0))


def _prob(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.detach().float()).mean()


class GANTrainer(SamplingTrainer):
    """DCGAN: optimizer 0 = generator, optimizer 1 = discriminator (``train.d_lr``), 2 = the inverter
    (``model.invert``, ``train.lr``). Its objective is the adversarial game, plus ``train.param_mse *
    MSE(G(v, z), x_v)`` on data with known parameters: it takes no ``loss`` section."""

    kind = "gan"
    beta1_default = 0.5
    ddp = False

    def __init__(self, cfg, model, datasets, loss=None):
        if model.cond_dim:  # standardise v by the training split's parameters (a resumed run loads the same)
            train = unaugmented(datasets["train"])
            params = torch.stack([train[i]["params"] for i in range(len(train))]).float()
            model.param_mean.copy_(params.mean(0))
            model.param_std.copy_(params.std(0).clamp_min(1e-8) if len(params) > 1 else torch.ones(model.cond_dim))
        super().__init__(cfg, model, datasets)

    def configure_optimizers(self):
        m = self.model
        opts = [self.optimizer_for(m.generator.parameters()),
                self.optimizer_for(m.discriminator.parameters(), self.cfg.train.d_lr)]
        return opts + ([self.optimizer_for(m.inverter.parameters())] if m.encodes else [])

    def invert_step(self, fake: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inverter's step: ``MSE(E(G(u)), u)`` on this batch's detached samples; logged as
        ``loss/invert`` and, with parameters, split into ``loss/invert/params`` (v) and ``loss/invert/noise`` (z)."""
        m = self.unwrapped
        with self.accelerator.autocast():
            err = (m.inverter(self.to_input(fake.detach())).float() - u.float()).square()
        loss = err.mean()
        out = {"loss/invert": loss.detach()}
        if m.cond_dim:
            out["loss/invert/params"] = err[:, :m.cond_dim].mean().detach()
            out["loss/invert/noise"] = err[:, m.cond_dim:].mean().detach()
        self.backward_and_step(loss, index=2, model=m.inverter, parts=out)
        return out

    def generator_loss(self, fake: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Non-saturating ``-log D(G(u))``, plus ``train.param_mse * MSE(G(v, z), x_v)`` when G takes the
        parameters (``loss/gan/param_mse``: the MSE unweighted)."""
        m = self.unwrapped
        with self.accelerator.autocast():
            loss = bce_logits(m.discriminator(self.to_input(fake)), True)
        parts = {"loss/gan/g": loss}
        if m.cond_dim:
            mse = F.mse_loss(fake.float(), x.float())
            parts["loss/gan/param_mse"] = mse
            loss = loss + self.cfg.train.param_mse * mse
        return loss, parts

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        m, acc = self.unwrapped, self.accelerator
        x = self.to_input(batch["image"])
        z = self.shard_draw(lambda n: torch.randn(n, m.latent_dim, device=x.device), x.shape[0])
        if m.cond_dim:  # the generator's input u = (v, z): v the real images' own parameters
            z = torch.cat([m.standardise(batch["params"].to(x.device)), z], dim=1)
        with acc.autocast():
            fake = m.decode(z)
            d_real, d_fake = m.discriminator(x), m.discriminator(self.to_input(fake.detach()))
        d_loss = bce_logits(d_real, True, self.cfg.train.label_smoothing) + bce_logits(d_fake, False)
        out = {"loss/gan/d": d_loss.detach(), "d_real": _prob(d_real), "d_fake": _prob(d_fake)}
        self.backward_and_step(d_loss, index=1, model=m.discriminator, parts=out)
        total = d_loss.detach()
        if self.state["step"] % self.cfg.train.n_critic == 0:
            m.discriminator.requires_grad_(False)  # the generator's step leaves D's gradients alone
            try:
                g_loss, parts = self.generator_loss(fake, x)
                if self.backward_and_step(g_loss, index=0, model=m.generator, parts=parts) and acc.sync_gradients:
                    update_ema(m)
            finally:
                m.discriminator.requires_grad_(True)
            out.update({k: v.detach() for k, v in parts.items()})
            total = total + g_loss.detach()
        if m.encodes:
            out.update(self.invert_step(fake, z))
            total = total + out["loss/invert"]
        return {"loss": total, **out}

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """``val/fid_own`` and ``val/diversity`` of fixed-noise samples against the validation images."""
        feats = []
        for batch in loader:
            f = own_features(self.fit_batch(batch)["image"])
            feats.append(self.accelerator.gather_for_metrics(f.contiguous()))
        out = self.sample_metrics(torch.cat(feats)) if feats and self.cfg.train.fid_samples else {}
        return {**out, **self.probe()}


class AAETrainer(ReconstructionTrainer):
    """AAE: optimizer 0 = encoder + decoder (``train.lr``), 1 = latent discriminator and 2 = encoder
    in the regularisation phase (both ``train.d_lr``, default ``train.lr / 10``)."""

    kind = "aae"
    beta1_default = 0.5
    ddp = False

    def configure_optimizers(self):
        m, t = self.model, self.cfg.train
        reg_lr = t.d_lr if t.d_lr is not None else t.lr / 10
        return [self.optimizer_for(m.autoencoder_parameters),
                self.optimizer_for(m.discriminator.parameters(), reg_lr),
                self.optimizer_for(m.encoder.parameters(), reg_lr)]

    def disc_phase(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m, acc = self.unwrapped, self.accelerator
        with torch.no_grad(), acc.autocast():
            codes = m.encode(self.to_input(x))
        with acc.autocast():
            d_prior, d_code = m.discriminator(self.shard_draw(m.prior, x.shape[0])), m.discriminator(codes.float())
        loss = bce_logits(d_prior, True, self.cfg.train.label_smoothing) + bce_logits(d_code, False)
        out = {"loss/aae/d": loss.detach(), "d_prior": _prob(d_prior), "d_code": _prob(d_code)}
        self.backward_and_step(loss, index=1, model=m.discriminator, parts=out)
        return out

    def gen_phase(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m, acc = self.unwrapped, self.accelerator
        m.discriminator.requires_grad_(False)  # only the encoder learns to fool it
        try:
            with acc.autocast():
                loss = bce_logits(m.discriminator(m.encode(self.to_input(x))), True)
            self.backward_and_step(loss, index=2, model=m.encoder, parts={"loss/aae/g": loss})
        finally:
            m.discriminator.requires_grad_(True)
        return {"loss/aae/g": loss.detach()}

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        total, scalars = self.reconstruction_step(batch)  # (1) the reconstruction phase
        scalars.update(self.disc_phase(batch["image"]))
        scalars.update(self.gen_phase(batch["image"]))
        return {"loss": total, **scalars}

    def per_image(self, batch: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        values = super().per_image(batch, g)
        m = self.unwrapped
        x = batch["image"]
        with self.accelerator.autocast():
            values["d_code"] = torch.sigmoid(m.discriminator(m.encode(self.to_input(x))).float()).squeeze(1)
            prior = self.shard_draw(lambda n: m.prior(n, g), x.shape[0])
            values["d_prior"] = torch.sigmoid(m.discriminator(prior).float()).squeeze(1)
        return values

