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
