"""Image folders: listing, pairing by file stem, seeded train/val/test splits, split CSVs.

Layout (sub-folder names are configurable)::

    <root>/<image_dir>/<stem>.<ext>     e.g. Training_Images/12.jpg
    <root>/<mask_dir>/<stem>.<ext>      e.g. Ground_Truth/12.png    (labelled folders)
    <root>/<depth_dir>/<stem>.<ext>     optional depth maps (.png, .tif, .npy)

The stem is the name before the LAST extension (``a.jpg.chip.jpg`` -> ``a.jpg.chip``).
Hidden files (``.DS_Store``) and files without an image extension (``Thumbs.db``) are ignored.

Splits are a pure function of the sorted stems and the seed, so they do not depend on the
order the filesystem lists files in; adding or removing files reshuffles them, which is why
a run writes its lists (``write_splits``) and ``data.splits`` can point back at them.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional

import numpy as np

from sandbox.data.textfile import read_csv
from sandbox.errors import ConfigError, SandboxError, short

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm")
DEPTH_EXTS = IMAGE_EXTS + (".npy",)
SPLITS = ("train", "val", "test")
_SPLIT_TAG = 0x5B117  # decorrelates the split permutation from other uses of the run seed


@dataclass(frozen=True)
class Item:
    """One sample's files, as POSIX paths relative to the dataset root."""
    stem: str
    image: str
    mask: Optional[str] = None
    depth: Optional[str] = None


def _names(paths, k: int = 3) -> str:
    names = [p if isinstance(p, str) else p.name for p in paths]
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def check_root(root: Optional[str | Path], expected: str) -> Path:
    """``root`` as a Path, or one clear error when it is unset, missing or not a folder."""
    if root is None or str(root) == "":
        raise ConfigError(f"data.root is not set; expected the dataset folder ({expected})")
    path = Path(root)
    if not path.exists():
        raise SandboxError(f"data.root {str(path)!r}: no such folder; expected a folder with {expected}")
    if not path.is_dir():
        raise SandboxError(f"data.root {str(path)!r} is a file; expected a folder with {expected}")
    return path


def subfolder(root: Path, sub: str, key: str) -> Path:
    """``root / sub`` (``"."`` is root itself); a missing one names the sub-folders that do exist."""
    path = root if sub in (".", "") else root / sub
    if not path.is_dir():
        existing = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        raise SandboxError(f"{path}: no such folder (data.{key}={sub!r}); sub-folders of {root}: "
                           f"{', '.join(existing) if existing else 'none'}")
    return path


def list_images(folder: Path, exts: tuple[str, ...] = IMAGE_EXTS) -> dict[str, Path]:
    """``stem -> file`` for the image files directly inside ``folder`` (sorted by stem)."""
    files: dict[str, Path] = {}
    others = 0
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
            others += 1
            continue
        if p.stem in files:
            raise SandboxError(f"{folder}: {files[p.stem].name} and {p.name} share the stem {p.stem!r}; "
                               "expected one file per stem")
        files[p.stem] = p
    if not files:
        raise SandboxError(f"{folder}: no image files (expected {' '.join(exts)}); "
                           f"found {others} other entr{'y' if others == 1 else 'ies'}")
    return dict(sorted(files.items()))


def _pair(images: dict[str, Path], other: dict[str, Path], what: str, folder: Path) -> None:
    lone_images = [images[s] for s in images if s not in other]
    lone_other = [other[s] for s in other if s not in images]
    if lone_images or lone_other:
        parts = []
        if lone_images:
            parts.append(f"{len(lone_images)} image(s) have no {what} in {folder} ({_names(lone_images)})")
        if lone_other:
            parts.append(f"{len(lone_other)} {what}(s) have no image ({_names(lone_other)})")
        raise SandboxError(f"{'; '.join(parts)}; expected each image to have a {what} with the same file stem")


