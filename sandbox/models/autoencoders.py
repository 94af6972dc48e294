"""Latent-variable models on the shared core: ``ae`` (AutoEncoder) and ``vae`` (VAE).

    x ──core Encoder──> f_d (C, h, w) ──flatten──> Linear ──> z (or mu, logvar)
    z ──Linear──> (C, h, w) ──core Decoder (skip="none")──> 1x1 conv ──> sigmoid ──> x̂

The flatten size ``C * h * w`` is measured by running the encoder once on a
``(1, in_channels, size, size)`` zero image at construction, never hard-coded. Every
generative model exposes ``encode``, ``decode`` and ``sample(n)``; images are in [0, 1].
``ema``: decay of an exponential moving average copy of the decoder (the generator) kept
in the model (:mod:`sandbox.nn.ema`, with its warm-up); in eval mode ``decode`` and ``sample`` use it.

The adversarial models (``dcgan``, ``aae``) reuse these pieces: :mod:`sandbox.models.adversarial`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from sandbox.errors import ConfigError, SandboxError
from sandbox.config.schema import ModelConfig
from sandbox.models.spec import ModelSpec, check_common, register
from sandbox.nn.core import stage_widths
from sandbox.nn.ema import attach_ema, ema_or_live
from sandbox.nn.latent import ImageDecoder, ImageEncoder



@dataclass
class GenerativeOptions(ModelConfig):
    """The ``model:`` keys of every generative model (ae, vae; the others extend it): the core plus these."""
    latent_dim: Optional[int] = field(default=None, metadata={"range": "[1, 65536]"})  # null: the model's default, 64
    size: Optional[int] = None  # image side the decoder produces; null: data.size (filled in at load time)
    ema: Optional[float] = None  # decay of an EMA copy of the generator/decoder used for sampling (e.g. 0.999)


class LatentModel(nn.Module):
    """Base of every generative model: the ``encode`` / ``decode`` / ``sample`` verbs.

    ``generator_name``: the attribute holding the latent -> image module, the one whose EMA copy
    (:func:`sandbox.nn.ema.attach_ema`, when the model keeps one) eval mode decodes with.
    """

    kind = "generative"
    generator_name = "decoder"
    encodes = True  # has an encoder (latent probe, reconstructions, interpolation from images)
    latent_is_noise = False  # True: codes are Gaussian noise of the data's shape (ddpm, flow): slerp only
    sample_steps: int | None = None  # network evaluations per sample of a step sampler (ddpm, flow); None: one pass

    def set_sample_steps(self, steps: int | None, flag: str = "--steps") -> None:
        """The sampling steps a command asks for (``flag``); ``None`` keeps the model's own. Models that
        sample in one pass refuse it in one line."""
        if steps is None:
            return
        if self.sample_steps is None:
            raise SandboxError(f"{flag}: {type(self).__name__} samples in one pass; only step samplers (ddpm, "
                               "flow) take it")
        if steps < 1:
            raise SandboxError(f"{flag} {steps}: expected at least 1 sampling step")
        self.sample_steps = steps

    @property
    def image_generator(self) -> nn.Module:
        """The live generator in train mode; its EMA copy (when kept, :mod:`sandbox.nn.ema`) in eval mode."""
        return ema_or_live(self, self.generator_name)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z: (B, latent_dim) -> images (B, C, S, S) in [0, 1]``."""
        return torch.sigmoid(self.image_generator(z))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise SandboxError(f"{type(self).__name__} has no encoder; use random endpoints (--random K)")

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latent codes from the model's prior: ``(n, latent_dim)``; N(0, I) unless overridden."""
        dev = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator).to(dev)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images from the prior: ``(n, C, S, S)`` in [0, 1]."""
        return self.decode(self.prior(n, generator))


class AutoEncoder(LatentModel):
    """``forward(x: (B, C, S, S)) -> {"image": x̂ (B, C, S, S) in [0, 1], "z": (B, latent_dim)}``.

    A plain autoencoder has no prior; ``sample`` draws from a diagonal Gaussian fitted to
    the training codes (running mean and variance, momentum 0.05, updated in train mode).
    """

    def __init__(self, in_channels: int, size: int, latent_dim: int, widths: Sequence[int], blocks: int = 2,
                 block: str = "plain", norm: str = "batch", upsample: str = "transpose", downsample: str = "maxpool",
                 dilation: int = 1, dropout: float = 0.0, ema: float | None = None, code_factor: int = 1):
        super().__init__()
        self.latent_dim, self.size, self.in_channels = latent_dim, size, in_channels
        self.encoder = ImageEncoder(in_channels, size, code_factor * latent_dim, widths, blocks, downsample, block,
                                    dilation, norm, dropout)
        self.decoder = ImageDecoder(latent_dim, self.encoder.bottleneck, in_channels, widths, upsample, blocks,
                                    block, norm, dilation)
        self.register_buffer("code_mean", torch.zeros(latent_dim))
        self.register_buffer("code_var", torch.ones(latent_dim))
        attach_ema(self, self.generator_name, ema)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, S, S) -> z: (B, latent_dim)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        if self.training:
            with torch.no_grad():
                zf = z.detach().float()
                self.code_mean.lerp_(zf.mean(0), 0.05)
                self.code_var.lerp_(zf.var(0, unbiased=False) if len(zf) > 1 else self.code_var, 0.05)
        return {"image": self.decode(z), "z": z}

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = super().prior(n, generator)
        return self.code_mean + self.code_var.sqrt() * eps

    # ------------------------------------------------------------------ the objective (what trainers call)
    @property
    def dims(self) -> int:
        """Values per image, ``C * S * S``: the unit the regulariser is spread over."""
        return self.in_channels * self.size * self.size

    def loss(self, batch: dict, step) -> tuple[torch.Tensor, dict]:
        """The training loss ``(total, parts)`` of ``batch``: the forward on ``batch["image"]`` (with the
        noise :meth:`train_inputs` asks for, drawn by ``step.draw``), then :meth:`objective` with
        ``step.criterion`` at the regulariser's weight ``step.weight``."""
        def noise(like: torch.Tensor) -> torch.Tensor:  # this process's slice of the global batch's draw
            return step.draw(lambda n: torch.randn((n, *like.shape[1:]), dtype=like.dtype, device=like.device),
                             like.shape[0])

        out = (step.forward or self)(batch["image"], **self.train_inputs(noise))
        return self.objective(out, batch, step.criterion, step.weight)

    def train_inputs(self, draw: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """Extra ``forward`` arguments in training: an AutoEncoder needs none (a VAE takes its noise,
        ``draw(like)``, from the trainer)."""
        return {}

    def objective(self, out: dict, batch: dict, recon: Callable, weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """``(total, parts)``: the reconstruction loss ``recon`` (a CompositeLoss on ``image``) of the
        forward output ``out``; ``weight``: the regulariser's weight at this step (none here)."""
        total, parts = recon({"image": out["image"]}, {"image": batch["image"]})
        return total, {f"loss/{k}": v for k, v in parts.items()}

    def validation_terms(self, out: dict, x: torch.Tensor, eps: Callable, weight: float) -> tuple[Any, dict]:
        """Per-image validation extras ``(loss term (B,) or 0, values)``; ``eps(like)`` draws noise."""
        return 0, {}

    def validation_summary(self, res: dict[str, torch.Tensor]) -> dict[str, float]:
        """Split-level values from the gathered per-image ``res`` (none for an AutoEncoder)."""
        return {}


class VAE(AutoEncoder):
    """``forward(x) -> {"image": x̂, "z", "mu", "logvar"}`` (each ``(B, latent_dim)``); prior N(0, I).

    ``z = mu + exp(logvar / 2) * eps`` in train mode (reparameterisation, Kingma & Welling
    2014); ``z = mu`` in eval mode, so reconstructions and encodings are deterministic.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, code_factor=2, **kwargs)

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x -> (mu, logvar)``, each ``(B, latent_dim)``; logvar clamped to [-30, 20] (exp stays finite in fp16)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean ``mu``: the code used for probes and interpolation."""
        return self.encode_stats(x)[0]

    def forward(self, x: torch.Tensor, noise=None) -> dict[str, torch.Tensor]:
        """Training mode: ``z = mu + sigma * eps``, ``eps = noise(mu)`` (the trainer's draw, see
        ``Trainer.shard_draw``) or ``randn_like(mu)``, drawn after the encoder; eval mode: ``z = mu``."""
        mu, logvar = self.encode_stats(x)
        z = mu
        if self.training:
            z = mu + torch.exp(0.5 * logvar) * (torch.randn_like(mu) if noise is None else noise(mu))
        return {"image": self.decode(z), "z": z, "mu": mu, "logvar": logvar}

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``KL(N(mu, diag exp(logvar)) || N(0, I))`` per sample, in nats: ``(B, D) -> (B,)``, float32."""
        mu, logvar = mu.float(), logvar.float()
        return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return LatentModel.prior(self, n, generator)

    def train_inputs(self, draw: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        return {"noise": draw}

    def objective(self, out: dict, batch: dict, recon: Callable, weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """Reconstruction + ``weight * KL / (C*H*W)``, KL in nats per image (``weight``: beta times the
        KL warm-up at this step); parts add ``loss/vae/kl`` and ``kl_weight``."""
        total, parts = super().objective(out, batch, recon)
        kl = self.kl(out["mu"], out["logvar"]).mean()
        parts.update({"loss/vae/kl": kl.detach(), "kl_weight": torch.tensor(weight, device=kl.device)})
        return total + weight * kl / self.dims, parts

    def validation_terms(self, out: dict, x: torch.Tensor, eps: Callable, weight: float) -> tuple[Any, dict]:
        """Per image: the KL (added to the loss at ``weight / (C*H*W)``) and the squared error of a
        reconstruction from a sampled code (for the ELBO)."""
        kl = self.kl(out["mu"], out["logvar"])
        sampled = self.decode(out["mu"] + torch.exp(0.5 * out["logvar"]) * eps(out["mu"])).float()
        return weight * kl / self.dims, {"kl": kl, "sse_sampled": (sampled - x.float()).square().flatten(1).sum(1)}

    def validation_summary(self, res: dict[str, torch.Tensor]) -> dict[str, float]:
        """The ELBO in nats per image and bits per dimension under a Gaussian decoder whose variance is
        calibrated on the split (sigma² = mean squared error, Rybkin et al. 2021), on the 8-bit scale."""
        sigma2 = float(res["mse"].mean()) if "mse" in res else 1.0
        nll = 0.5 * self.dims * math.log(2 * math.pi * max(sigma2, 1e-10)) + res["sse_sampled"] / (2 * sigma2)
        elbo = -(nll + res["kl"])
        return {"val/elbo": float(elbo.mean()), "val/bpd": float(-elbo.mean() / (self.dims * math.log(2)) + 8),
                "val/sigma": math.sqrt(sigma2)}


# ----------------------------------------------------------------------------- options and builders

def check_generative(name: str, options: dict[str, Any]) -> None:
    """ConfigError naming ``model.<key>`` for an illegal value of the shared generative options (unknown keys
    and allowed values are checked before, by ``ModelSpec.check_options``)."""
    o = {k: v for k, v in options.items() if v is not None}
    check_common(o, (("in_channels", 1), ("width", 1), ("depth", 0), ("blocks", 1), ("dilation", 1),
                     ("latent_dim", 1), ("size", 2)))
    if "ema" in o and (isinstance(o["ema"], bool) or not isinstance(o["ema"], (int, float)) or not 0 <= o["ema"] < 1):
        raise ConfigError(f"model.ema: got {o['ema']!r}, expected a decay in [0, 1) such as 0.999, or null (off)")
    depth = o.get("depth", 3)
    if "size" in o and (o["size"] % 2**depth or o["size"] // 2**depth < 1):
        raise ConfigError(f"model.size: {o['size']} px does not halve model.depth={depth} times evenly; "
                          f"use a side divisible by {2**depth}")


def core_kwargs(in_channels: int = 3, size: int = 64, width: int = 16, widths: Sequence[int] | None = None,
                depth: int = 3, blocks: int = 2, block: str = "plain", norm: str = "batch",
                upsample: str | None = None, downsample: str | None = None, dilation: int = 1,
                dropout: float = 0.0, ema: float | None = None) -> dict[str, Any]:
    """The shared core options of every generative builder, with their defaults filled in."""
    return dict(in_channels=in_channels, size=size, widths=stage_widths(width, widths, depth), blocks=blocks,
                block=block, norm=norm, upsample=upsample or "transpose", downsample=downsample or "maxpool",
                dilation=dilation, dropout=dropout, ema=ema)


def register_generative(name: str, trainer: str, options: type = GenerativeOptions, defaults: dict | None = None,
                        check: Callable[[dict], None] | None = None, **spec: Any):
    """Decorator: register ``build(latent_dim, <own options>, **core) -> model`` as ``MODELS[name]``.

    ``options``: the family's options class (:class:`GenerativeOptions` or one extending it); the fields it
    adds (and ``spec``'s ``derived`` arguments) go to ``build`` by name, the core ones through
    :func:`core_kwargs`. ``defaults``: core options whose default differs for this model; ``check(options)``:
    more checks of its own; ``spec``: further :class:`ModelSpec` fields (``takes_loss``, ``derived``, ...).
    """
    core = {f.name for f in dataclasses.fields(GenerativeOptions)} - {"latent_dim"}

    def check_options(o: dict[str, Any]) -> None:
        check_generative(name, o)
        if check is not None:
            check(o)

    def deco(build):
        def builder(targets: dict[str, int] | None = None, **kw: Any) -> nn.Module:
            o = {**(defaults or {}), **{k: v for k, v in kw.items() if v is not None}}
            own = {k: o.pop(k) for k in list(o) if k not in core}
            return build(**own, **core_kwargs(**o))

        register(ModelSpec(name, builder, task="generative", trainer=trainer, check=check_options, options=options,
                           doc=build.__doc__ or "", **spec))
        return build

    return deco


@register_generative("ae", "autoencoder")
def build_ae(latent_dim: int = 64, **core: Any) -> AutoEncoder:
    """AutoEncoder: ``MODELS["ae"](latent_dim=64, size=64, width=16, depth=3, ...)``."""
    return AutoEncoder(latent_dim=latent_dim, **core)


@register_generative("vae", "vae")
def build_vae(latent_dim: int = 64, **core: Any) -> VAE:
    """VAE (mu/logvar head, reparameterisation): ``MODELS["vae"](latent_dim=64, size=64, ...)``."""
    return VAE(latent_dim=latent_dim, **core)
