"""Dataset registry: ``DATASETS[name](split=..., **opts) -> torch Dataset`` of sample dicts.

Every dataset class declares ``targets`` (the keys a loss may name, e.g. ``mask``,
``depth``) and returns ``{"image": (3, H, W) in [0, 1], <target>: (K, H, W), "index": int}``.

  * ``dancers``: synthetic person segmentation with depth and body parts (``parts``, a class map:
    :mod:`sandbox.data.synthetic`; classes as data: :mod:`sandbox.data.classes`).
  * ``folder``: images + masks [+ depth] from folders, paired by file stem (:mod:`sandbox.data.folders`;
    how masks are binarised and fitted to their image: :mod:`sandbox.data.masks`).
  * ``images``: an unlabelled image folder (``targets = ("image",)``).

Seeded splits and their CSV files: :mod:`sandbox.data.splits`. Augmentations from YAML and
the deterministic ``Augmented`` wrapper: :mod:`sandbox.data.transforms`.
"""
from sandbox.registry import Registry

DATASETS: Registry = Registry("dataset")

from sandbox.data.folders import FolderDataset, ImageFolder, splits_of  # noqa: E402
from sandbox.data.synthetic import Dancers  # noqa: E402
from sandbox.data.attractors import Attractors  # noqa: E402

DATASETS.register("dancers")(Dancers)
DATASETS.register("folder")(FolderDataset)
DATASETS.register("images")(ImageFolder)
DATASETS.register("attractors")(Attractors)

__all__ = ["DATASETS", "Dancers", "FolderDataset", "ImageFolder", "splits_of"]
