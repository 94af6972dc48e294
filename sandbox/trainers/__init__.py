"""Trainer registry: ``TRAINERS[name](cfg, model, datasets, ...)``; all share trainers.base.Trainer."""
from sandbox.registry import Registry

TRAINERS: Registry = Registry("trainer")

from sandbox.trainers.supervised import SupervisedTrainer  # noqa: E402

TRAINERS.register("supervised")(SupervisedTrainer)
