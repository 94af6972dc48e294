"""Builders: a Config in, plain-argument modules out (modules never see the Config)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from sandbox.config import Config
from sandbox.data import DATASETS
from sandbox.losses import CompositeLoss, build_loss
from sandbox.models import MODELS


def model_kwargs(cfg: Config) -> dict:
    m = cfg.model
    kw = {k: v for k, v in vars(m).items() if k != "name" and v is not None}
    kw["targets"] = {t: 1 for t in cfg.loss}
    return kw


def build_model(cfg: Config) -> nn.Module:
    """``MODELS[cfg.model.name](**model options, targets={t: 1 for t in cfg.loss})``, initialised
    from ``cfg.seed`` alone (the global RNG is left untouched), so equal configs give equal weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return MODELS[cfg.model.name](**model_kwargs(cfg))


def build_data(cfg: Config, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Dataset]:
    d = cfg.data
    cls = DATASETS[d.name]
    counts = {"train": d.num_train, "val": d.num_val, "test": d.num_test}
    return {s: cls(split=s, num=counts[s], size=d.size, seed=cfg.seed, difficulty=d.difficulty,
                   seq_len=d.seq_len, cache=d.cache) for s in splits}


def build_loss_from(cfg: Config) -> CompositeLoss:
    return build_loss(cfg.loss)


def build_trainer(cfg: Config):
    """Everything for ``cfg``: data, model, loss and the trainer that drives them."""
    from sandbox.trainers import TRAINERS

    name = getattr(MODELS[cfg.model.name], "trainer", "supervised")
    return TRAINERS[name](cfg, build_model(cfg), build_data(cfg, ("train", "val")), loss=build_loss_from(cfg))
