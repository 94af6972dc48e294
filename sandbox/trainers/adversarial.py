"""GAN and AAE trainers: several optimizers stepped inside the one skeleton loop.

``gan`` (DCGAN, non-saturating loss, Goodfellow et al. 2014): per batch, the discriminator
step on real images vs detached ``G(z)`` (optimizer 1), then every ``train.n_critic``-th
batch the generator step with the discriminator frozen (optimizer 0). Logged: the loss
parts ``train/loss/gan/{d,g}`` and the mean probabilities ``train/d_real`` = D(x) and
``train/d_fake`` = D(G(z)) (taken before the discriminator's step); with ``model.r1`` the R1 penalty
``train/loss/gan/r1`` (E ||grad D(x)||^2, unweighted, on the steps that compute it); with ``train.param_mse`` the
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

from pathlib import Path

import torch

from sandbox.data.transforms import unaugmented
from sandbox.engine.trainer import Trainer
from sandbox.metrics.generative import own_features
from sandbox.nn.ema import update_ema
from sandbox.trainers.reconstruction import ReconstructionTrainer
from sandbox.trainers.sampling import generative_plot, probe, sample_grid, sample_metrics

BETA1 = 0.5  # Adam's beta1 of both adversarial trainers (Radford et al. 2016) unless train.beta1


class GANTrainer(Trainer):
    """DCGAN: optimizer 0 = generator, optimizer 1 = discriminator (``train.d_lr``), 2 = the inverter
    (``model.invert``, ``train.lr``). Its objective is the adversarial game (the model's ``d_loss`` /
    ``g_loss`` / ``invert_loss``), plus ``train.param_mse * MSE(G(v, z), x_v)`` on data with known parameters:
    it takes no ``loss`` section."""

    kind = "gan"
    beta1_default = BETA1
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
        opts = [self.make_optimizer(m.generator.parameters()),
                self.make_optimizer(m.discriminator.parameters(), self.cfg.train.d_lr)]
        return opts + ([self.make_optimizer(m.inverter.parameters())] if m.encodes else [])

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """The order of updates: D on real vs detached G(u), then (every ``n_critic``-th step) G with D
        frozen, then the inverter on the same samples."""
        m, acc, t = self.unwrapped, self.accelerator, self.cfg.train
        x = self.to_input(batch["image"])
        u = m.generator_input(batch, self.shard_draw, x.device)
        with acc.autocast():
            fake = m.decode(u)
            d_loss, out = m.d_loss(x, self.to_input(fake), t.label_smoothing, self.state.step)
        self.backward_and_step(d_loss, index=1, model=m.discriminator, parts=out)
        total = d_loss.detach()
        if self.state.step % t.n_critic == 0:
            m.discriminator.requires_grad_(False)  # the generator's step leaves D's gradients alone
            try:
                with acc.autocast():
                    g_loss, parts = m.g_loss(self.to_input(fake), x, t.param_mse)
                if self.backward_and_step(g_loss, index=0, model=m.generator, parts=parts) and acc.sync_gradients:
                    update_ema(m)
            finally:
                m.discriminator.requires_grad_(True)
            out.update({k: v.detach() for k, v in parts.items()})
            total = total + g_loss.detach()
        if m.encodes:
            out.update(self.invert_step(fake, u))
            total = total + out["loss/invert"]
        return {"loss": total, **out}

    def invert_step(self, fake: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inverter's update on this batch's detached samples ``fake = G(u)`` (optimizer 2)."""
        m = self.unwrapped
        with self.accelerator.autocast():
            loss, parts = m.invert_loss(self.to_input(fake), u)
        self.backward_and_step(loss, index=2, model=m.inverter, parts=parts)
        return parts

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """``val/fid_own`` and ``val/diversity`` of fixed-noise samples against the validation images."""
        feats = []
        for batch in loader:
            f = own_features(self.fit_batch(batch)["image"])
            feats.append(self.accelerator.gather_for_metrics(f.contiguous()))
        out = sample_metrics(self, torch.cat(feats)) if feats and self.cfg.train.fid_samples else {}
        return {**out, **probe(self)}

    def save_images(self, epoch: int) -> list[Path]:
        return [sample_grid(self, epoch)]

    def extra_plots(self, records: list[dict]) -> None:
        generative_plot(self, records)


class AAETrainer(ReconstructionTrainer):
    """AAE: optimizer 0 = encoder + decoder (``train.lr``), 1 = latent discriminator and 2 = encoder
    in the regularisation phase (both ``train.d_lr``, default ``train.lr / 10``). The order of updates:
    the reconstruction (the engine's step on ``model.loss``), then the discriminator, then the encoder."""

    kind = "aae"
    beta1_default = BETA1
    ddp = False

    def configure_optimizers(self):
        m, t = self.model, self.cfg.train
        reg_lr = t.d_lr if t.d_lr is not None else t.lr / 10
        return [self.make_optimizer(m.autoencoder_parameters),
                self.make_optimizer(m.discriminator.parameters(), reg_lr),
                self.make_optimizer(m.encoder.parameters(), reg_lr)]

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        scalars = self.reconstruction_step(batch)
        scalars.update(self.disc_phase(batch["image"]))
        scalars.update(self.gen_phase(batch["image"]))
        return scalars

    def reconstruction_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """(1) the reconstruction phase: the engine's one update of optimizer 0 on the model's loss."""
        return Trainer.train_step(self, batch)

    def disc_phase(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(2) the latent discriminator: prior samples vs the detached codes of ``x`` (optimizer 1)."""
        m = self.unwrapped
        with self.accelerator.autocast():
            loss, out = m.d_loss(self.to_input(x), self.shard_draw, self.cfg.train.label_smoothing)
        self.backward_and_step(loss, index=1, model=m.discriminator, parts=out)
        return out

    def gen_phase(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(3) the encoder alone, to make its codes of ``x`` pass as prior samples (optimizer 2)."""
        m = self.unwrapped
        m.discriminator.requires_grad_(False)  # only the encoder learns to fool it
        try:
            with self.accelerator.autocast():
                loss, parts = m.g_loss(self.to_input(x))
            self.backward_and_step(loss, index=2, model=m.encoder, parts=parts)
        finally:
            m.discriminator.requires_grad_(True)
        return {k: v.detach() for k, v in parts.items()}

    def per_image(self, batch: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        values = super().per_image(batch, g)
        m, x = self.unwrapped, batch["image"]
        prior = self.shard_draw(lambda n: m.prior(n, g), x.shape[0])
        with self.accelerator.autocast():
            values.update(m.code_probabilities(self.to_input(x), prior))
        return values
