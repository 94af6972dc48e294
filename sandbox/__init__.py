"""sandbox: one encoder/decoder core for segmentation and generative image models.

    from sandbox import load_config, build_model, build_data, build_trainer
    cfg = load_config("configs/unet_dice.yaml", ["train.epochs=2"])
    build_trainer(cfg).fit()

The layers, lowest first, and what each may import: docs/architecture.md.
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no update check over the network

from sandbox.build import build_data, build_model  # noqa: E402
from sandbox.config import Config  # noqa: E402
from sandbox.config.loading import load_config  # noqa: E402
from sandbox.trainers import build_trainer  # noqa: E402

__all__ = ["Config", "load_config", "build_model", "build_data", "build_trainer"]
__version__ = "0.1.0"
