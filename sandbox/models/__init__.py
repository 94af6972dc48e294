"""Model registry: ``MODELS["unet"](targets={"mask": 1}, width=16, depth=3) -> nn.Module``.

``check_model_options(name, options)`` raises a ConfigError naming ``model.<key>`` for an
illegal option or combination (config validation calls it; so does every builder).
"""
from sandbox.registry import Registry

MODELS: Registry = Registry("model")

# Registration happens on import of the modules below.
from sandbox.models import segmentation  # noqa: E402,F401
from sandbox.models import adversarial, autoencoders  # noqa: E402,F401  (ae, vae, dcgan, aae)
from sandbox.models.segmentation import check_model_options  # noqa: E402,F401
