"""Model registry: ``MODELS["unet"](targets={"mask": 1}, width=16, depth=3) -> nn.Module``.

Each entry is a :class:`~sandbox.models.spec.ModelSpec` (task, trainer, option checks).
``check_model_options(name, options)`` raises a ConfigError naming ``model.<key>`` for an
illegal option or combination (config validation calls it; so does every builder).
"""
from sandbox.models import adversarial, autoencoders, denoising, segmentation  # noqa: F401  (each registers its models)
from sandbox.models.spec import MODELS, ModelSpec, check_model_options, names_for

__all__ = ["MODELS", "ModelSpec", "check_model_options", "names_for"]
