"""Masks read as their author meant them: the value range of the format, the shape of the image.

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

Class maps (``to_class_map``, with ``data.classes``): classes with colours read palette PNGs through
their palette and RGB masks by their colour; classes without colours read index masks (grey 8/16-bit,
or a palette PNG's indices, as PASCAL VOC stores them), the value being the class id.
``data.ignore_index`` marks unlabelled pixels by value (index masks) or palette index (palette PNGs).
A colour or id that no class names stops with one line naming the file, the value and the known classes.

Aligning (``fit_mask``): a mask of another size than its image is resized to it with nearest
neighbour when the two have the same aspect ratio, within ``ASPECT_TOLERANCE`` (2 %) or one pixel
of rounding (real datasets store masks smaller than their image, e.g. 433x577 for 480x640). Another
aspect ratio is an error naming both files, unless ``mask_resize="stretch"`` (``data.mask_resize``).
Images are shown rotated by their EXIF orientation (as viewers and labelling tools do); a mask drawn
on the stored pixels of a photo rotated by 90 degrees has the swapped aspect ratio, and the error
says so. A 180-degree rotation or a square photo keeps the aspect ratio and cannot be told apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from sandbox.data.classes import ClassSpec, describe
from sandbox.errors import SandboxError

ASPECT_TOLERANCE = 0.02  # relative difference of height/width ratios still taken as the same aspect
_SCALES = (1, 255, 65535)  # full scales of grey-level masks: 0/1, 8-bit, 16-bit
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees (width <-> height)


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


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1 when absent or unreadable); reads the header only."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1


def aspect_differs(hw: tuple[int, int], ref_hw: tuple[int, int]) -> bool:
    """Whether ``(h, w)`` has another aspect ratio than ``ref_hw``: beyond ``ASPECT_TOLERANCE`` and
    beyond one pixel of rounding (a small mask scaled down from its image rounds its sides)."""
    (h, w), (ref_h, ref_w) = hw, ref_hw
    off = min(abs(h - w * ref_h / ref_w), abs(w - h * ref_w / ref_h))
    return abs(h * ref_w / (w * ref_h) - 1) > ASPECT_TOLERANCE and off > 1


def align(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a mask or depth map to ``(H, W)`` with nearest neighbour (labels stay labels)."""
    if arr.shape[:2] == tuple(hw):
        return arr
    return cv2.resize(arr, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


def fit_mask(mask: np.ndarray, image_hw: tuple[int, int], mask_path: Path, image_path: Path,
             mask_resize: str = "error") -> np.ndarray:
    """``mask`` at its image's ``(H, W)``; another aspect ratio is an error naming both files
    unless ``mask_resize == "stretch"`` (module doc)."""
    if mask_resize == "error" and mask.shape[:2] != tuple(image_hw) and aspect_differs(mask.shape[:2], image_hw):
        raise SandboxError(_aspect_message(mask.shape[:2], image_hw, Path(mask_path), Path(image_path)))
    return align(mask, image_hw)


def _aspect_message(hw, image_hw, mask_path: Path, image_path: Path) -> str:
    (h, w), (ih, iw) = hw, image_hw
    turned = {p: exif_orientation(p) in _SWAPS_AXES for p in (image_path, mask_path)}
    why = ""
    if turned[image_path] != turned[mask_path] and not aspect_differs((w, h), image_hw):
        if turned[image_path]:
            why = (f" after its EXIF rotation (orientation {exif_orientation(image_path)}), and the mask matches "
                   f"its stored pixels ({ih}x{iw}): rotate the mask the same way or save the image upright")
        else:
            why = (f", and the mask is rotated by its EXIF orientation ({exif_orientation(mask_path)}) while the "
                   "image is not: save the mask upright")
    return (f"{mask_path}: mask is {w}x{h} but its image {image_path} is {iw}x{ih}{why}; expected the same "
            f"aspect ratio (within {ASPECT_TOLERANCE:.0%}) so that the mask can be resized to its image; "
            "set data.mask_resize=stretch to stretch such masks knowingly")


def _rgb_values(im: Image.Image) -> np.ndarray:
    """``(H, W)`` int32 ``0xRRGGBB`` of a palette or colour mask (alpha dropped)."""
    if im.mode == "P":
        pal = np.asarray(im.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
        pal = np.concatenate([pal, np.zeros((256 - len(pal), 3), np.uint8)])
        rgb = pal[np.asarray(im)]
    else:
        rgb = np.asarray(im.convert("RGB"))
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def to_class_map(im: Image.Image, classes: tuple[ClassSpec, ...], path: str | Path,
                 ignore_index: int | None = None) -> np.ndarray:
    """``PIL image -> (H, W) int16`` class ids in ``0..K-1``, -1 unlabelled (module doc); an unknown colour
    or id is one line naming ``path``, the value and the known classes."""
    k = len(classes)
    unlabelled = np.zeros(im.size[::-1], bool)
    if ignore_index is not None and im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
        unlabelled = np.asarray(im) == ignore_index
    if classes[0].color is not None:  # colours name the classes
        values = _rgb_values(im)
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in (c.color for c in classes)], np.int64)
        order = np.argsort(keys)
        pos = np.searchsorted(keys[order], values).clip(0, k - 1)
        ids = order[pos].astype(np.int16)
        unknown = (keys[order][pos] != values) & ~unlabelled
        what = lambda v: f"colour #{int(v):06x}"  # noqa: E731
    else:  # index masks: the value is the id
        if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            raise SandboxError(f"{path}: a {im.mode} mask, but data.classes gives no colours; expected an index "
                               "mask (grey 8/16-bit or palette PNG of class ids), or colours in data.classes "
                               "({name: '#rrggbb'}) for colour masks")
        values = np.asarray(im).astype(np.int64)
        ids = values.clip(-1, k - 1).astype(np.int16)
        unknown = ((values < 0) | (values >= k)) & ~unlabelled
        what = lambda v: f"value {int(v)}"  # noqa: E731
    if unknown.any():
        first = values[unknown][0]
        ignore = f"; data.ignore_index is {ignore_index}" if ignore_index is not None else ""
        raise SandboxError(f"{path}: {what(first)} ({int((values == first).sum())} px) is no class of "
                           f"data.classes; known: {describe(classes)}{ignore}")
    ids[unlabelled] = -1
    return ids
