"""Real images from folders: ``folder`` (images + masks [+ depth]) and ``images`` (unlabelled).

Samples follow the house contract: ``{"image": (3, S, S) float in [0, 1], "mask": (1, S, S)
in {0, 1}, ["depth": (1, S, S) float,] "index": int}`` (``images``: image and index only).

Reading rules:
  * images become RGB: grayscale is repeated, palette expanded, alpha dropped, 16-bit scaled
    to 8-bit (``value / 65535``); EXIF rotation is applied, as image viewers and labelling tools do.
  * masks are binarised by ``sandbox.data.masks``: a pixel is foreground when ``value >
    mask_threshold * level``, with ``level`` the mask's own full scale (0/1, 0/255 in 8 or 16 bits,
    palettes: see there). Masks with many grey levels (JPEG masks, soft edges) are accepted under
    the same rule; a warning is logged once per dataset naming the first such file.
  * a mask whose size differs from its image is resized to it with nearest neighbour when both
    have the same aspect ratio; another aspect ratio is an error naming both files unless
    ``mask_resize="stretch"``. A depth map is resized to its image. Then image, mask and depth
    are resized to ``size`` (see ``fit_to_size``).
  * ``check_masks()`` (run by ``build_data`` on every split it builds) stops a split whose masks
    are all empty, or all full, at ``mask_threshold``.
  * with ``classes`` (``data.classes``) masks are class maps instead (``sandbox.data.masks.to_class_map``:
    palette, RGB colour or index masks): ``"mask": (1, S, S)`` float class ids, -1 unlabelled (also the
    padding of ``resize=pad``), resized with nearest neighbour; ``check_masks()`` reads every mask of the
    split once, so an unknown colour stops before training, and says once which classes never occur.
  * depth maps: 16-bit PNG -> ``value / 65535``, 8-bit -> ``value / 255``, float TIFF / ``.npy`` as is.

Files are decoded lazily in ``__getitem__``; ``cache=True`` keeps the resized arrays (about
``4 * S * S`` bytes per sample). ``check()`` reads every file once to find bad ones upfront.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from sandbox.data.classes import target_classes
from sandbox.data.masks import align, exif_orientation, fit_mask, to_class_map, to_mask
from sandbox.data.splits import SPLITS, Item, check_root, resolve_splits
from sandbox.data.transforms import fit_to_size
from sandbox.errors import ConfigError, SandboxError

log = logging.getLogger("sandbox")
_GREY_WARNED: set[str] = set()  # mask folders already warned about (once per process, not per split)


def open_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully (EXIF rotation applied); one clear error for empty, unreadable or truncated files."""
    path = Path(path)
    try:
        nbytes = path.stat().st_size
    except OSError:
        raise SandboxError(f"{path}: no such file; expected an image file") from None
    if nbytes == 0:
        raise SandboxError(f"{path}: empty file (0 bytes); expected an image file")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SandboxError(f"{path}: unreadable or truncated image ({reason}); expected a complete "
                           "image file (jpg, png, bmp, tif, webp)") from None


def _is16(im: Image.Image) -> bool:
    return im.mode.startswith("I;16") or im.mode == "I"


