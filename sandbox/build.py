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
from sandbox.data.folders import FolderDataset, ImageFolder
from sandbox.data.splits import Subset, check_root, random_subset, resolve_splits
from sandbox.data.transforms import Augmented, build_augment
from sandbox.errors import ConfigError
from sandbox.losses import CompositeLoss
from sandbox.losses import build_loss as build_composite_loss
from sandbox.models import MODELS


def model_kwargs(cfg: Config) -> dict:
    m = cfg.model
    # options left at their defaults that only some builders know (encoder choice) are not passed
    optional = {"encoder": "core", "weights": None, "freeze_encoder": False}
    kw = {k: v for k, v in vars(m).items()
          if k != "name" and v is not None and not (k in optional and v == optional[k])}
    classes = target_classes(cfg)
    kw["targets"] = {t: len(classes[t]) if t in classes else 1 for t in cfg.loss or {}}
    if cfg.data.condition is not None:  # a conditional model (validate.py: a trainer that reads the condition)
        kw["factors"] = condition_factors(DATASETS[cfg.data.name], cfg.data.condition)
    if cfg.train.param_mse > 0:  # the generator takes the data's parameters (validate.py: gan, data with them)
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

    Folder datasets list and split the folder once (or read ``data.splits``) and share the
    lists; ``sandbox.data.splits_of(datasets["train"])`` returns them for the run directory.
    Every labelled split built is checked here, and only here, for masks that are all empty or
    all full (``FolderDataset.check_masks``: certain, and one mask read for a usual split).
    ``data.condition`` wraps each split in :class:`~sandbox.data.conditions.Conditioned` (under the subset
    and the augmentation): its samples carry ``"condition"``.
    """
    d = cfg.data
    cls = DATASETS[d.name]
    augment = build_augment(d.augment) if "train" in splits else None  # config errors before any file is read
    if issubclass(cls, (FolderDataset, ImageFolder)):
        labelled = issubclass(cls, FolderDataset)
        mask_dir, depth_dir = (d.mask_dir, d.depth_dir) if labelled else (None, None)
        if labelled and "depth" in cfg.loss and not depth_dir:
            raise ConfigError("loss.depth: data.depth_dir is not set, so the folder has no depth maps; "
                              "set data.depth_dir to the depth sub-folder or remove loss.depth")
        root = check_root(d.root, f"{d.image_dir}/" + (f" and {mask_dir}/" if labelled else ""))
        shared = resolve_splits(root, d.image_dir, mask_dir, depth_dir, cfg.seed, d.val_fraction,
                                d.test_fraction, d.train_fraction, d.splits, d.group_by)
        common = dict(root=root, image_dir=d.image_dir, size=d.size, resize=d.resize, seed=cfg.seed,
                      splits=shared, cache=d.cache)
        if labelled:
            common.update(mask_dir=mask_dir, depth_dir=depth_dir, mask_threshold=d.mask_threshold,
                          mask_resize=d.mask_resize, classes=target_classes(cfg).get("mask"),
                          ignore_index=d.ignore_index)
        out = {s: cls(split=s, **common) for s in splits}
        if labelled:
            for ds in out.values():
                ds.check_masks()
        out = _conditioned(out, d.condition)
    else:
        counts = {"train": d.num_train, "val": d.num_val, "test": d.num_test}
        extra = {"multilabel": True} if d.multilabel else {}  # validate.py: only datasets with class targets
        out = {s: cls(split=s, num=counts[s], size=d.size, seed=cfg.seed, difficulty=d.difficulty,
                      seq_len=d.seq_len, cache=d.cache, **extra) for s in splits}
        out = _conditioned(out, d.condition)
        if "train" in out and d.train_fraction < 1:  # a seeded random subset of the num_train samples
            out["train"] = Subset(out["train"], random_subset(d.num_train, d.train_fraction, cfg.seed))
    if augment is not None:
        out["train"] = Augmented(out["train"], augment, seed=cfg.seed)
    return out


def _conditioned(out: dict[str, Dataset], condition: str | None) -> dict[str, Dataset]:
    """Each split yielding ``sample["condition"]`` for ``data.condition`` (file names parsed here, so a bad
    one stops before training); unchanged without one."""
    return out if condition is None else {s: Conditioned(ds, condition) for s, ds in out.items()}


def build_loss(cfg: Config) -> CompositeLoss:
    """The CompositeLoss of ``cfg.loss`` (empty for a model that takes none) with ``cfg.loss_balance``,
    told which of the model's outputs are logits (``ModelSpec.logit_targets``: ``mask``), so that a
    loss of probabilities on them (``mask: {mse: 1}``) gets ``sigmoid(logits)``."""
    balance = dataclasses.asdict(cfg.loss_balance) if cfg.loss_balance is not None else None
    return build_composite_loss(cfg.loss or {}, balance=balance, logit_targets=MODELS[cfg.model.name].logit_targets)
