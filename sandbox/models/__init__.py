"""Model registry: ``MODELS["unet"](targets={"mask": 1}, width=16, depth=3) -> nn.Module``.

Each entry is a :class:`~sandbox.models.spec.ModelSpec` (task, trainer, options class, option checks).
``check_model_options(name, options)`` raises a ConfigError naming ``model.<key>`` for an
illegal option or combination (config validation calls it; so does every builder).

Every module of this package is imported here (:mod:`pkgutil`), so a family registers itself from its
own file: adding ``sandbox/models/<family>.py`` needs no edit anywhere else.
"""
import importlib
import pkgutil

from sandbox.models.spec import MODELS, ModelSpec, check_model_options, names_for

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "ModelSpec", "check_model_options", "names_for"]
