"""Builders: a Config in, plain-argument modules out (modules never see the Config).

    build_model(cfg)   MODELS[cfg.model.name](**options), weights from cfg.seed alone (K logits per class target)
    build_data(cfg)    {split: Dataset}, the training split augmented
    build_loss(cfg)    the CompositeLoss of cfg.loss (and cfg.loss_balance)

``build_trainer`` (everything together) is :func:`sandbox.trainers.build_trainer`.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.data import Dataset

from sandbox.config import Config
from sandbox.data import DATASETS
from sandbox.data.classes import ClassSpec
from sandbox.data.classes import target_classes as classes_of
from sandbox.data.conditions import Conditioned, condition_factors
from sandbox.data.transforms import Augmented, build_augment
from sandbox.losses import CompositeLoss
from sandbox.losses import build_loss as build_composite_loss
from sandbox.models import MODELS
from sandbox.models.spec import own_options


def model_kwargs(cfg: Config) -> dict:
    """What ``MODELS[cfg.model.name]`` is called with: the family's own options that are set (its options
    class: ``ModelSpec.options``; a bare ``ModelConfig``, as ``Config()`` holds, is read into it), the
    ``targets``, and the arguments the family derives from the data (``cond_dim``: ``train.param_mse``)."""
    spec = MODELS[cfg.model.name]
    own = own_options(spec.name, {k: v for k, v in vars(cfg.model).items() if k != "name"})
    kw = {k: v for k, v in own.items() if v is not None}
    classes = target_classes(cfg)
    kw["targets"] = {t: len(classes[t]) if t in classes else 1 for t in cfg.loss or {}}
    if cfg.data.condition is not None and "factors" in spec.derived:  # validate.py: a model that reads it
        kw["factors"] = condition_factors(DATASETS[cfg.data.name], cfg.data.condition)
    if cfg.train.param_mse > 0 and "cond_dim" in spec.derived:  # validate.py: data with parameters
        kw["cond_dim"] = len(DATASETS[cfg.data.name].param_names)
    return kw


def target_classes(cfg: Config) -> dict[str, tuple[ClassSpec, ...]]:
    """``{target: (ClassSpec, ...)}``: the class-map targets of ``cfg``'s data (:func:`sandbox.data.classes.target_classes`)."""
    return classes_of(DATASETS[cfg.data.name], cfg.data.classes)


def build_model(cfg: Config) -> nn.Module:
    """``MODELS[cfg.model.name](**model options, targets={t: 1 for t in cfg.loss})``, initialised
    from ``cfg.seed`` alone (the global RNG is left untouched), so equal configs give equal weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return MODELS[cfg.model.name](**model_kwargs(cfg))


def build_data(cfg: Config, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Dataset]:
    """``{split: Dataset}`` for ``cfg.data``; the train split is wrapped in ``Augmented`` when
    ``data.augment`` is set (validation and test are never augmented). ``data.train_fraction`` < 1 keeps
    a seeded random subset of the training split (folders: of the pairs left after val and test;
    synthetic data: of its ``num_train`` samples).

    Each dataset builds its splits from the config itself (``DATASETS[name].from_config(cfg, splits, wrap)``).
    Folder datasets list and split the folder once (or read ``data.splits``) and share the
    lists; ``sandbox.data.splits_of(datasets["train"])`` returns them for the run directory.
    Every labelled split built is checked there, and only there, for masks that are all empty or
    all full (``FolderDataset.check_masks``: certain, and one mask read for a usual split).
    ``data.condition`` wraps each split in :class:`~sandbox.data.conditions.Conditioned` (under the subset
    and the augmentation): its samples carry ``"condition"``.
    """
    d = cfg.data
    augment = build_augment(d.augment) if "train" in splits else None  # config errors before any file is read
    wrap = (lambda ds: ds) if d.condition is None else (lambda ds: Conditioned(ds, d.condition))
    out = DATASETS[d.name].from_config(cfg, splits, wrap)
    if augment is not None:
        out["train"] = Augmented(out["train"], augment, seed=cfg.seed)
    return out


def build_loss(cfg: Config) -> CompositeLoss:
    """The CompositeLoss of ``cfg.loss`` (empty for a model that takes none) with ``cfg.loss_balance``,
    told which of the model's outputs are logits (``ModelSpec.logit_targets``: ``mask``), so that a
    loss of probabilities on them (``mask: {mse: 1}``) gets ``sigmoid(logits)``."""
    balance = dataclasses.asdict(cfg.loss_balance) if cfg.loss_balance is not None else None
    return build_composite_loss(cfg.loss or {}, balance=balance, logit_targets=MODELS[cfg.model.name].logit_targets)
