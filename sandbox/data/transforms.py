"""Augmentations from YAML, a deterministic augmenting wrapper, and resizing to the net's size.

``data.augment`` is a list of single-key mappings, each an albumentations transform and its
keyword arguments::

    augment:
      - HorizontalFlip: {p: 0.5}
      - Affine: {scale: [0.9, 1.1], rotate: [-10, 10], p: 0.5}
      - RandomBrightnessContrast: {p: 0.3}
      - OneOf: {transforms: [{Blur: {}}, {GaussNoise: {}}], p: 0.2}   # composes nest

Spatial transforms move image, mask and depth together (depth is a ``mask`` target, so it
stays float and uses nearest interpolation); photometric ones touch the image only.
"""
from __future__ import annotations

import difflib
import inspect
import random
import warnings
from typing import Any, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sandbox.errors import ConfigError

_AUGMENT_TAG = 0xA0C  # decorrelates augmentation streams from other uses of the run seed


def _albumentations():
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    import albumentations as A  # lazy: ~2 s to import, and only augmenting runs need it

    return A


def transform_names() -> list[str]:
    A = _albumentations()
    return sorted(n for n in dir(A) if not n.startswith("_") and inspect.isclass(getattr(A, n))
                  and issubclass(getattr(A, n), (A.BasicTransform, A.BaseCompose))
                  and n not in ("BasicTransform", "BaseCompose", "DualTransform", "ImageOnlyTransform"))


def _one_line(exc: Exception) -> str:
    # albumentations re-raises pydantic's ValidationError as a multi-line ValueError "from" it
    errors = getattr(exc, "errors", None) or getattr(exc.__cause__, "errors", None)
    if callable(errors):  # pydantic ValidationError: one "field: message" per problem
        try:
            return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in errors())
        except Exception:  # noqa: BLE001 - fall back to the plain message below
            pass
    return " ".join(str(exc).split())


def _build_one(item: Any, path: str):
    A = _albumentations()
    if not isinstance(item, dict) or len(item) != 1:
        raise ConfigError(f"{path}: got {item!r}, expected one mapping {{TransformName: {{options}}}}, "
                          "e.g. {HorizontalFlip: {p: 0.5}}")
    (name, kwargs), = item.items()
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{path}.{name}: got {kwargs!r}, expected a mapping of options, e.g. {{p: 0.5}}")
    names = transform_names()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=4, cutoff=0.5)
        raise ConfigError(f"{path}: unknown albumentations transform {name!r}"
                          + (f"; close matches: {', '.join(close)}" if close else "")
                          + f" (albumentations {A.__version__}: {len(names)} transforms)")
    cls = getattr(A, name)
    kwargs = dict(kwargs)
    if issubclass(cls, A.BaseCompose):
        inner = kwargs.get("transforms")
        if not isinstance(inner, list):
            raise ConfigError(f"{path}.{name}.transforms: expected a list of transforms")
        kwargs["transforms"] = [_build_one(t, f"{path}.{name}.transforms[{i}]") for i, t in enumerate(inner)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}.{name}: {_one_line(exc)}") from None
    for w in caught:
        # albumentations 2.x only warns about unknown keyword arguments; a typo must not pass silently
        if "are not valid for transform" in str(w.message):
            accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
            bad = [k for k in kwargs if k not in accepted]
            raise ConfigError(f"{path}.{name}: unknown option(s) {', '.join(bad) or str(w.message)}; "
                              f"accepted: {', '.join(accepted)}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # e.g. deprecations: pass on
    return transform


def build_augment(spec: Optional[list[dict]], path: str = "data.augment"):
    """``[{HorizontalFlip: {p: 0.5}}, ...]`` -> ``albumentations.Compose`` (None when empty).

    The Compose declares ``depth`` as a mask target (``additional_targets={"depth": "mask"}``).
    """
    if not spec:
        return None
    if not isinstance(spec, list):
        raise ConfigError(f"{path}: got {spec!r}, expected a list like [{{HorizontalFlip: {{p: 0.5}}}}]")
    A = _albumentations()
    transforms = [_build_one(item, f"{path}[{i}]") for i, item in enumerate(spec)]
    return A.Compose(transforms, additional_targets={"depth": "mask"}, seed=0)


def unaugmented(dataset: Dataset) -> Dataset:
    """The dataset under an :class:`Augmented` wrapper (the samples as stored), else ``dataset`` itself."""
    return dataset.dataset if isinstance(dataset, Augmented) else dataset


class Augmented(Dataset):
    """``dataset`` with ``transform`` applied to each sample; randomness from ``(seed, epoch, index)`` only.

    ``ds[(epoch, index)]`` is the sample ``index`` as augmented in ``epoch``: the same key gives
    the same sample in every process, worker and resumed run; ``ds[index]`` uses ``self.epoch``
    (0 unless :meth:`set_epoch` was called). ``epoch_keys = True`` asks the trainer's sampler to
    yield ``(epoch, index)`` tuples. The global ``random``/``numpy``/``torch`` RNGs are not used.

    Samples keep the wrapped dataset's contract: ``image (3, H, W)`` float in [0, 1] and every
    other ``(K, H, W)`` tensor (mask, depth, ...) moved with the image by spatial transforms.
    """

    epoch_keys = True

    def __init__(self, dataset: Dataset, transform, seed: int = 0):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0
        extra = {t: "mask" for t in getattr(dataset, "targets", ()) if t not in ("image", "mask", "depth")}
        if extra:  # further dense targets move like masks, too
            self.transform.add_targets(extra)
        self._mask_like = {"mask", "depth", *extra}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)  # targets, splits, meta(), ... of the wrapped dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        sample = self.dataset[index]
        inputs = {"image": np.ascontiguousarray(sample["image"].numpy().transpose(1, 2, 0))}
        for k in self._mask_like:
            if isinstance(sample.get(k), torch.Tensor):
                inputs[k] = np.ascontiguousarray(sample[k].numpy().transpose(1, 2, 0))  # copies: caches stay intact
        # fresh generators per sample: albumentations draws only from the ones it is given
        ss = np.random.SeedSequence([self.seed, _AUGMENT_TAG, int(epoch), int(index)])
        self.transform.set_random_state(np.random.default_rng(ss), random.Random(int(ss.generate_state(1)[0])))
        out = self.transform(**inputs)
        result = dict(sample)
        result["image"] = torch.from_numpy(np.ascontiguousarray(np.clip(out["image"], 0, 1).transpose(2, 0, 1)))
        for k in inputs:
            if k != "image":
                arr = out[k] if out[k].ndim == 3 else out[k][..., None]
                result[k] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return result


