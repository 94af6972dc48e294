"""Masks read as their author meant them: the value range of the format.

Binarising (``to_mask``): a pixel is foreground when ``value > mask_threshold * level``, with
``level`` the mask's own full scale, found from the values it holds rather than from its file format
(0/1 masks are common in 8-bit PNGs, 16-bit PNGs often hold 0/255: a format-wide max turned both
empty):

  * ``value``: grey masks (``L``, ``LA``, 16-bit, float, 1-bit) their value; colour masks their
    brightest channel, so red-on-black counts; palette masks are read through their palette: a grey
    palette gives its grey levels, a colour palette (a label map) makes every colour but black
    foreground (the index order is not used: ``quantize`` and GIMP often put white at index 0).
  * ``level``: a mask with at most two values is binary, and its largest value is its scale
    (0/1, 0/255, 0/k in any bit depth: k is foreground). A mask with more values (soft edges, JPEG)
    is scaled by the smallest of 1, 255 and 65535 at or above its largest value: on such a mask the
    largest value says little (an empty JPEG mask is noise of 0..3 and must stay empty; a soft
    8-bit mask that peaks at 200 is still cut at ``threshold x 255``).
  * an all-zero mask is empty at any threshold; ``mask_threshold`` is in ``[0, 1)`` (config check).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

_SCALES = (1, 255, 65535)  # full scales of grey-level masks: 0/1, 8-bit, 16-bit


class MaskRead(NamedTuple):
    mask: np.ndarray  # (H, W) uint8 in {0, 1}
    levels: int  # number of distinct values in the file (more than 2: a grey-level mask)
    largest: float  # the largest value compared (for messages: 0 means the file is all zero)


def mask_values(im: Image.Image) -> np.ndarray:
    """``PIL image -> (H, W)`` values that the threshold compares (see the module doc)."""
    if im.mode == "P":
        idx = np.asarray(im)
        pal = np.asarray(im.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
        pal = np.concatenate([pal, np.zeros((256 - len(pal), 3), np.uint8)])  # short palettes
        used = pal[np.unique(idx)]
        if (used == used[:, :1]).all():  # a grey palette: its grey levels
            return pal[:, 0][idx]
        return pal.any(axis=1).astype(np.uint8)[idx]  # a label map: every colour but black
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("L", "LA"):
        return np.asarray(im.getchannel(0))
    if im.mode.startswith("I") or im.mode == "F":
        return np.asarray(im)
    return np.asarray(im.convert("RGB")).max(axis=2)  # colour masks: the brightest channel


def mask_level(largest: float, levels: int) -> float:
    """The full scale of a mask whose largest value is ``largest`` (module doc)."""
    if largest <= 0 or levels <= 2:
        return largest
    return next((s for s in _SCALES if s >= largest), largest)


def to_mask(im: Image.Image, threshold: float) -> MaskRead:
    """``PIL image -> MaskRead((H, W) uint8 in {0, 1}, levels, largest)`` by the rule in the module doc."""
    values = mask_values(im)
    if values.dtype == np.uint8:
        levels = int(np.count_nonzero(np.bincount(values.ravel(), minlength=256)))
    else:
        levels = len(np.unique(values))
    largest = values.max().item() if values.size else 0
    if largest <= 0:
        return MaskRead(np.zeros(values.shape, np.uint8), levels, largest)
    return MaskRead((values > threshold * mask_level(largest, levels)).astype(np.uint8), levels, largest)

