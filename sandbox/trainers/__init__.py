"""Trainer registry: ``TRAINERS[name](cfg, model, datasets, ...)``; all share trainers.base.Trainer."""
from sandbox.registry import Registry

TRAINERS: Registry = Registry("trainer")

from sandbox.trainers.supervised import SupervisedTrainer  # noqa: E402

TRAINERS.register("supervised")(SupervisedTrainer)
from sandbox.trainers import adversarial, generative  # noqa: E402,F401  (autoencoder, vae, gan, aae register)
