"""What a model's objective is given, and the pieces the adversarial objectives share.

Every model computes its own training loss: ``model.loss(batch, step) -> (total, parts)``, ``parts`` the
scalars the engine logs beside ``train/loss``. The adversarial models have one loss per player instead
(``d_loss`` / ``g_loss``, and the GAN's ``invert_loss``), which their trainers call in the order of updates.
``step`` is a :class:`Step`, built by the engine (sandbox/engine/trainer.py) for each batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def whole(fn: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """A draw of ``n`` rows in one process: ``fn(n)``."""
    return fn(n)


@dataclass
class Step:
    """What a model's ``loss(batch, step)`` may read about the training step it is computed for."""

    index: int = 0  # optimizer steps done before this one
    #: runs the model as the engine trains it (DDP wrapper, autocast, the memory format); None: the model itself
    forward: Callable | None = None
    #: ``draw(fn, n)``: this process's ``n`` rows of ``fn(n * processes)``, the noise one process would draw for
    #: the global batch (``Trainer.shard_draw``)
    draw: Callable[[Callable[[int], torch.Tensor], int], torch.Tensor] = whole
    #: the registry loss of the config's ``loss`` section (segmentation, ae, vae, aae); None for the others
    criterion: Callable | None = None
    weight: float = 0.0  # the regulariser's weight at this step (the VAE's KL: beta times its warm-up)


def bce_logits(logits: torch.Tensor, real: bool, smoothing: float = 0.0) -> torch.Tensor:
    """Mean BCE of ``(B, 1)`` logits against all-real (``1 - smoothing``) or all-fake (0) labels, float32,
    autocast off. Smoothing applies to real labels only (one-sided, Salimans et al. 2016): a
    discriminator asked for 0.9 on real images stops pushing its logits towards infinity."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 - smoothing if real else 0.0))


def mean_prob(logits: torch.Tensor) -> torch.Tensor:
    """The mean probability of "real" of ``logits`` (detached, float32): what the discriminator says."""
    return torch.sigmoid(logits.detach().float()).mean()


def hinge_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017; Miyato et al. 2018): ``mean relu(1 - D(x)) + mean
    relu(1 + D(G(z)))`` of ``(B, 1)`` logits, float32 with autocast off. The generator's is ``-mean D(G(z))``."""
    with torch.autocast(device_type=d_real.device.type, enabled=False):
        return F.relu(1 - d_real.float()).mean() + F.relu(1 + d_fake.float()).mean()


def r1_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ``E_x ||grad_x D(x)||^2`` over real images ``x`` (squares summed per image,
    averaged over the batch; the loss adds ``gamma / 2`` times it). Its own forward pass of ``discriminator``
    in float32 with autocast off (a half-precision double backward under- or overflows), the gradient taken
    with ``create_graph`` so that the penalty's own gradient reaches the discriminator's weights."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(discriminator(x).float().sum(), x, create_graph=True)
        return grad.square().flatten(1).sum(1).mean()
