"""An exponential moving average (EMA) copy of one sub-module, which any model opts into.

    attach_ema(model, "decoder", 0.999)  # model.generator_ema: a frozen copy; model.ema_updates: a counter
    update_ema(model)                    # after each optimizer step of the live sub-module (the engine calls it)
    ema_or_live(model, "decoder")        # the copy in eval mode, the live module in train mode

The copy and the counter are attributes of the model itself (``generator_ema.*`` and ``ema_updates`` in its
state dict, the names every checkpoint holds). The decay warms up, ``min(decay, (1 + n) / (10 + n))`` after
``n`` updates (TensorFlow's ExponentialMovingAverage ``num_updates``), so a short run's EMA follows its
training instead of staying near the initial weights (Karras et al. 2018 for generators).

Pure torch (layer ``nn``), so that models (layer ``parts``) can opt in; the engine calls :func:`update_ema`
after an optimizer step, and it does nothing for a model that keeps no EMA.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

EMA_WARMED_UP = 10**9  # an update count past any warm-up: (1 + n) / (10 + n) > 0.999999


def _fill_ema_updates(module, state_dict, prefix, *args) -> None:
    """Checkpoints of earlier versions hold an EMA copy but no update count: their EMA ran at the full
    decay all along, so they count as warmed up (``ema_updates`` large), and they load as they always did."""
    if prefix + "ema_updates" not in state_dict and any(k.startswith(prefix + "generator_ema.") for k in state_dict):
        state_dict[prefix + "ema_updates"] = torch.tensor(EMA_WARMED_UP)


def attach_ema(owner: nn.Module, live: str, decay: float | None) -> None:
    """Give ``owner`` an EMA of its sub-module ``owner.<live>`` at ``decay`` (None or 0: none).
    Sets ``owner.ema_decay``, ``owner.ema_live`` (the sub-module's name) and, with a decay, the frozen copy
    ``owner.generator_ema`` and the buffer ``owner.ema_updates`` (saved with the weights: a resumed run does
    not warm up again)."""
    owner.ema_decay, owner.ema_live = decay, live
    if decay:
        owner.generator_ema = copy.deepcopy(getattr(owner, live)).requires_grad_(False)
        owner.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        owner._register_load_state_dict_pre_hook(_fill_ema_updates, with_module=True)


def ema_decay_now(decay: float, updates: int) -> float:
    """The decay of the next update after ``updates`` updates: ``min(decay, (1 + n) / (10 + n))``: 0.1, 0.18,
    0.25, ... rising to ``decay`` (at a fixed 0.999 the copy keeps ``0.999**n`` of the initial weights: 37 %
    after 1,000 steps)."""
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def update_ema(owner: nn.Module) -> None:
    """``ema <- d * ema + (1 - d) * live`` for parameters (``d``: :func:`ema_decay_now`); buffers (BatchNorm
    statistics) copied; ``ema_updates`` counts the updates. Nothing for a model without an EMA."""
    if not getattr(owner, "ema_decay", None):
        return
    decay = ema_decay_now(owner.ema_decay, int(owner.ema_updates))
    live = getattr(owner, owner.ema_live)
    for e, p in zip(owner.generator_ema.parameters(), live.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(owner.generator_ema.buffers(), live.buffers()):
        e.copy_(b)
    owner.ema_updates += 1


def ema_or_live(owner: nn.Module, live: str) -> nn.Module:
    """The EMA copy of ``owner.<live>`` in eval mode (when kept), the live sub-module in train mode."""
    if getattr(owner, "generator_ema", None) is not None and not owner.training:
        return owner.generator_ema
    return getattr(owner, live)