def to_rgb(im: Image.Image) -> np.ndarray:
    """``PIL image -> (H, W, 3) uint8``."""
    if _is16(im) or im.mode == "F":
        arr = np.asarray(im, dtype=np.float32) / (65535.0 if _is16(im) else 1.0)
        gray = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("P", "PA"):  # via RGBA: palettes with transparency would warn otherwise
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def to_depth(path: Path) -> np.ndarray:
    """``depth file -> (H, W) float32``: 16-bit / 65535, 8-bit / 255, float TIFF and ``.npy`` as stored."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path)
        except (OSError, ValueError) as exc:
            raise SandboxError(f"{path}: unreadable .npy depth map ({exc})") from None
    else:
        im = open_image(path)
        if im.mode not in ("L", "F", "I") and not _is16(im):
            raise SandboxError(f"{path}: depth map in mode {im.mode}; expected one channel "
                               "(8- or 16-bit PNG, float TIFF or .npy)")
        arr = np.asarray(im, dtype=np.float32) / (65535.0 if _is16(im) else 255.0 if im.mode == "L" else 1.0)
    arr = np.squeeze(np.asarray(arr, dtype=np.float32))
    if arr.ndim != 2:
        raise SandboxError(f"{path}: depth map of shape {arr.shape}; expected (H, W)")
    return arr


class _FolderBase(Dataset):
    """Shared by ``folder`` and ``images``: split lists, lazy decoding, cache, ``meta`` and ``check``."""

    expected = ""  # the layout, for error messages
    split_from_files = True  # its splits are drawn from one file list (data.group_by applies)

    @classmethod
    def from_config(cls, cfg, splits: tuple[str, ...], wrap=lambda ds: ds) -> dict:
        """``{split: dataset}`` of ``cfg.data``: the folder listed and split once (or ``data.splits`` read), the
        lists shared by the splits (``sandbox.data.splits_of``); each split passed through ``wrap``."""
        d = cfg.data
        options = cls.config_options(cfg)
        mask_dir = options.get("mask_dir")
        root = check_root(d.root, f"{d.image_dir}/" + (f" and {mask_dir}/" if mask_dir else ""))
        shared = resolve_splits(root, d.image_dir, mask_dir, options.get("depth_dir"), cfg.seed,
                                d.val_fraction, d.test_fraction, d.train_fraction, d.splits, d.group_by)
        out = {s: cls(root=root, split=s, image_dir=d.image_dir, size=d.size, resize=d.resize, seed=cfg.seed,
                      splits=shared, cache=d.cache, **options) for s in splits}
        return {s: wrap(cls.checked(ds)) for s, ds in out.items()}

    @classmethod
    def config_options(cls, cfg) -> dict:
        """The constructor arguments of ``cfg`` beyond the shared folder ones (none for unlabelled images)."""
        return {}

    @staticmethod
    def checked(ds: "_FolderBase") -> "_FolderBase":
        """``ds`` after the checks a built split gets (none for unlabelled images)."""
        return ds

    def __init__(self, root, split: str, image_dir: str, mask_dir: Optional[str], depth_dir: Optional[str],
                 size: int, resize: str, seed: int, val_fraction: float, test_fraction: float,
                 train_fraction: float, splits, cache: bool):
        if split not in SPLITS:
            raise SandboxError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        self.root = check_root(root, self.expected.format(image_dir=image_dir, mask_dir=mask_dir))
        if isinstance(splits, dict):  # resolved once by the caller and shared by the three splits
            self.splits = splits
        else:
            self.splits = resolve_splits(self.root, image_dir, mask_dir, depth_dir, seed, val_fraction,
                                         test_fraction, train_fraction, splits)
        self.split, self.items = split, self.splits[split]
        self.size, self.resize = size, resize
        self._cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def path(self, index: int, key: str = "image") -> Path:
        return self.root / getattr(self.items[index], key)

    def meta(self, index: int) -> dict:
        """``{"stem", "path", "orig_hw", "box", "size"}``: what ``unfit`` needs to map a prediction back."""
        try:
            with Image.open(self.path(index)) as im:  # header only: no decoding
                w, h = im.size
            if exif_orientation(self.path(index)) in (5, 6, 7, 8):  # rotated by 90 degrees, as open_image applies
                w, h = h, w
        except (OSError, ValueError, SyntaxError):
            open_image(self.path(index))  # raises the one-line error naming the file
            raise
        _, meta = fit_to_size(np.zeros((h, w), np.uint8), self.size, self.resize, "nearest")
        return {"stem": self.items[index].stem, "path": str(self.path(index)), **meta}

    def _decode(self, index: int) -> tuple:
        """Resized arrays of one sample (subclasses)."""
        raise NotImplementedError

    def arrays(self, index: int) -> tuple:
        """``index -> (image (S, S, 3) uint8, ...)`` decoded on first use, then cached when ``cache``."""
        if not 0 <= index < len(self.items):
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        arrays = self._decode(index)
        if self._cache is not None:
            self._cache[index] = arrays
        return arrays

    def check(self) -> dict:
        """Read every file of every split once; one error naming the first bad file, else a summary."""
        errors, grey = [], 0
        for items in self.splits.values():
            for it in items:
                try:
                    grey += self._read(it)[1] > 2
                except SandboxError as exc:
                    errors.append(str(exc))
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise SandboxError(f"{len(errors)} unreadable file(s) under {self.root}: {errors[0]}{more}")
        return {"items": sum(len(v) for v in self.splits.values()), "grey_masks": grey}

    def _read(self, it: Item) -> tuple:
        """Full-size arrays of one item and its mask's number of distinct values (subclasses)."""
        raise NotImplementedError


