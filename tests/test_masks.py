"""Masks from folders are read as the user meant them, or the run stops with one line saying why:
the value range of the mask format (0/1, 0/255 in 8 or 16 bits, palettes), a split with no
foreground (or no background) at all."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sandbox.build import build_data
from sandbox.config.loading import config_from_dict
from sandbox.data import FolderDataset
from sandbox.data.splits import write_splits
from sandbox.errors import SandboxError
from tests.conftest import ROOT

S = 16
BLOCK = np.zeros((S, S), np.uint8)
BLOCK[4:12, 2:9] = 1  # the foreground every mask below draws, in its own encoding


def _image(path, w=S, h=S, exif_orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    if exif_orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif)


def _mask(path, im: Image.Image):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _pairs(root, n, mask_of, **image_kw):
    """``n`` images ``root/images/<i>.png`` and masks ``root/masks/<i>.png`` = ``mask_of(i)``."""
    for i in range(n):
        _image(root / "images" / f"{i}.png", **image_kw)
        _mask(root / "masks" / f"{i}.png", mask_of(i))


def _folder(root, **kw):
    return FolderDataset(root, "train", size=S, val_fraction=0, test_fraction=0, **kw)


def _cfg(root, **data):
    return config_from_dict({"data": {"name": "folder", "root": str(root), "size": S, "val_fraction": 0.34,
                                      "test_fraction": 0, **data}, "model": {"depth": 2}})


def _palette_white_first() -> Image.Image:
    """A two-colour palette mask as ``quantize`` (and GIMP's indexed mode) write it: white, the
    foreground, is index 0 and black index 1."""
    im = Image.fromarray(BLOCK * 255).quantize(2)
    assert im.mode == "P" and im.getpalette()[:6] == [255, 255, 255, 0, 0, 0]
    assert np.array_equal(np.asarray(im) == 0, BLOCK.astype(bool))  # index 0 draws the block
    return im


# --------------------------------------------------------------------------- the value range

MASK_KINDS = {
    "8-bit 0/1": lambda: Image.fromarray(BLOCK),
    "8-bit 0/1 with alpha": lambda: Image.fromarray(BLOCK).convert("LA"),
    "RGB 0/1": lambda: Image.fromarray(np.dstack([BLOCK] * 3)),
    "16-bit 0/255": lambda: Image.fromarray(BLOCK.astype(np.uint16) * 255),
    "16-bit 0/1": lambda: Image.fromarray(BLOCK.astype(np.uint16)),
    "palette, white first": _palette_white_first,
}


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_formats_load_their_foreground(tmp_path, kind):
    _pairs(tmp_path, 2, lambda i: MASK_KINDS[kind]())
    ds = _folder(tmp_path)
    for i in range(2):
        assert np.array_equal(ds[i]["mask"][0].numpy(), BLOCK), kind
    data = build_data(_cfg(tmp_path), ("train", "val"))  # the path a run takes
    assert data["train"][0]["mask"].sum() == BLOCK.sum()


def test_grey_masks_keep_their_scale(tmp_path):
    """Guards of the rule (they also hold on the old rule): faint noise on an empty mask stays
    empty, a soft 8-bit mask is cut at threshold x 255, a colour label map keeps every label."""
    noise = np.random.default_rng(0).integers(0, 4, (S, S), dtype=np.uint8)  # JPEG-like 0..3
    soft = np.tile(np.linspace(0, 200, S).astype(np.uint8), (S, 1))  # never reaches 255
    labels = Image.fromarray(BLOCK + (np.arange(S)[None] < 2).astype(np.uint8) * 2).convert("P")
    labels.putpalette([0, 0, 0, 128, 0, 0, 64, 0, 0])  # VOC-like: black, dark red, darker red
    masks = {0: Image.fromarray(noise), 1: Image.fromarray(soft), 2: labels}
    _pairs(tmp_path, 3, masks.__getitem__)
    ds = _folder(tmp_path)
    assert ds[0]["mask"].sum() == 0
    assert ds[1]["mask"][0, 0].numpy().tolist() == (np.linspace(0, 200, S).astype(np.uint8) > 127.5).tolist()
    assert np.array_equal(ds[2]["mask"][0].numpy(), np.maximum(BLOCK, np.arange(S)[None] < 2))


# --------------------------------------------------------------------------- a split without foreground

def test_all_empty_split_stops_naming_folder_and_threshold(tmp_path):
    _pairs(tmp_path, 6, lambda i: Image.fromarray(np.zeros((S, S), np.uint8)))
    with pytest.raises(SandboxError) as info:
        build_data(_cfg(tmp_path, mask_threshold=0.3), ("train", "val"))
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "masks") in msg and "data.mask_threshold=0.3" in msg
    assert "all 4 masks" in msg and "empty" in msg and "largest mask value 0" in msg


def test_all_full_split_stops(tmp_path):
    _pairs(tmp_path, 6, lambda i: Image.fromarray(np.full((S, S), 200, np.uint8)))
    with pytest.raises(SandboxError, match=r"train split: all 4 masks in .*masks are full .*"
                                           r"data.mask_threshold=0.5.*raise data.mask_threshold"):
        build_data(_cfg(tmp_path), ("train", "val"))


def test_split_check_is_certain_and_cheap(tmp_path, monkeypatch):
    """One mask with foreground among empty ones is found wherever it is; a split that starts with
    a mask holding foreground and background costs one mask read, whatever its length."""
    import sandbox.data.folders as folders

    _pairs(tmp_path, 9, lambda i: Image.fromarray(BLOCK * 255 if i == 8 else np.zeros((S, S), np.uint8)))
    data = build_data(_cfg(tmp_path, val_fraction=0), ("train",))
    assert data["train"].items[-1].stem == "8"  # the only mask with foreground is read last, and found
    (tmp_path / "masks" / "0.png").unlink()
    _mask(tmp_path / "masks" / "0.png", Image.fromarray(BLOCK * 255))
    reads = []
    real = folders.open_image
    monkeypatch.setattr(folders, "open_image", lambda p: reads.append(p) or real(p))
    build_data(_cfg(tmp_path, val_fraction=0), ("train",))
    assert reads == [tmp_path / "masks" / "0.png"]


def test_val_split_without_foreground_is_named(tmp_path):
    _pairs(tmp_path, 6, lambda i: Image.fromarray(BLOCK * 255 if i < 4 else np.zeros((S, S), np.uint8)))
    items = _folder(tmp_path).items
    write_splits({"train": items[:4], "val": items[4:], "test": []}, tmp_path / "splits")
    assert len(build_data(_cfg(tmp_path, splits=str(tmp_path / "splits")), ("train",))["train"]) == 4
    with pytest.raises(SandboxError, match=r"val split: all 2 masks in .*masks are empty"):
        build_data(_cfg(tmp_path, splits=str(tmp_path / "splits")), ("train", "val"))


def test_cli_all_empty_masks_exit_2_with_one_line(tmp_path):
    _pairs(tmp_path / "ds", 6, lambda i: Image.fromarray(np.zeros((S, S), np.uint8)))
    out = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, str(ROOT / "sandbox" / "train.py"), "--config", str(ROOT / "configs" / "unet_dice.yaml"),
         "data.name=folder", f"data.root={tmp_path / 'ds'}", "data.size=16", "data.val_fraction=0.34",
         "data.test_fraction=0", "model.width=4", "model.depth=2", "train.epochs=1", "track.wandb=disabled",
         "train.mixed_precision=no", f"out_dir={out}", "name=empty"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train split: all 4 masks in "), done.stderr
    assert str(tmp_path / "ds" / "masks") in lines[0] and "data.mask_threshold=0.5" in lines[0]
    assert "Traceback" not in done.stderr and not out.exists()
