"""Dataset registry: ``DATASETS[name](split=..., **opts) -> torch Dataset`` of sample dicts.

Every dataset class declares ``targets`` (the keys a loss may name, e.g. ``mask``,
``depth``) and returns ``{"image": (3, H, W) in [0, 1], <target>: (K, H, W), "index": int}``.
"""
from sandbox.registry import Registry

DATASETS: Registry = Registry("dataset")

from sandbox.data.synthetic import Dancers  # noqa: E402

DATASETS.register("dancers")(Dancers)