class FolderDataset(_FolderBase):
    """Labelled folder: ``{"image": (3, S, S), "mask": (1, S, S), ["depth": (1, S, S),] "index"}``.

    ``targets`` is ``("mask", "depth")`` on the class (what a config may name) and ``("mask",)``
    on an instance without ``depth_dir``.
    """

    targets = ("mask", "depth")
    expected = "{image_dir}/ and {mask_dir}/"
    config_classes = True  # data.classes names the classes of its masks

    @classmethod
    def config_options(cls, cfg) -> dict:
        """Masks (and depth maps) of ``cfg.data``; ``loss.depth`` needs ``data.depth_dir``."""
        d = cfg.data
        if "depth" in (cfg.loss or {}) and not d.depth_dir:
            raise ConfigError("loss.depth: data.depth_dir is not set, so the folder has no depth maps; "
                              "set data.depth_dir to the depth sub-folder or remove loss.depth")
        return dict(mask_dir=d.mask_dir, depth_dir=d.depth_dir, mask_threshold=d.mask_threshold,
                    mask_resize=d.mask_resize, classes=target_classes(cls, d.classes).get("mask"),
                    ignore_index=d.ignore_index)

    @staticmethod
    def checked(ds: "FolderDataset") -> "FolderDataset":
        """Every labelled split built is checked for masks all empty or all full (:meth:`check_masks`)."""
        ds.check_masks()
        return ds

    def __init__(self, root=None, split: str = "train", image_dir: str = "images", mask_dir: str = "masks",
                 depth_dir: Optional[str] = None, size: int = 128, resize: str = "stretch",
                 mask_threshold: float = 0.5, mask_resize: str = "error", seed: int = 0, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, train_fraction: float = 1.0, splits=None, cache: bool = True,
                 classes=None, ignore_index: Optional[int] = None):
        super().__init__(root, split, image_dir, mask_dir, depth_dir, size, resize, seed, val_fraction,
                         test_fraction, train_fraction, splits, cache)
        self.mask_threshold, self.mask_resize = mask_threshold, mask_resize
        self.mask_classes, self.ignore_index = classes, ignore_index  # ClassSpecs: masks are class maps
        self.targets = ("mask", "depth") if depth_dir else ("mask",)
        for name, items in self.splits.items():
            for key in self.targets:
                if any(getattr(it, key) is None for it in items):
                    raise SandboxError(f"split {name!r} lists images without a {key} file; "
                                       f"expected a {key} column (data.splits) or data.{key}_dir")

    def _read(self, it: Item) -> tuple:
        """Full-size ``(image (H, W, 3) uint8, mask (H, W) uint8, depth (H, W) float32 | None), levels``."""
        image_path, mask_path = self.root / it.image, self.root / it.mask
        img = to_rgb(open_image(image_path))
        if self.mask_classes:  # ids + 1 in uint16: 0 is unlabelled, so resize=pad's zeros are unlabelled too
            mask, levels = (to_class_map(open_image(mask_path), self.mask_classes, mask_path,
                                         self.ignore_index) + 1).astype(np.uint16), 0
        else:
            mask, levels, _ = to_mask(open_image(mask_path), self.mask_threshold)
        mask = fit_mask(mask, img.shape[:2], mask_path, image_path, self.mask_resize)
        depth = align(to_depth(self.root / it.depth), img.shape[:2]) if "depth" in self.targets else None
        return (img, mask, depth), levels

    def check_masks(self) -> None:
        """Stop when every mask of this split is empty (or every one full) at ``mask_threshold``:
        training on it would end with a Dice of 0 and no other sign.

        Run where the datasets are built, not on the fly in ``__getitem__``: there an empty split
        would cost a whole epoch before it shows, and with ``num_workers > 0`` each worker process
        sees only its share of the masks, so none could conclude. The scan reads masks only and
        stops once it has seen foreground and background (the first mask, in a usual folder; a
        few, in one where most masks are empty); it reads every mask only when it must conclude,
        so "all empty" is certain, never a guess from a sample.
        """
        if self.mask_classes:
            return self._check_classes()
        empty = full = True
        largest = 0.0
        for it in self.items:
            read = to_mask(open_image(self.root / it.mask), self.mask_threshold)
            largest = max(largest, read.largest)
            empty, full = empty and not read.mask.any(), full and bool(read.mask.all())
            if not (empty or full):
                return
        if not self.items:
            return
        where = f"{self.split} split: all {len(self.items)} masks in {(self.root / self.items[0].mask).parent}"
        at = f"data.mask_threshold={self.mask_threshold:g}"
        if empty:
            raise SandboxError(f"{where} are empty at {at} (largest mask value {largest:g}); expected some "
                               "foreground: check that data.mask_dir names the masks and that they are drawn, "
                               "or lower data.mask_threshold")
        raise SandboxError(f"{where} are full (every pixel foreground) at {at}; expected some background: check "
                           "that data.mask_dir names the masks, not the images, or raise data.mask_threshold")

    def _check_classes(self) -> None:
        """Class maps: read every mask of the split (an unknown colour stops here, before training) and say
        once which classes never occur in it (their IoU is then absent, not a silent NaN)."""
        seen = np.zeros(len(self.mask_classes), bool)
        for it in self.items:
            ids = to_class_map(open_image(self.root / it.mask), self.mask_classes, self.root / it.mask,
                               self.ignore_index)
            seen[np.unique(ids[ids >= 0])] = True
            if seen.all():
                return
        if self.items:
            absent = [c.name for c, s in zip(self.mask_classes, seen) if not s]
            log.warning("%s split: class(es) %s never occur in its %d masks under %s; their IoU is reported "
                        "as absent and left out of the mIoU", self.split, ", ".join(absent), len(self.items),
                        (self.root / self.items[0].mask).parent)

    def _decode(self, index: int) -> tuple:
        (img, mask, depth), levels = self._read(self.items[index])
        folder = str(self.path(index, "mask").parent)
        if levels > 2 and folder not in _GREY_WARNED:
            _GREY_WARNED.add(folder)
            log.warning("%s: mask has %d grey levels; binarised as value > %.2f x its level (data.mask_threshold)",
                        self.path(index, "mask"), levels, self.mask_threshold)
        img, _ = fit_to_size(img, self.size, self.resize, "image")
        mask, _ = fit_to_size(mask, self.size, self.resize, "nearest" if self.mask_classes else "mask")
        if depth is not None:
            depth, _ = fit_to_size(depth, self.size, self.resize, "nearest")
        return img, mask, depth

    def __getitem__(self, index: int) -> dict:
        img, mask, depth = self.arrays(index)
        sample = {"image": torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0),
                  "mask": torch.from_numpy(mask[None].astype(np.float32) - (1 if self.mask_classes else 0))}
        if depth is not None:
            sample["depth"] = torch.from_numpy(depth[None].copy())
        sample["index"] = index
        return sample


