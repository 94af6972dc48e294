"""Derived values: what a config implies but does not say, filled in once after parsing.

Returns a new :class:`Config`; the one given is left as it was.
"""
from __future__ import annotations

import dataclasses
import logging

from sandbox.config.schema import Config
from sandbox.models import MODELS

log = logging.getLogger("sandbox")


def resolve(cfg: Config) -> Config:
    """``model.size`` of a generative model defaults to ``data.size`` (its decoder's output side is
    fixed at build time); a missing ``loss`` section is the model's default loss, and a model whose
    trainer takes no loss (the GAN) gets none (a section given anyway, as configs of earlier versions
    carried, is dropped with a warning). Unknown model names are left for validation to report."""
    m = cfg.model
    if m.name not in MODELS:
        return cfg
    spec = MODELS[m.name]
    if spec.task == "generative" and m.size is None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, size=cfg.data.size))
    if not spec.takes_loss:
        if cfg.loss:
            log.warning("loss: the %s trainer optimises its own objective and takes no loss section; ignored",
                        spec.trainer)
        cfg = dataclasses.replace(cfg, loss={})
    elif cfg.loss is None:
        cfg = dataclasses.replace(cfg, loss=dict(spec.default_loss or {}))
    return cfg
