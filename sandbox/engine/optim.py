"""Optimizers and learning-rate schedules; schedules are sized in optimizer steps of ONE process.

With N processes each process sees 1/N of the batches, so an epoch is
``ceil(batches / N / grad_accum)`` optimizer steps: the trainer passes that number, and
every process steps its scheduler once per optimizer step (never N times).

    onecycle   torch OneCycleLR: warm up for ``warmup_frac`` of the run to ``lr``, anneal to ~0
    cosine     linear warm-up for ``warmup_frac``, then half a cosine to 0
    cyclic     linear warm-up, then triangular2 cycles between lr/10 and lr (each half cycle
               ``cycle_epochs`` long, the peak halving every cycle; Smith 2017)
    step       linear warm-up, then lr * gamma ** (epochs // step_epochs)
    plateau    ReduceLROnPlateau on ``train.monitor``, patience ``step_epochs``, factor ``gamma``;
               stepped once per epoch (no warm-up)
    none       constant lr
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau


def make_optimizer(params, kind: str, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``adam`` | ``adamw`` | ``sgd`` (Nesterov, ``momentum``)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)


def set_beta1(opt: torch.optim.Optimizer, beta1: float) -> torch.optim.Optimizer:
    """Adam's first beta for every group (a no-op for SGD). Set after the scheduler is made: OneCycleLR
    writes its own momentum into the betas when it is created."""
    for group in opt.param_groups:
        if "betas" in group:
            group["betas"] = (beta1, group["betas"][1])
    return opt


def warmup_factor(step: int, warm: int) -> float:
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


def lr_lambda(kind: str, total: int, steps_per_epoch: int, warmup_frac: float, cycle_epochs: float,
              step_epochs: int, gamma: float):
    """The multiplier of the base lr at optimizer step ``s`` for the LambdaLR-based schedules."""
    warm = max(1, int(warmup_frac * total)) if kind != "step" or warmup_frac > 0 else 0
    if kind == "cosine":
        def f(s: int) -> float:
            if s < warm:
                return warmup_factor(s, warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total - warm))))
    elif kind == "cyclic":
        half = max(1, int(round(cycle_epochs * steps_per_epoch)))

        def f(s: int) -> float:
            if s < warm:
                return warmup_factor(s, warm)
            x = (s - warm) / half  # starts at the peak after warm-up, then goes down
            cycle = math.floor((x + 1) / 2)  # 0 for the first descent, then 1, 2, ...
            pos = abs(x - 2 * cycle)  # 0 at a peak, 1 at a trough
            return 0.1 + 0.9 * (1 - pos) / (2 ** cycle)
    elif kind == "step":
        every = max(1, step_epochs * steps_per_epoch)

        def f(s: int) -> float:
            return warmup_factor(s, warm) * gamma ** (s // every)
    else:
        raise ValueError(kind)
    return f


def make_scheduler(opt: torch.optim.Optimizer, kind: str, lr: float, total: int, steps_per_epoch: int,
                   warmup_frac: float = 0.3, cycle_epochs: float = 2.0, step_epochs: int = 3,
                   gamma: float = 0.1, mode: str = "max"):
    """A scheduler for ``opt`` (``None`` for ``none``); see the module docstring."""
    total = max(1, total)
    if kind == "none":
        return None
    if kind == "onecycle":
        # torch's OneCycleLR ends the warm-up at step pct_start * total - 1 and divides by that: a warm-up of
        # exactly one step (e.g. 10 steps at 0.1) is a ZeroDivisionError on the first step; make it two
        if total > 2 and math.isclose(warmup_frac * total, 1.0):
            warmup_frac = 2.0 / total
        return OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=warmup_frac)
    if kind == "plateau":
        return ReduceLROnPlateau(opt, mode=mode, factor=gamma, patience=step_epochs)
    return LambdaLR(opt, lr_lambda(kind, total, steps_per_epoch, warmup_frac, cycle_epochs, step_epochs, gamma))


def per_epoch(sched) -> bool:
    """Plateau schedules step once per epoch on a metric; the others once per optimizer step."""
    return isinstance(sched, ReduceLROnPlateau)


def regulariser_weight(beta: float, warmup_frac: float, step: int, total_steps: int) -> float:
    """The regulariser's weight at optimizer step ``step`` (the VAE's KL): ``beta * min(1, step / (warmup_frac *
    total_steps))``, rising linearly from 0 (Bowman et al. 2016); models without a regulariser ignore it."""
    warm = warmup_frac * total_steps
    return beta * (min(1.0, step / warm) if warm > 0 else 1.0)