class ImageFolder(_FolderBase):
    """Unlabelled folder (``image_dir: "."`` for a flat one): ``{"image": (3, S, S), "index"}``."""

    targets = ("image",)
    expected = "the images in {image_dir}/"

    def __init__(self, root=None, split: str = "train", image_dir: str = "images", size: int = 128,
                 resize: str = "stretch", seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 train_fraction: float = 1.0, splits=None, cache: bool = True):
        super().__init__(root, split, image_dir, None, None, size, resize, seed, val_fraction,
                         test_fraction, train_fraction, splits, cache)

    def _read(self, it: Item) -> tuple:
        return (to_rgb(open_image(self.root / it.image)),), 0

    def _decode(self, index: int) -> tuple:
        (img,), _ = self._read(self.items[index])
        return (fit_to_size(img, self.size, self.resize, "image")[0],)

    def __getitem__(self, index: int) -> dict:
        (img,) = self.arrays(index)
        return {"image": torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0), "index": index}


def splits_of(dataset) -> Optional[dict]:
    """The resolved ``{"train", "val", "test"} -> [Item]`` lists behind a folder dataset (also
    through ``Augmented`` or ``Subset``), for ``write_splits``; None for synthetic data."""
    while not isinstance(dataset, _FolderBase) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset.splits if isinstance(dataset, _FolderBase) else None