def find_items(root: Path, image_dir: str, mask_dir: Optional[str] = None,
               depth_dir: Optional[str] = None) -> list[Item]:
    """All samples under ``root``, sorted by stem; images, masks and depth maps paired by stem."""
    images = list_images(subfolder(root, image_dir, "image_dir"))
    masks = depths = None
    if mask_dir is not None:
        folder = subfolder(root, mask_dir, "mask_dir")
        masks = list_images(folder)
        _pair(images, masks, "mask", folder)
    if depth_dir is not None:
        folder = subfolder(root, depth_dir, "depth_dir")
        depths = list_images(folder, DEPTH_EXTS)
        _pair(images, depths, "depth map", folder)

    def rel(p: Optional[Path]) -> Optional[str]:
        return None if p is None else p.relative_to(root).as_posix()

    return [Item(s, rel(p), rel(masks[s]) if masks else None, rel(depths[s]) if depths else None)
            for s, p in images.items()]


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up (Python's round() is half-to-even)


def group_ids(stems: list[str], pattern: str) -> dict[str, str]:
    """``stem -> group id`` for ``data.group_by``: the first capturing group of ``pattern`` that took
    part in the match (searched in the stem), else the whole match. A stem it does not match is an
    error naming a few: its files would otherwise be split apart from their group unnoticed."""
    rx = re.compile(pattern)
    ids, lone = {}, []
    for stem in stems:
        m = rx.search(stem)
        if m is None:
            lone.append(stem)
        else:
            ids[stem] = next((g for g in m.groups() if g is not None), m.group(0))
    expected = r"expected a pattern found in every file stem whose first group is the group id, e.g. '^(clip\d+)_'"
    if not ids:
        raise ConfigError(f"data.group_by {pattern!r} matches none of the {len(stems)} file stems "
                          f"({_names(sorted(stems))}); {expected}")
    if lone:
        raise ConfigError(f"data.group_by {pattern!r} does not match {len(lone)} of the {len(stems)} file stems "
                          f"({_names(lone)}); {expected}")
    return ids


def _grouped(ids: dict[str, str], seed: int, n_test: int, n_val: int, train_fraction: float) -> dict[str, list[str]]:
    """Whole groups, in a seeded order, to test then val until each holds its number of items (or
    just more), the rest to train (``train_fraction`` of it, by whole groups, at least one)."""
    members: dict[str, list[str]] = {}
    for stem in sorted(ids):
        members.setdefault(ids[stem], []).append(stem)
    groups = sorted(members)
    order = [groups[i] for i in np.random.default_rng([seed, _SPLIT_TAG]).permutation(len(groups))]
    out: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    i = 0
    for split, target in (("test", n_test), ("val", n_val)):
        while len(out[split]) < target and i < len(order) - 1:  # the last group is always left to train
            out[split] += members[order[i]]
            i += 1
        if target and not out[split]:
            raise ConfigError(f"data.group_by: the {len(groups)} groups of {len(ids)} files leave none for {split}; "
                              f"expected more groups (at least 3), or data.{split}_fraction=0")
    rest = order[i:]
    keep = max(1, _round(train_fraction * sum(len(members[g]) for g in rest)))
    for g in rest:
        if out["train"] and len(out["train"]) >= keep:
            break
        out["train"] += members[g]
    return {k: sorted(v) for k, v in out.items()}


def make_splits(stems: list[str], seed: int, val_fraction: float, test_fraction: float,
                train_fraction: float = 1.0, group_by: Optional[str] = None) -> dict[str, list[str]]:
    """Seeded split of ``stems`` into ``{"train", "val", "test"}`` (each list sorted).

    ``test`` and ``val`` take ``round(fraction * n)`` items (at least 1 when the fraction is
    positive and ``n >= 3``), ``train`` the rest, of which ``train_fraction`` is kept (at least 1).
    A smaller ``train_fraction`` keeps a subset of a larger one with the same seed, and val/test
    do not depend on it. ``group_by`` (:func:`group_ids`): whole groups go to one split each, so
    the counts are met by whole groups (a split may hold a few items more).
    """
    for key, value, lo_ok, hi_ok in [("val_fraction", val_fraction, True, False),
                                     ("test_fraction", test_fraction, True, False),
                                     ("train_fraction", train_fraction, False, True)]:
        if not ((0 <= value if lo_ok else 0 < value) and (value <= 1 if hi_ok else value < 1)):
            raise ConfigError(f"data.{key}: got {value}, expected a fraction in "
                              f"{'[0' if lo_ok else '(0'}, {'1]' if hi_ok else '1)'}")
    stems = sorted(stems)
    n = len(stems)

    def count(frac: float) -> int:
        k = _round(frac * n)
        return max(k, 1) if frac > 0 and n >= 3 else k

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= n:
        raise ConfigError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} leave no "
                          f"training items out of {n}; expected fractions that sum to less than 1")
    if group_by is not None:
        return _grouped(group_ids(stems, group_by), seed, n_test, n_val, train_fraction)
    order = [stems[i] for i in np.random.default_rng([seed, _SPLIT_TAG]).permutation(n)]
    rest = order[n_test + n_val:]
    return {"train": sorted(rest[:max(1, _round(train_fraction * len(rest)))]),
            "val": sorted(order[n_test:n_test + n_val]),
            "test": sorted(order[:n_test])}


