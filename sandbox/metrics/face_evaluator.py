"""UTKFace crops: the domain evaluator learns age, gender and race from the file names.

UTKFace names its files ``<age>_<gender>_<race>_<timestamp>.jpg.chip.jpg`` (gender 0 male, 1 female; race 0-4:
white, black, asian, indian, others). :func:`face_evaluator` trains
:func:`sandbox.metrics.evaluators.cached_evaluator` on the images of a folder dataset's **train** split whose
names parse (a few UTKFace files lack a field: left out), regressing ``log(1 + age)`` (standardised; ages run
1-116 with most under 40) and classifying gender and race; its features then give the Fréchet distance, KID and
precision/recall of face samples (:func:`sandbox.metrics.evaluators.domain_scores`). The cache key holds the
hash of the training file list, so another split or folder trains another evaluator.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

import torch

from sandbox.errors import SandboxError
from sandbox.metrics.evaluators import STEPS, Evaluator, Targets, cached_evaluator

NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_")
RACES = 5
MIN_LABELLED = 0.9  # the share of a folder's names that must parse for it to be UTKFace


def utkface_labels(name: str) -> tuple[int, int, int] | None:
    """``(age, gender, race)`` from a UTKFace file name, None when it does not parse."""
    m = NAME.match(PurePosixPath(name).name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def is_utkface(dataset) -> bool:
    """Do (almost) all file names of a folder dataset's split parse as UTKFace names?"""
    items = getattr(dataset, "items", None)
    return bool(items) and sum(utkface_labels(it.image) is not None for it in items) >= MIN_LABELLED * len(items)


def face_evaluator(cache_dir, train, data_seed: int, steps: int = STEPS, images: int | None = None,
                   seed: int = 0) -> Evaluator:
    """The cached evaluator of the UTKFace images of ``train`` (a folder dataset, split ``train``; ``images``:
    at most this many of them, in the split's order; ``data_seed``: the seed that split the folder)."""
    if getattr(train, "split", None) != "train":
        raise SandboxError(f"face evaluator: trained on the train split only, got split {getattr(train, 'split', None)!r}")
    labelled = [(i, lab) for i, it in enumerate(train.items) if (lab := utkface_labels(it.image)) is not None]
    labelled = labelled[:images] if images else labelled
    if len(labelled) < 3:
        raise SandboxError(f"{train.root}: {len(labelled)} file names of the form <age>_<gender>_<race>_*.jpg; "
                           "the face evaluator needs UTKFace names")
    files = hashlib.sha256("\n".join(train.items[i].image for i, _ in labelled).encode()).hexdigest()[:12]

    def load():
        x = torch.stack([train[i]["image"] for i, _ in labelled])
        ages, genders, races = (torch.tensor([lab[k] for _, lab in labelled]) for k in range(3))
        y = Targets(regress=torch.log1p(ages.double())[:, None], names=("log_age",),
                    classes={"gender": genders.long(), "race": races.long()}, n_classes={"gender": 2, "race": RACES})
        return x, y, {"split": train.split, "indices": [i for i, _ in labelled]}

    key = {"dataset": "utkface", "size": int(train.size), "data_seed": data_seed,
           "files": files, "images": len(labelled)}
    return cached_evaluator(cache_dir, key, load, steps=steps, seed=seed)

