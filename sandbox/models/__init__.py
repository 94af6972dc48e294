"""Model registry: ``MODELS["unet"](targets={"mask": 1}, width=16, depth=3) -> nn.Module``."""
from sandbox.registry import Registry

MODELS: Registry = Registry("model")

# Registration happens on import of the modules below.
from sandbox.models import segmentation  # noqa: E402,F401