class Subset:
    """The samples ``indices`` of ``dataset`` (a map-style dataset), renumbered ``0..len-1``; each sample
    keeps its own ``index``, and other attributes are the wrapped dataset's."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def __getattr__(self, name: str):
        if name in ("dataset", "indices"):  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def random_subset(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded random ``fraction`` of ``range(n)`` (``round(fraction * n)``, at least 1), sorted: samples
    from all over the set, not its first frames (synthetic sequences are consecutive indices). A smaller
    fraction with the same seed keeps a subset of a larger one, as :func:`make_splits` does for folders."""
    order = np.random.default_rng([seed, _SPLIT_TAG, 1]).permutation(n)
    return sorted(order[:max(1, _round(fraction * n))].tolist())


def write_splits(splits: dict[str, list[Item]], dest_dir: str | Path) -> Path:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` (columns ``stem,image[,mask][,depth]``)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    items = [it for lst in splits.values() for it in lst]
    cols = ["stem", "image"] + [c for c in ("mask", "depth") if any(getattr(it, c) for it in items)]
    for name in SPLITS:
        with open(dest / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for it in splits.get(name, []):
                w.writerow([getattr(it, c) or "" for c in cols])
    return dest


#: a split CSV: about 50 bytes a row, so millions of images; a bigger file is not a split list
MAX_SPLIT_BYTES = 256 << 20
SPLIT_HINT = "a UTF-8 CSV with the header stem,image[,mask][,depth], as train.py writes in runs/<name>/splits"


def _inside(path: Path, line: int, column: str, value: str) -> str:
    """A file a split names: a relative path below the data root (``a/b.png``). An absolute path or one
    with ``..`` would make evaluate and training read files outside the dataset they were given."""
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or PureWindowsPath(value).drive:
        raise SandboxError(f"{short(str(path))}: line {line}: {column} {short(value, 80)} is outside the data root; "
                           "expected a path relative to data.root, without '..' (as train.py writes)")
    return value


def read_splits(src_dir: str | Path, root: Optional[str | Path] = None) -> dict[str, list[Item]]:
    """Read the CSVs written by :func:`write_splits`; with ``root``, every listed file must exist."""
    src = Path(src_dir)
    if not src.is_dir():
        raise SandboxError(f"data.splits {str(src)!r}: no such folder; expected a folder with train.csv, "
                           "val.csv and test.csv (e.g. runs/<name>/splits)")
    out: dict[str, list[Item]] = {}
    seen: dict[str, str] = {}
    for name in SPLITS:
        path = src / f"{name}.csv"
        if not path.exists():  # anything else that is not a regular file is named by read_csv
            raise SandboxError(f"{path}: missing; expected train.csv, val.csv and test.csv in {src}")
        rows = read_csv(path, MAX_SPLIT_BYTES, SPLIT_HINT)
        if not rows or rows[0][:2] != ["stem", "image"] or not set(rows[0]) <= {"stem", "image", "mask", "depth"}:
            raise SandboxError(f"{path}: header {rows[0] if rows else []} is not stem,image[,mask][,depth]")
        cols = rows[0]
        items = []
        for line, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != len(cols):
                raise SandboxError(f"{path}: line {line} has {len(row)} fields, expected {len(cols)} ({','.join(cols)})")
            rec = {c: (_inside(path, line, c, v) if c != "stem" and v else v or None) for c, v in zip(cols, row)}
            if rec["stem"] in seen:
                raise SandboxError(f"{path}: line {line}: {rec['stem']!r} is also in {seen[rec['stem']]}; "
                                   "expected disjoint splits")
            seen[rec["stem"]] = path.name
            if root is not None:
                for c in ("image", "mask", "depth"):
                    if rec.get(c) and not (Path(root) / rec[c]).is_file():
                        raise SandboxError(f"{path}: line {line} names {rec[c]!r}, which does not exist "
                                           f"under {root}")
            items.append(Item(rec["stem"], rec["image"], rec.get("mask"), rec.get("depth")))
        out[name] = items
    return out


def resolve_splits(root: Path, image_dir: str, mask_dir: Optional[str], depth_dir: Optional[str], seed: int,
                   val_fraction: float, test_fraction: float, train_fraction: float,
                   splits_dir: Optional[str | Path] = None, group_by: Optional[str] = None) -> dict[str, list[Item]]:
    """``{"train", "val", "test"} -> [Item]``: read from ``splits_dir`` (with ``group_by``, checked to
    keep each group in one split), or listed and split by seed (by whole groups with ``group_by``)."""
    if splits_dir is not None:
        out = read_splits(splits_dir, root)
        if group_by is not None:
            check_groups(out, group_by, splits_dir)
        return out
    items = find_items(root, image_dir, mask_dir, depth_dir)
    by_stem = {it.stem: it for it in items}
    names = make_splits(list(by_stem), seed, val_fraction, test_fraction, train_fraction, group_by)
    return {s: [by_stem[x] for x in names[s]] for s in SPLITS}


def check_groups(splits: dict[str, list[Item]], group_by: str, where: str | Path) -> None:
    """Every ``group_by`` group of ``splits`` in one split; a group found in two is an error naming it."""
    ids = group_ids([it.stem for lst in splits.values() for it in lst], group_by)
    home: dict[str, str] = {}
    for name in SPLITS:
        for it in splits.get(name, []):
            g = ids[it.stem]
            if home.setdefault(g, name) != name:
                raise ConfigError(f"data.splits {str(where)!r} puts group {g!r} (data.group_by {group_by!r}) in "
                                  f"{home[g]} and {name} (e.g. {it.stem}); drop data.splits to split by whole groups")


def generated_splits(cls: type, cfg, splits: tuple[str, ...], wrap, **own) -> dict:
    """``{split: cls(...)}`` of a generated (synthetic) dataset from ``cfg`` (``data.num_<split>`` samples of
    side ``data.size``, seeded by ``cfg.seed``, ``data.cache``) plus its own options ``own``; each split passed
    through ``wrap`` (the condition), and ``data.train_fraction`` < 1 a seeded random subset of the train split's
    ``num_train`` samples."""
    d = cfg.data
    counts = {"train": d.num_train, "val": d.num_val, "test": d.num_test}
    out = {s: wrap(cls(split=s, num=counts[s], size=d.size, seed=cfg.seed, cache=d.cache, **own)) for s in splits}
    if "train" in out and d.train_fraction < 1:
        out["train"] = Subset(out["train"], random_subset(d.num_train, d.train_fraction, cfg.seed))
    return out