# ----------------------------------------------------------------------------- resize to the net's size

def _interp(kind: str, shrink: bool) -> int:
    if kind == "nearest":
        return cv2.INTER_NEAREST
    return cv2.INTER_AREA if shrink else cv2.INTER_LINEAR


def fit_to_size(img: np.ndarray, size: int, mode: str = "stretch", kind: str = "image") -> tuple[np.ndarray, dict]:
    """``img (H, W[, C]) -> (size, size[, C])`` and the ``meta`` that :func:`unfit` inverts.

    ``mode``: ``stretch`` (aspect not kept) or ``pad`` (aspect kept, centred, zeros around:
    background for masks). ``kind``: ``image`` (area when shrinking, bilinear when growing),
    ``mask`` (the same on {0, 1}, then >= 0.5: a pixel is foreground when most of its
    footprint is; plain nearest would alias thin structures at 5x downscaling) or ``nearest``
    (depth maps: no averaging across depth edges). ``meta = {"orig_hw", "box": (top, left, h, w), "size"}``.
    """
    if mode not in ("stretch", "pad"):
        raise ConfigError(f"data.resize: got {mode!r}, expected 'stretch' or 'pad'")
    h, w = img.shape[:2]
    if mode == "stretch":
        nh = nw = size
    else:
        scale = size / max(h, w)
        nh, nw = max(1, min(size, int(round(h * scale)))), max(1, min(size, int(round(w * scale))))
    top, left = (size - nh) // 2, (size - nw) // 2
    meta = {"orig_hw": (h, w), "box": (top, left, nh, nw), "size": size}
    shrink = nh * nw < h * w
    if kind == "mask":
        src = img.astype(np.float32)
        res = (cv2.resize(src, (nw, nh), interpolation=_interp("image", shrink)) >= 0.5).astype(img.dtype)
    else:
        res = cv2.resize(img, (nw, nh), interpolation=_interp(kind, shrink)) if (nh, nw) != (h, w) else img.copy()
    res = res.reshape(nh, nw, *img.shape[2:])
    if (nh, nw) == (size, size):
        return res, meta
    out = np.zeros((size, size, *img.shape[2:]), img.dtype)
    out[top:top + nh, left:left + nw] = res
    return out, meta


def unfit(pred, meta: dict, orig_hw: Optional[tuple[int, int]] = None):
    """Map a prediction ``(..., size, size)`` back to the original image: ``(..., H, W)``.

    Crops the valid box recorded by :func:`fit_to_size` and resizes it: bilinear for float
    predictions (probabilities, logits, depth), nearest for integer or boolean ones. Takes and
    returns a torch tensor or a numpy array.
    """
    h, w = orig_hw if orig_hw is not None else meta["orig_hw"]
    top, left, bh, bw = meta["box"]
    is_np = isinstance(pred, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(pred)) if is_np else pred
    crop = t[..., top:top + bh, left:left + bw]
    lead = crop.shape[:-2]
    x = crop.reshape(1, -1, bh, bw)
    if crop.is_floating_point():
        y = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    else:
        y = torch.nn.functional.interpolate(x.float(), size=(h, w), mode="nearest-exact").to(crop.dtype)
    y = y.reshape(*lead, h, w)
    return y.numpy() if is_np else y
