"""Adversarial models on the shared core: ``dcgan`` and ``aae``.

DCGAN (Radford et al. 2016)::

    generator      z (B, latent_dim) ──Linear──> (C, h, w) ──core Decoder──> 1x1 conv ──> logits (B, 3, S, S)
    discriminator  x ──core Encoder──> flatten ──Linear──> logit (B, 1)
    inverter       x ──core Encoder──> flatten ──Linear──> u (B, cond_dim + latent_dim)    (invert=True)

With ``cond_dim`` (``train.param_mse`` > 0 on data with known generating parameters) the generator's
input is ``u = (v, z)``: the standardised parameters ``v`` (``cond_dim``) then the noise ``z``; the
trainer adds ``param_mse * MSE(G(v, z), x_v)`` on real pairs. The inverter (``invert``) is trained to
give back ``u`` from ``G(u)`` (AAE-style), which gives the GAN an ``encode`` for the latent probe.

AAE (Makhzani et al. 2015): the :class:`~sandbox.models.autoencoders.AutoEncoder` plus a
latent discriminator (an MLP on codes) that tells prior samples from encoded images. The
prior is N(0, I) or (``prior: mixture``) a mixture of ``prior_components`` Gaussians with
standard deviation 0.5 whose means lie on a sphere of radius 2, drawn once from a fixed seed.

Discriminators return logits: losses use ``binary_cross_entropy_with_logits`` (AMP-safe; never
Sigmoid + BCELoss). The DCGAN's stabilisers (issue 28), each opt-in: the hinge loss (``gan_loss``),
spectral normalisation of D (``spectral_norm``) and the R1 penalty on real images (``r1``, ``r1_every``);
with the trainer's two learning rates (``train.d_lr``) and the EMA of G (``ema``) they make the recipe
configs/dcgan_attractors_stable.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.errors import ConfigError, SandboxError
from sandbox.models.autoencoders import AutoEncoder, GenerativeOptions, LatentModel, register_generative
from sandbox.models.objective import bce_logits, hinge_d, mean_prob, r1_penalty
from sandbox.nn.ema import attach_ema
from sandbox.nn.latent import ImageDecoder, ImageEncoder

PRIORS = ("gaussian", "mixture")


@dataclass
class DCGANOptions(GenerativeOptions):
    """The ``model:`` keys of dcgan: the generative ones plus these."""
    d_norm: Optional[Literal["batch", "group", "none"]] = None  # the discriminator's norm (null: model.norm)
    # also train an encoder E to invert G, MSE(E(G(u)), u) on G's own inputs u (AAE-style), so the model
    # encodes: the latent probe reads E's codes of real images (null/false: no encoder, the plain DCGAN)
    invert: Optional[bool] = None
    # the adversarial loss (null: bce, the non-saturating BCE of Goodfellow et al. 2014); hinge: Miyato et al.
    # 2018's D: relu(1 - D(x)) + relu(1 + D(G(z))), G: -D(G(z)) (no labels: train.label_smoothing must be 0)
    gan_loss: Optional[Literal["bce", "hinge"]] = None
    # spectral normalisation of every conv and linear weight of the discriminator (Miyato et al. 2018; null: off)
    spectral_norm: Optional[bool] = None
    # R1 gradient penalty gamma / 2 * E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018; null/0: off)
    r1: Optional[float] = field(default=None, metadata={"range": "[0, 1000000]"})
    # lazy R1 (Karras et al. 2020): the penalty every r1_every-th discriminator step, weighted r1_every (null: 1)
    r1_every: Optional[int] = field(default=None, metadata={"range": "[1, 10000]"})


@dataclass
class AAEOptions(GenerativeOptions):
    """The ``model:`` keys of aae: the generative ones plus its prior."""
    prior: Optional[Literal["gaussian", "mixture"]] = None  # prior on the codes (null: gaussian)
    prior_components: Optional[int] = None  # prior: mixture: number of Gaussian components (null: 10)
MIXTURE_RADIUS, MIXTURE_STD, MIXTURE_SEED = 2.0, 0.5, 1234


class DCGAN(LatentModel):
    """``forward(z: (B, latent_dim)) -> {"image": G(z) (B, C, S, S) in [0, 1]}``.

    ``generator(z)`` gives logits of pixel values (``decode`` applies the sigmoid);
    ``discriminator(x)`` gives ``(B, 1)`` logits of "real". The discriminator is the core
    Encoder (same options as the generator's Decoder, except ``d_norm``) plus a linear layer
    on its flattened bottleneck. BatchNorm in the discriminator sees all-real and all-fake
    batches separately, which lets it tell them apart by batch statistics alone; ``d_norm``
    (``none`` or ``group``) removes that shortcut.

    Stabilisers, all off by default: ``gan_loss="hinge"``; ``spectral_norm`` (every conv and linear weight of
    the discriminator divided by its largest singular value, one power iteration per training forward:
    :func:`spectral_normalise`); ``r1`` = gamma of the R1 penalty on real images, added to ``d_loss`` every
    ``r1_every``-th step with weight ``gamma / 2 * r1_every`` (its own float32 forward pass of D: with
    ``d_norm: batch`` that pass also moves D's BatchNorm statistics).
    """

    generator_name = "generator"
    encodes = False

    def __init__(self, in_channels: int, size: int, latent_dim: int, widths: Sequence[int], blocks: int = 1,
                 block: str = "plain", norm: str = "batch", upsample: str = "transpose", downsample: str = "stride",
                 dilation: int = 1, dropout: float = 0.0, ema: float | None = None, d_norm: str | None = None,
                 cond_dim: int = 0, invert: bool = False, gan_loss: str = "bce", spectral_norm: bool = False,
                 r1: float = 0.0, r1_every: int = 1):
        super().__init__()
        self.gan_loss, self.r1, self.r1_every = gan_loss, r1, r1_every
        self.latent_dim, self.size, self.in_channels, self.cond_dim = latent_dim, size, in_channels, cond_dim
        self.input_dim = cond_dim + latent_dim  # the generator's input u = (v, z)
        self.discriminator = ImageEncoder(in_channels, size, 1, widths, blocks, downsample, block, dilation,
                                          d_norm or norm, dropout)
        if spectral_norm:
            spectral_normalise(self.discriminator)
        self.generator = ImageDecoder(self.input_dim, self.discriminator.bottleneck, in_channels, widths, upsample,
                                      blocks, block, norm, dilation)
        if cond_dim:  # the parameters' mean and std on the training split (set by the trainer, saved with the weights)
            self.register_buffer("param_mean", torch.zeros(cond_dim))
            self.register_buffer("param_std", torch.ones(cond_dim))
        if invert:
            self.inverter = ImageEncoder(in_channels, size, self.input_dim, widths, blocks, downsample, block,
                                         dilation, norm, dropout)
        self.encodes = bool(invert)
        attach_ema(self, self.generator_name, ema)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": self.decode(z)}

    def standardise(self, params: torch.Tensor) -> torch.Tensor:
        """Known parameters ``(B, cond_dim)`` -> ``v``, standardised by the training split's mean and std."""
        return (params.float() - self.param_mean) / self.param_std

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, input_dim)``: the noise z ~ N(0, I) (drawn first: without ``cond_dim`` the plain DCGAN's
        draw), after ``v`` ~ U(-sqrt 3, sqrt 3) per parameter: mean 0 and std 1 like the standardised
        training parameters, uniform as the attractors' are drawn (before their rejection of degenerate maps)."""
        z = super().prior(n, generator)
        if not self.cond_dim:
            return z
        v = (torch.rand(n, self.cond_dim, generator=generator) * 2 - 1) * 3**0.5
        return torch.cat([v.to(z.device), z], dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, S, S) -> u = (v, z)`` as the inverter reads it (``invert`` only)."""
        if not self.encodes:
            return super().encode(x)
        return self.inverter(x)

    # ------------------------------------------------------------------ the players' losses (the GAN trainer's order)
    def generator_input(self, batch: dict, draw, device) -> torch.Tensor:
        """The generator's input for ``batch``: ``z ~ N(0, I)`` drawn by ``draw`` (this process's rows of the
        global batch's draw), after it the real images' own standardised parameters ``v`` (``cond_dim``)."""
        z = draw(lambda n: torch.randn(n, self.latent_dim, device=device), batch["image"].shape[0])
        if self.cond_dim:
            z = torch.cat([self.standardise(batch["params"].to(device)), z], dim=1)
        return z

    def d_loss(self, x: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0,
               step: int = 0) -> tuple[torch.Tensor, dict]:
        """The discriminator's loss at optimizer step ``step``: BCE of real images ``x`` as real (``1 - smoothing``)
        plus detached ``fake`` as fake (or the hinge loss), plus on R1 steps ``gamma / 2 * r1_every * R1``;
        parts ``loss/gan/d`` (the adversarial term), ``loss/gan/r1`` (the unweighted ``E ||grad D(x)||^2``, on
        R1 steps) and the mean probabilities ``d_real`` = sigmoid D(x), ``d_fake`` = sigmoid D(G(z))."""
        d_real, d_fake = self.discriminator(x), self.discriminator(fake.detach())
        if self.gan_loss == "hinge":
            if smoothing:
                raise SandboxError(f"label smoothing {smoothing}: the hinge loss has no labels to smooth; use 0")
            loss = hinge_d(d_real, d_fake)
        else:
            loss = bce_logits(d_real, True, smoothing) + bce_logits(d_fake, False)
        parts = {"loss/gan/d": loss.detach(), "d_real": mean_prob(d_real), "d_fake": mean_prob(d_fake)}
        if self.r1 and step % self.r1_every == 0:
            penalty = r1_penalty(self.discriminator, x)
            parts["loss/gan/r1"] = penalty.detach()
            loss = loss + self.r1 / 2 * self.r1_every * penalty
        return loss, parts

    def g_loss(self, fake: torch.Tensor, x: torch.Tensor, param_mse: float = 0.0) -> tuple[torch.Tensor, dict]:
        """The generator's non-saturating ``-log D(G(u))`` (hinge: ``-mean D(G(u))``), plus ``param_mse *
        MSE(G(v, z), x_v)`` when G takes the parameters (part ``loss/gan/param_mse``: the MSE unweighted). Freeze
        D around it (its trainer does)."""
        logits = self.discriminator(fake)
        loss = -logits.float().mean() if self.gan_loss == "hinge" else bce_logits(logits, True)
        parts = {"loss/gan/g": loss}
        if self.cond_dim:
            mse = F.mse_loss(fake.float(), x.float())
            parts["loss/gan/param_mse"] = mse
            loss = loss + param_mse * mse
        return loss, parts

    def invert_loss(self, fake: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The inverter's ``MSE(E(G(u)), u)`` on detached samples: part ``loss/invert`` and, with parameters,
        ``loss/invert/params`` (v) and ``loss/invert/noise`` (z)."""
        err = (self.inverter(fake.detach()).float() - u.float()).square()
        loss = err.mean()
        parts = {"loss/invert": loss.detach()}
        if self.cond_dim:
            parts["loss/invert/params"] = err[:, :self.cond_dim].mean().detach()
            parts["loss/invert/noise"] = err[:, self.cond_dim:].mean().detach()
        return loss, parts


def spectral_normalise(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every ``Conv2d`` and ``Linear`` weight inside ``module``
    (torch's parametrization: the weight divided by its largest singular value, estimated by one power iteration
    per forward in training mode; a conv's weight read as ``(out, in * k * k)``). Returns ``module``."""
    for layer in list(module.modules()):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            torch.nn.utils.parametrizations.spectral_norm(layer)
    return module


class LatentDiscriminator(nn.Module):
    """MLP on codes: ``z: (B, latent_dim) -> logit (B, 1)`` (prior sample = real)."""

    def __init__(self, latent_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class AAE(AutoEncoder):
    """``forward(x) -> {"image": x̂, "z"}`` as the AutoEncoder; ``discriminator(z) -> (B, 1)`` logits;
    ``prior(n)`` samples the Gaussian or mixture prior that ``sample(n)`` decodes."""

    def __init__(self, *args: Any, prior: str = "gaussian", prior_components: int = 10, disc_hidden: int = 256,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prior_kind = prior
        self.discriminator = LatentDiscriminator(self.latent_dim, disc_hidden)
        if prior == "mixture":
            g = torch.Generator().manual_seed(MIXTURE_SEED)
            means = torch.randn(prior_components, self.latent_dim, generator=g)
            self.register_buffer("mixture_means", MIXTURE_RADIUS * means / means.norm(dim=1, keepdim=True))

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = LatentModel.prior(self, n, generator)
        if self.prior_kind == "gaussian":
            return eps
        k = torch.randint(len(self.mixture_means), (n,), generator=generator).to(eps.device)
        return self.mixture_means[k] + MIXTURE_STD * eps

    @property
    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Encoder + decoder: what the reconstruction phase trains."""
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    # ------------------------------------------------------------------ the regularisation phase (after loss())
    def d_loss(self, x: torch.Tensor, draw, smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
        """The latent discriminator's loss: prior samples (``draw(self.prior, n)``, drawn after the codes) as
        real, the detached codes of ``x`` as fake; parts ``loss/aae/d``, ``d_prior`` and ``d_code``."""
        with torch.no_grad():
            codes = self.encode(x)
        d_prior, d_code = self.discriminator(draw(self.prior, x.shape[0])), self.discriminator(codes.float())
        loss = bce_logits(d_prior, True, smoothing) + bce_logits(d_code, False)
        return loss, {"loss/aae/d": loss.detach(), "d_prior": mean_prob(d_prior), "d_code": mean_prob(d_code)}

    def g_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The encoder's loss for making its codes of ``x`` pass as prior samples (freeze the discriminator
        around it: only the encoder learns to fool it); part ``loss/aae/g``."""
        loss = bce_logits(self.discriminator(self.encode(x)), True)
        return loss, {"loss/aae/g": loss}

    def code_probabilities(self, x: torch.Tensor, prior: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image ``(B,)``: the discriminator's probability of "prior" for the code of ``x`` (``d_code``)
        and for ``prior`` samples (``d_prior``); validation values."""
        return {"d_code": torch.sigmoid(self.discriminator(self.encode(x)).float()).squeeze(1),
                "d_prior": torch.sigmoid(self.discriminator(prior).float()).squeeze(1)}


def _check_prior(options: dict[str, Any]) -> None:
    prior, k = options.get("prior"), options.get("prior_components")
    if prior is not None and prior not in PRIORS:
        raise ConfigError(f"model.prior: got {prior!r}, expected one of {', '.join(map(repr, PRIORS))}")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"model.prior_components: got {k!r}, expected an integer >= 1")
        if prior != "mixture":
            raise ConfigError("model.prior_components: only the mixture prior has components; set "
                              "model.prior=mixture or drop model.prior_components")


def _check_dcgan(options: dict[str, Any]) -> None:
    """The dcgan's own checks beyond its fields' declared values and ranges (``check_fields``)."""
    if options.get("d_norm") not in (None, "batch", "group", "none"):
        raise ConfigError(f"model.d_norm: got {options['d_norm']!r}, expected one of 'batch', 'group', 'none'")
    for key in ("invert", "spectral_norm"):
        if options.get(key) not in (None, True, False):
            raise ConfigError(f"model.{key}: got {options[key]!r}, expected true or false")
    if options.get("r1_every") is not None and not options.get("r1"):
        raise ConfigError(f"model.r1_every: got {options['r1_every']!r}, but model.r1 (the R1 penalty's gamma) is "
                          f"{options.get('r1')!r}: set model.r1 > 0 or drop model.r1_every")


@register_generative("dcgan", "gan", DCGANOptions, defaults={"downsample": "stride"}, check=_check_dcgan,
                     takes_loss=False, derived=("cond_dim",))
def build_dcgan(latent_dim: int = 64, d_norm: str | None = None, invert: bool | None = None, cond_dim: int = 0,
                gan_loss: str | None = None, spectral_norm: bool | None = None, r1: float | None = None,
                r1_every: int | None = None, **core: Any) -> DCGAN:
    """DCGAN: ``MODELS["dcgan"](latent_dim=64, size=64, width=16, depth=3, ...)``; the discriminator
    downsamples with strided convolutions unless ``downsample`` says otherwise. ``invert``: add the
    encoder that inverts G; ``cond_dim``: parameters fed to G beside the noise (set from the data by
    ``sandbox.build.model_kwargs`` when ``train.param_mse`` > 0). ``gan_loss`` (bce | hinge), ``spectral_norm``,
    ``r1`` (gamma) and ``r1_every``: the stabilisers, all off when null."""
    return DCGAN(latent_dim=latent_dim, d_norm=d_norm, invert=bool(invert), cond_dim=cond_dim,
                 gan_loss=gan_loss or "bce", spectral_norm=bool(spectral_norm), r1=float(r1 or 0.0),
                 r1_every=r1_every or 1, **core)


@register_generative("aae", "aae", AAEOptions, check=_check_prior,
                     no_grad_accum="the aae trainer steps the encoder in two phases per batch (reconstruction, then "
                                   "fooling the discriminator) and accumulated gradients would mix them")
def build_aae(latent_dim: int = 64, prior: str | None = None, prior_components: int | None = None,
              **core: Any) -> AAE:
    """Adversarial autoencoder: ``MODELS["aae"](latent_dim=8, prior="mixture", prior_components=10, ...)``."""
    return AAE(latent_dim=latent_dim, prior=prior or "gaussian", prior_components=prior_components or 10, **core)
