"""Trainers: ``TRAINERS[name](cfg, model, datasets, loss=...)``, each on the engine's skeleton
(:class:`sandbox.engine.trainer.Trainer`); a model's spec names its trainer.

    supervised      image -> named targets (mask, depth) with a per-target composite loss
    autoencoder/vae the reconstruction trainer: the model's own objective on the registry loss
    gan             the adversarial game (generator vs discriminator); no loss section
    aae             reconstruction, then the latent discriminator and the encoder fooling it
    denoising       ddpm / flow: the diffusion or flow-matching process's loss on a time-conditioned net

``build_trainer(cfg)``: data, model, loss and the trainer that drives them (resume included).
``stages.fit_stages(cfg)``: a config with ``stages:``, one trainer per stage under one run directory.
"""
from sandbox.build import build_data, build_loss, build_model
from sandbox.config import Config
from sandbox.engine.checkpoint import resume_target
from sandbox.errors import ConfigError
from sandbox.models import MODELS
from sandbox.registry import Registry
from sandbox.trainers.adversarial import AAETrainer, GANTrainer
from sandbox.trainers.denoising import DenoisingTrainer
from sandbox.trainers.reconstruction import ReconstructionTrainer
from sandbox.trainers.supervised import SupervisedTrainer

TRAINERS: Registry = Registry("trainer")
TRAINERS.register("supervised")(SupervisedTrainer)
TRAINERS.register("autoencoder")(ReconstructionTrainer)
TRAINERS.register("vae")(ReconstructionTrainer)
TRAINERS.register("gan")(GANTrainer)
TRAINERS.register("aae")(AAETrainer)
TRAINERS.register("denoising")(DenoisingTrainer)


def build_trainer(cfg: Config):
    """Everything for ``cfg``: data, model, loss and the trainer that drives them. A ``train.resume``
    run continues under its own name and directory (and a folder run with its exact splits). A config with
    ``stages:`` is trained by :func:`sandbox.trainers.stages.fit_stages` (one trainer per stage)."""
    if cfg.stages:
        from sandbox.invocation import command  # a package file imports only what it re-exports

        raise ConfigError(f"{cfg.source or 'config'}: stages: a staged config trains stage after stage: "
                          f"{command('train')} --config <it>, or sandbox.trainers.stages.fit_stages(cfg)")
    cfg = resume_target(cfg)
    trainer = TRAINERS[MODELS[cfg.model.name].trainer]
    return trainer(cfg, build_model(cfg), build_data(cfg, ("train", "val")), loss=build_loss(cfg))


__all__ = ["TRAINERS", "build_trainer"]
