"""Denoising models on the shared core: ``ddpm`` (denoising diffusion) and ``flow`` (flow matching).

    x_t (B, C, S, S), t (B,) ──TimeEmbedding──> emb
    x_t ──core Encoder(emb)──> [f0 .. f_d] ──core Decoder(emb, concat skips)──> 1x1 conv ──> prediction

The network is the UNet of :mod:`sandbox.models.segmentation` built from the same Encoder and Decoder,
each conv block time-conditioned (:mod:`sandbox.nn.timestep`); its output is the process's target
(eps, v or x0 for ``ddpm``, the velocity for ``flow``), unbounded. The model holds the process and the net
together and computes its own training loss (``loss(batch, step)``: the process's pair and loss on the net);
the samplers are the process's (:mod:`sandbox.diffusion`, time convention t = 0 data, t = 1 noise). Images are in
[0, 1] in the data and in [-1, 1] for the process; samples come back clamped to [0, 1].

The latent of these models is the image-shaped noise: ``sample(n)`` / ``decode(noise)`` run the sampler
from noise to images, ``encode(images)`` the deterministic inversion back to noise, so interpolation
and the latent probe work on them as on the VAE's codes. Between Gaussian noises interpolate with slerp:
a straight line passes through points of norm about ``sqrt(D / 2)``, far from the ``sqrt(D)`` shell the
sampler was trained on (``latent_is_noise``). ``ema`` (default 0.999, with its warm-up) keeps the copy
of the network that eval mode samples with.

With ``data.condition`` the net is conditional (a condition embedding added to the time embedding, condition
dropout ``model.cond_drop``) and samples with classifier-free guidance ``model.guidance``: see
:class:`DenoisingModel`; without a condition such a model predicts unconditionally (the null condition).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import torch
from torch import nn

from sandbox.config.schema import RANGES
from sandbox.diffusion import Diffusion, FlowMatching
from sandbox.errors import ConfigError, SandboxError
from sandbox.models.autoencoders import GenerativeOptions, LatentModel, register_generative
from sandbox.models.objective import whole
from sandbox.nn.condition import ConditionEmbedding, as_factors, null_condition
from sandbox.nn.core import Decoder, Encoder
from sandbox.nn.ema import attach_ema
from sandbox.nn.timestep import TimeEmbedding, modulation

log = logging.getLogger("sandbox")

DEFAULT_STEPS = 20


@dataclass
class DenoisingOptions(GenerativeOptions):
    """The ``model:`` keys of both denoising models: the generative ones plus how they sample (t = 0 is data,
    t = 1 noise; sampling runs the net from noise to data). ``latent_dim`` is refused (the latent is the noise)."""
    sampler: Optional[Literal["ddpm", "ddim", "euler", "heun"]] = None  # ddpm: any (null: ddim); flow: euler, heun, ddim (= euler; null: euler)
    # steps of sampling and of the inversion encode() runs (null: 20)
    sample_steps: Optional[int] = field(default=None, metadata={"range": RANGES["model.sample_steps"]})
    # ddpm with sampler ddim: 0 deterministic .. 1 the DDPM posterior's noise (null: 0)
    eta: Optional[float] = field(default=None, metadata={"range": "[0, 1]"})
    attention: Optional[bool] = None  # self-attention over the bottleneck's pixels (null: off)
    # with data.condition (classifier-free guidance): condition dropout p in training (null: 0.1), and the
    # guidance w of sampling, 0 unconditional, 1 conditional, > 1 guided (null: 1)
    cond_drop: Optional[float] = field(default=None, metadata={"range": "[0, 1)"})
    guidance: Optional[float] = field(default=None, metadata={"range": RANGES["model.guidance"]})


@dataclass
class DDPMOptions(DenoisingOptions):
    prediction: Optional[Literal["eps", "v", "x0"]] = None  # what the net predicts (null: v)
    min_snr: Optional[float] = field(default=None, metadata={"range": "(0, inf)"})  # min-SNR-gamma loss weighting, e.g. 5 (null: off)


@dataclass
class FlowOptions(DenoisingOptions):
    t_sampling: Optional[Literal["uniform", "logit_normal"]] = None  # the training t law (null: uniform)


OPTIONS = {"ddpm": DDPMOptions, "flow": FlowOptions}
COND_DROP, GUIDANCE = 0.1, 1.0  # model.cond_drop and model.guidance when unset


class TimeUNet(nn.Module):
    """``forward(x: (B, C, S, S), t: (B,) or scalar in (0, 1], condition: (B, F) | None, drop: (B,) | None)
    -> (B, C, S, S)``: the core UNet (concat skips), every conv block scale-shifted by the time embedding, a
    1x1 conv head without activation.

    ``factors`` (:func:`sandbox.nn.condition.as_factors`; None: unconditional) adds a
    :class:`~sandbox.nn.condition.ConditionEmbedding` (``self.cond``, condition dropout ``cond_drop``) to the
    time embedding; a condition of None is then the null condition (the unconditional prediction)."""

    def __init__(self, in_channels: int, widths: Sequence[int], blocks: int = 2, block: str = "plain",
                 norm: str = "group", upsample: str = "transpose", downsample: str = "maxpool", dilation: int = 1,
                 dropout: float = 0.0, attention: bool = False, factors: Sequence | None = None,
                 cond_drop: float = 0.0):
        super().__init__()
        emb_dim = 4 * widths[0]
        self.time = TimeEmbedding(emb_dim, freq_dim=max(32, widths[0]))
        self.cond = ConditionEmbedding(factors, emb_dim, cond_drop) if factors else None
        self.encoder = Encoder(in_channels, widths, blocks, downsample, block, dilation, norm, dropout, emb_dim,
                               attention)
        self.decoder = Decoder(self.encoder.out_channels, widths, "concat", upsample, blocks, block, norm, dilation,
                               emb_dim)
        self.out = nn.Conv2d(self.decoder.out_channels, in_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, condition: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        r = self.encoder.reduction
        if x.shape[-2] % r or x.shape[-1] % r:
            raise SandboxError(f"input of {x.shape[-2]}x{x.shape[-1]} px does not halve {self.encoder.depth} times "
                               f"evenly; use sides divisible by {r} (data.size) or a smaller model.depth")
        emb = self.time(t, batch=x.shape[0])
        if self.cond is not None:
            if condition is None:
                condition = null_condition(x.shape[0], len(self.cond.factors), x.device)
            emb = emb + self.cond(condition, drop).to(emb.dtype)
        elif condition is not None:
            raise SandboxError("a condition was given to a model trained without one (data.condition was null); "
                               "sample it without a condition")
        emb = modulation(self, emb)  # all blocks' scale-shifts: one matmul
        return self.out(self.decoder(self.encoder(x, emb), emb))


class DenoisingModel(LatentModel):
    """``forward(x_t: (B, C, S, S) in process space, t: (B,), condition=None, drop=None) -> prediction
    (B, C, S, S)``: the live network (what the trainer optimises). ``process``: a
    :class:`~sandbox.diffusion.Diffusion` or :class:`~sandbox.diffusion.FlowMatching`;
    ``sampler``/``sample_steps``/``eta``: how ``sample``, ``decode`` and ``encode`` run it (eval mode: with
    the EMA network).

    Conditional (``factors`` set, from ``data.condition``): the net adds a condition embedding to its time
    embedding, trained with condition dropout ``cond_drop`` (each row nulled with that probability, drawn
    for the global batch as t and the noise are), so one net predicts with and without the condition
    (classifier-free guidance, Ho & Salimans 2022). ``sample``/``decode``/``encode`` take ``condition``
    ``(B, F)`` or ``(F,)`` and ``guidance`` w (None: ``self.guidance``; 0 unconditional, 1 conditional, > 1
    guided); without a condition they run the unconditional prediction. The continuous factors'
    standardisation statistics are buffers of the net (and of its EMA copy), set from the training split
    by the trainer (:meth:`set_condition_statistics`) and saved with the weights."""

    generator_name = "net"
    encodes = True  # by deterministic inversion: the latent is the noise an image comes from
    latent_is_noise = True  # interpolation between latents: slerp

    def __init__(self, process, in_channels: int, size: int, widths: Sequence[int], blocks: int = 2,
                 block: str = "plain", norm: str = "group", upsample: str = "transpose",
                 downsample: str = "maxpool", dilation: int = 1, dropout: float = 0.0, ema: float | None = 0.999,
                 sampler: str | None = None, sample_steps: int = DEFAULT_STEPS, eta: float = 0.0,
                 attention: bool = False, factors: Sequence | None = None, cond_drop: float = COND_DROP,
                 guidance: float = GUIDANCE):
        super().__init__()
        self.process, self.size, self.in_channels = process, size, in_channels
        self.sampler, self.sample_steps, self.eta = sampler or process.default_sampler, sample_steps, eta
        self.factors = as_factors(factors) if factors else None
        self.guidance = guidance
        self.net = TimeUNet(in_channels, widths, blocks, block, norm, upsample, downsample, dilation, dropout,
                            attention, self.factors, cond_drop if self.factors else 0.0)
        attach_ema(self, self.generator_name, ema)

    @property
    def conditional(self) -> bool:
        """Whether the net takes a condition (the run had ``data.condition``)."""
        return self.factors is not None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float = 0.5, condition: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """The live net's prediction; ``t`` defaults to the middle of the path, where summary.py measures
        the network as an image -> image map; ``condition`` None: the null condition."""
        return self.net(x_t, t, condition, drop)

    @torch.no_grad()
    def set_condition_statistics(self, conditions: torch.Tensor) -> None:
        """Standardise the continuous factors by the ``(N, F)`` ``conditions`` (the training split's), in the
        live net and its EMA copy (buffers: they travel with every checkpoint)."""
        for net in (self.net, getattr(self, "generator_ema", None)):
            if net is not None and net.cond is not None:
                net.cond.set_statistics(conditions)

    # ------------------------------------------------------------------ the objective: the process's loss on the net
    def training_pair(self, x: torch.Tensor, draw=whole, generator: torch.Generator | None = None):
        """``(x_t, t, target, weight)`` for images ``x`` in [0, 1] (``x0 = 2x - 1``): ``eps ~ N(0, I)``, then
        ``t = process.sample_t``, each drawn by ``draw`` (this process's rows of the global batch's draw) from
        ``generator`` (else the global RNG), then the process's ``training_pair(x0, eps, t)``."""
        n, x0 = x.shape[0], 2 * x.float() - 1
        eps = draw(lambda k: torch.randn((k, *x0.shape[1:]), generator=generator), n).to(x0.device)
        t = draw(lambda k: self.process.sample_t(k, generator=generator), n).to(x0.device)
        x_t, target, weight = self.process.training_pair(x0, eps, t)
        return x_t, t, target, weight

    def loss(self, batch: dict, step) -> tuple[torch.Tensor, dict]:
        """The training loss of ``batch``: ``process.loss(net(x_t, t), target, weight)`` in float32 on a
        :meth:`training_pair` drawn by ``step.draw``; no parts beside it. A conditional model reads
        ``batch["condition"]`` and nulls the rows of a condition-dropout mask drawn by ``step.draw`` too
        (after t: every process agrees on the global batch's mask, and an unconditional run's draws are
        unchanged)."""
        x = batch["image"]
        x_t, t, target, weight = self.training_pair(x, step.draw)
        forward = step.forward or self
        if self.conditional:
            drop = step.draw(self.net.cond.draw_drop, x.shape[0])
            pred = forward(x_t, t, self.batch_condition(batch), drop)
        else:
            pred = forward(x_t, t)
        return self.process.loss(pred.float(), target, weight), {}

    def batch_condition(self, batch: dict) -> torch.Tensor | None:
        """``batch["condition"]`` of a conditional model (None for an unconditional one); one line when absent."""
        if not self.conditional:
            return None
        if "condition" not in batch:
            raise SandboxError(f"this {self.process.name} model is conditioned on "
                               f"{', '.join(f.name for f in self.factors)} but the batch has no condition; "
                               "build the data with the run's data.condition")
        return batch["condition"]

    def per_image_loss(self, pred: torch.Tensor, target: torch.Tensor, weight) -> torch.Tensor:
        """``(B,)``: the process's loss of each image alone (its mean over the batch is the batch loss)."""
        loss = self.process.loss
        one = (lambda i: weight[i:i + 1]) if torch.is_tensor(weight) and weight.ndim else (lambda i: weight)
        return torch.stack([loss(pred[i:i + 1], target[i:i + 1], one(i)) for i in range(len(pred))]).float()

    @property
    def encoder(self) -> Encoder:
        """The net's core Encoder (its bottleneck is what summary.py reports)."""
        return self.net.encoder

    def _fn(self):
        """The network the sampler calls, ``(x, t[, c]) -> float32 prediction`` (EMA copy in eval mode)."""
        net = self.image_generator
        return lambda x, t, c=None: net(x, t, c).float()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.in_channels, self.size, self.size

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` noises ``(n, C, S, S)`` ~ N(0, I): the latent codes of these models."""
        dev = next(self.parameters()).device
        return torch.randn(n, *self.latent_shape, generator=generator).to(dev)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None, condition: torch.Tensor | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """Noise ``z: (B, C, S, S)`` -> images in [0, 1] by ``sample_steps`` steps of the sampler, conditioned on
        ``condition`` ``(B, F)``/``(F,)`` with guidance ``guidance`` (None: the model's) when given."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise SandboxError(f"latent noise of shape {tuple(z.shape)} does not fit this model; expected "
                               f"(N, {', '.join(map(str, self.latent_shape))}) (image-shaped noise)")
        x = self.process.sample(self._fn(), z.float(), steps=self.sample_steps, sampler=self.sampler, eta=self.eta,
                                generator=generator, **_guide(self, condition, guidance))
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, condition: torch.Tensor | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """Images ``(B, C, S, S)`` in [0, 1] -> the noise the deterministic sampler maps back to them
        (DDIM with eta 0 run forwards in t; the flow ODE run backwards), under ``condition``/``guidance``."""
        sampler = None if self.sampler == "ddpm" else self.sampler  # ancestral sampling has no inverse
        return self.process.invert(self._fn(), 2 * x.float() - 1, steps=self.sample_steps, sampler=sampler,
                                   **_guide(self, condition, guidance))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, condition: torch.Tensor | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, S, S)`` in [0, 1] from noise drawn with ``generator`` (which also drives a
        stochastic sampler's fresh noise), under ``condition`` ``(n, F)``/``(F,)`` and ``guidance``."""
        return self.decode(self.prior(n, generator), generator, condition, guidance)


def _guide(model: DenoisingModel, condition: torch.Tensor | None, guidance: float | None) -> dict:
    """The process's ``condition``/``guidance`` keywords for ``model``: its own guidance by default; a condition
    for an unconditional model is refused in one line (guidance without a condition: by the process)."""
    if condition is None:
        return {} if guidance is None else {"guidance": guidance}
    if not model.conditional:
        raise SandboxError("a condition was given to a model trained without one (data.condition was null); "
                           "sample it without a condition")
    return {"condition": torch.as_tensor(condition, dtype=torch.float32),
            "guidance": model.guidance if guidance is None else guidance}


# ----------------------------------------------------------------------------- options and builders

def make_process(name: str, prediction: str | None = None, min_snr: float | None = None,
                 t_sampling: str | None = None):
    """The process of ``ddpm`` or ``flow`` with its options (defaults: v-prediction, uniform t)."""
    if name == "ddpm":
        return Diffusion(prediction=prediction or "v", min_snr=min_snr)
    return FlowMatching(t_sampling=t_sampling or "uniform")


def check_denoising(name: str, options: dict[str, Any]) -> None:
    """What ``ddpm``/``flow`` refuse beyond the shared generative checks: batch norm, a latent size,
    a sampler the process has not, eta without a sampler that reads it."""
    o = {k: v for k, v in options.items() if v is not None}
    if o.get("norm") == "batch":
        raise ConfigError(f"model.norm: {name} takes group or none, not batch: batch statistics tie each image "
                          "to the others at its noise level in training, and sampling sees other batches; "
                          "set model.norm: group")
    if "latent_dim" in o:
        raise ConfigError(f"model.latent_dim: {name} has no latent code of its own (its latent is the image-shaped "
                          "noise); leave it unset")
    proc = make_process(name, o.get("prediction"), o.get("min_snr"), o.get("t_sampling"))
    sampler = o.get("sampler", proc.default_sampler)
    if sampler not in proc.samplers:
        raise ConfigError(f"model.sampler: {name} samples with {', '.join(proc.samplers)}; got {sampler!r}")
    if "eta" in o and (name != "ddpm" or sampler != "ddim"):
        raise ConfigError(f"model.eta: only ddpm's ddim sampler reads it ({name}, model.sampler {sampler}); "
                          "leave eta unset" + (" or set model.sampler: ddim" if name == "ddpm" else ""))
    if name == "ddpm" and o.get("prediction") == "eps" and sampler != "ddpm" and not (sampler == "ddim" and o.get("eta")):
        # x0 = (x - sigma eps) / alpha with alpha(1) ~ 3e-3 multiplies the net's eps error ~300-fold in the
        # first deterministic steps: on the 8-Gaussian toy of tests/test_diffusion.py an eps net sampled with
        # ddim/euler/heun scored worse than noise (energy distance 0.18-0.34 vs 0.24), with ddpm 0.044
        log.warning("model.prediction: eps with the deterministic %s sampler is badly conditioned near t = 1 (x0 = "
                    "(x - sigma eps) / alpha, alpha ~ 3e-3); prefer prediction v (the default) or sampler ddpm", sampler)


def _register(name: str, doc: str) -> None:
    def build(latent_dim: None = None, prediction: str | None = None, min_snr: float | None = None,
              t_sampling: str | None = None, sampler: str | None = None, sample_steps: int | None = None,
              eta: float | None = None, attention: bool | None = None, factors=None, cond_drop: float | None = None,
              guidance: float | None = None, **core: Any) -> DenoisingModel:
        return DenoisingModel(make_process(name, prediction, min_snr, t_sampling), sampler=sampler,
                              sample_steps=sample_steps or DEFAULT_STEPS, eta=eta or 0.0,
                              attention=bool(attention), factors=factors,
                              cond_drop=COND_DROP if cond_drop is None else cond_drop,
                              guidance=GUIDANCE if guidance is None else guidance, **core)

    build.__doc__ = doc  # the other process's options are unknown to it: refused by the shared check
    register_generative(name, "denoising", OPTIONS[name], defaults={"norm": "group", "ema": 0.999},
                        check=lambda options: check_denoising(name, options), takes_loss=False,
                        derived=("factors",))(build)


_register("ddpm", "Denoising diffusion (cosine schedule; eps, v or x0 prediction; min-SNR weighting) on a "
                  "time-conditioned core UNet: ``MODELS['ddpm'](size=32, width=16, depth=2, prediction='v')``.")
_register("flow", "Flow matching (straight path, velocity target; uniform or logit-normal t) on a time-conditioned "
                  "core UNet: ``MODELS['flow'](size=32, width=16, depth=2, sampler='heun')``.")
