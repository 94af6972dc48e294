"""GAN and AAE trainers: several optimizers stepped inside the one skeleton loop.

``gan`` (DCGAN, non-saturating loss, Goodfellow et al. 2014): per batch, the discriminator
step on real images vs detached ``G(z)`` (optimizer 1), then every ``train.n_critic``-th
batch the generator step with the discriminator frozen (optimizer 0). Logged: the loss
parts ``train/loss/gan/{d,g}`` and the mean probabilities ``train/d_real`` = D(x) and
``train/d_fake`` = D(G(z)) (taken before the discriminator's step): a discriminator that
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
import torch.nn.functional as F

from sandbox.trainers import TRAINERS
from sandbox.trainers.generative import GenerativeTrainer


def bce_logits(logits: torch.Tensor, real: bool, smoothing: float = 0.0) -> torch.Tensor:
    """Mean BCE of ``(B, 1)`` logits against all-real (``1 - smoothing``) or all-fake (0) labels, float32,
    autocast off. Smoothing applies to real labels only (one-sided, Salimans et al. 2016): a
    discriminator asked for 0.9 on real images stops pushing its logits towards infinity."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 - smoothing if real else 0.0))


def _prob(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.detach().float()).mean()


class GANTrainer(GenerativeTrainer):
    """DCGAN: optimizer 0 = generator, optimizer 1 = discriminator (``train.d_lr``)."""

    kind = "gan"
    beta1_default = 0.5
    ddp = False

    def configure_optimizers(self):
        m = self.model
        return [self.optimizer_for(m.generator.parameters()),
                self.optimizer_for(m.discriminator.parameters(), self.cfg.train.d_lr)]

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        m, acc = self.unwrapped, self.accelerator
        x = self.to_input(batch["image"])
        z = self.shard_draw(lambda n: torch.randn(n, m.latent_dim, device=x.device), x.shape[0])
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
                with acc.autocast():
                    g_loss = bce_logits(m.discriminator(self.to_input(fake)), True)
                if self.backward_and_step(g_loss, index=0, model=m.generator, parts={"loss/gan/g": g_loss}) \
                        and acc.sync_gradients:
                    m.update_ema()
            finally:
                m.discriminator.requires_grad_(True)
            out["loss/gan/g"] = g_loss.detach()
            total = total + g_loss.detach()
        return {"loss": total, **out}

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """``val/fid_own`` and ``val/diversity`` of fixed-noise samples against the validation images."""
        from sandbox.probe import frechet_distance, mean_pairwise_distance, own_features

        feats = []
        for batch in loader:
            f = own_features(self.fit_batch(batch)["image"])
            feats.append(self.accelerator.gather_for_metrics(f.contiguous()))
        if not feats or not self.cfg.train.fid_samples:
            return {}
        real, fake = torch.cat(feats), own_features(self.samples(self.cfg.train.fid_samples))
        return {"val/fid_own": frechet_distance(real, fake),
                "val/diversity": mean_pairwise_distance(fake) / max(mean_pairwise_distance(real), 1e-12)}


class AAETrainer(GenerativeTrainer):
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

    def recon_phase(self, batch: dict) -> tuple[torch.Tensor, dict]:
        out = self.model(self.to_input(batch["image"]))
        total, scalars = self.reconstruction(out, batch)
        if self.backward_and_step(total, index=0, model=self.unwrapped, parts=scalars) and self.accelerator.sync_gradients:
            self.unwrapped.update_ema()
        return total.detach(), scalars

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
        total, scalars = self.recon_phase(batch)
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


TRAINERS.register("gan")(GANTrainer)
TRAINERS.register("aae")(AAETrainer)


def plot_generative(metrics: Path, out: Path) -> Path | None:
    """``plots/generative.png``: discriminator means and KL by step; fid_own, diversity and probe R² by epoch."""
    from sandbox.tracking import read_metrics
    from sandbox.viz import plt

    records = read_metrics(metrics)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    panels = [("train", ["train/d_real", "train/d_fake", "train/d_prior", "train/d_code"], "D means (by step)"),
              ("train", ["train/loss/vae/kl"], "KL, nats per image (by step)"),
              ("val", ["val/fid_own"], "fid_own (by epoch; not Inception FID)"),
              ("val", ["val/diversity", "val/probe_r2_linear", "val/probe_r2_kernel", "val/ssim"],
               "diversity, probe R², SSIM (by epoch)")]
    panels = [(s, [k for k in keys if any(k in r for r in (train if s == "train" else val))], title)
              for s, keys, title in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (split, keys, title) in zip(axes[0], panels):
        rows = train if split == "train" else val
        for k in keys:
            pts = [(r["step"] if split == "train" else r["epoch"] + 1, r[k]) for r in rows
                   if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot(*zip(*pts), "-" if split == "train" else "o-", label=k.split("/", 1)[1])
        ax.set(title=title, xlabel="optimizer step" if split == "train" else "epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
