"""What a conditional generative model is conditioned on: ``data.condition`` -> ``sample["condition"]``.

``data.condition`` (default null: no condition, the samples unchanged) names the known factors of the data:

  * ``params``: the generating parameters of a dataset that declares ``param_names`` (attractors: the
    Clifford ``(a, b, c, d)`` each sample was drawn with, ``sample["params"]``), four continuous factors.
  * factors of a face folder's file names joined by ``|``, any of ``age``, ``gender``, ``race`` in the
    order wanted (``age|gender|race``, ``age``, ``gender|race``), for ``data.name: images`` or ``folder``.
    The names follow UTKFace's pattern ``{age}_{gender}_{race}_{date}.jpg`` (the aligned crops add
    ``.chip.jpg``): age in whole years (continuous), gender 0 male / 1 female (2 classes), race 0 white,
    1 black, 2 asian, 3 indian, 4 others (5 classes), date ``yyyymmddHHMMSSfff``; :data:`UTKFACE_NAME`
    is the regular expression. Every name of the split is parsed when the dataset is built, and a name
    that does not match stops there with one line naming the file and the pattern (a few UTKFace
    files lack the race field: remove them, or condition on a folder without them).

:class:`Conditioned` wraps a built split and adds ``"condition": (F,) float32`` to each sample: the
continuous values as they are, class ids as floats (the column layout :class:`sandbox.nn.condition.
ConditionEmbedding` reads; its ``factors`` are :func:`condition_factors`). :func:`conditions_of` reads
the ``(N, F)`` table of a split (through ``Subset`` and ``Augmented``; file names need no image decoded),
e.g. for the embedding's standardisation statistics.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch.utils.data import Dataset

from sandbox.data.folders import _FolderBase
from sandbox.data.splits import Subset
from sandbox.data.transforms import Augmented
from sandbox.errors import ConfigError, SandboxError, short
from sandbox.nn.condition import Factor

PARAMS = "params"
FACE_FACTORS = {"age": Factor("age", 0), "gender": Factor("gender", 2), "race": Factor("race", 5)}
UTKFACE_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.")  # age, gender, race, date, then the extension
UTKFACE_PATTERN = "{age}_{gender}_{race}_{date}.jpg (age 0-999, gender 0|1, race 0-4, date digits)"
ACCEPTED = (f"{PARAMS} (datasets with generating parameters, e.g. attractors) or UTKFace file-name factors "
            f"joined by '|' from {', '.join(FACE_FACTORS)} (data.name folder or images), e.g. age|gender|race")


def parse_utkface(name: str | Path) -> tuple[int, int, int]:
    """``(age, gender, race)`` from a UTKFace file name (a path: its last part); one line naming the file
    and the pattern when it does not match."""
    m = UTKFACE_NAME.match(PurePosixPath(str(name).replace("\\", "/")).name)
    if m is None:
        raise SandboxError(f"{name}: file name does not match the UTKFace pattern {UTKFACE_PATTERN}, which "
                           "data.condition reads the factors from; rename or remove the file")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def condition_factors(dataset_cls: Any, condition: str | None) -> tuple[Factor, ...] | None:
    """The factors ``data.condition`` names for a dataset class (None: no condition); ConfigError naming
    ``data.condition`` for a value this dataset cannot yield."""
    if condition is None:
        return None
    if not isinstance(condition, str) or not condition.strip():
        raise ConfigError(f"data.condition: got {short(condition)}; expected {ACCEPTED}")
    if condition == PARAMS:
        names = tuple(getattr(dataset_cls, "param_names", ()))
        if not names:
            raise ConfigError(f"data.condition: params, but dataset {getattr(dataset_cls, '__name__', dataset_cls)} "
                              "has no generating parameters (attractors has); expected a factor list for a "
                              "face folder, or null")
        return tuple(Factor(n, 0) for n in names)
    parts = [p.strip() for p in condition.split("|")]
    if any(p not in FACE_FACTORS for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"data.condition: got {short(condition)}; expected {ACCEPTED}, each factor once")
    if not (isinstance(dataset_cls, type) and issubclass(dataset_cls, _FolderBase)):
        raise ConfigError(f"data.condition: {short(condition)} is read from UTKFace file names, which only a "
                          "folder dataset has (data.name folder or images); expected params or null here")
    return tuple(FACE_FACTORS[p] for p in parts)


class Conditioned(Dataset):
    """``dataset`` (one built split) whose samples carry ``"condition": (F,) float32`` (see the module doc);
    every other attribute is the wrapped dataset's. File names are parsed here, once."""

    def __init__(self, dataset: Dataset, condition: str):
        self.dataset, self.condition = dataset, condition
        self.factors = condition_factors(type(dataset), condition)
        self._table = None if condition == PARAMS else self._parse(dataset)

    def _parse(self, dataset: _FolderBase) -> torch.Tensor:
        rows, bad = [], []
        for it in dataset.items:
            m = UTKFACE_NAME.match(PurePosixPath(it.image).name)
            if m is None:
                bad.append(it.image)
            else:
                rows.append([int(g) for g in m.groups()[:3]])
        if bad:
            more = f" (and {len(bad) - 1} more of the {dataset.split} split's {len(dataset.items)})" if len(bad) > 1 else ""
            raise SandboxError(f"{dataset.root / bad[0]}{more}: file name does not match the UTKFace pattern "
                               f"{UTKFACE_PATTERN}, which data.condition: {self.condition} reads; rename or remove it")
        cols = [list(FACE_FACTORS).index(f.name) for f in self.factors]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 3)[:, cols]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def table(self, indices=None) -> torch.Tensor:
        """``(N, F)`` float32: the conditions of ``indices`` (default every sample)."""
        indices = range(len(self)) if indices is None else indices
        if self._table is not None:
            return self._table[list(indices)].reshape(-1, len(self.factors))
        rows = [self.dataset[i]["params"] for i in indices]
        return torch.stack(rows).float() if rows else torch.zeros(0, len(self.factors))

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        if self._table is not None:
            sample["condition"] = self._table[index].clone()
        else:
            sample["condition"] = sample["params"].float().clone()
        return sample


def conditions_of(dataset) -> torch.Tensor:
    """``(N, F)``: the conditions of every sample of a split, through ``Augmented`` and ``Subset`` wrappers
    (a folder's come from its file names: no image decoded). SandboxError when the split has none."""
    indices = None
    while not isinstance(dataset, Conditioned):
        if isinstance(dataset, Subset):
            indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        elif not isinstance(dataset, Augmented):
            raise SandboxError("the dataset yields no condition; set data.condition (e.g. params, age|gender|race)")
        dataset = dataset.dataset
    return dataset.table(indices)
