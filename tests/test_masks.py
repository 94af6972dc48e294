"""Masks from folders are read as the user meant them, or the run stops with one line saying why:
the value range of the mask format (0/1, 0/255 in 8 or 16 bits, palettes), a split with no
foreground (or no background) at all, a mask of another shape than its image (EXIF included)."""

import numpy as np
import pytest
from PIL import Image

from sandbox.build import build_data
from sandbox.config.loading import config_from_dict
from sandbox.data import FolderDataset
from sandbox.data.splits import write_splits
from sandbox.errors import SandboxError
from tests.conftest import ROOT, run_command

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
    done = run_command(
        "train", "--config", str(ROOT / "configs" / "unet_dice.yaml"),
         "data.name=folder", f"data.root={tmp_path / 'ds'}", "data.size=16", "data.val_fraction=0.34",
         "data.test_fraction=0", "model.width=4", "model.depth=2", "train.epochs=1", "track.wandb=disabled",
         "train.mixed_precision=no", f"out_dir={out}", "name=empty")
    assert done.code == 2, done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train split: all 4 masks in "), done.err
    assert str(tmp_path / "ds" / "masks") in lines[0] and "data.mask_threshold=0.5" in lines[0]
    assert not out.exists()


# --------------------------------------------------------------------------- mask shape against image shape

def test_aspect_mismatch_names_both_files(tmp_path):
    _image(tmp_path / "images" / "a.png", w=32, h=32)
    _mask(tmp_path / "masks" / "a.png", Image.fromarray(np.full((20, 32), 255, np.uint8)))  # 32 wide, 20 high
    ds = _folder(tmp_path)
    with pytest.raises(SandboxError) as info:
        ds[0]
    msg = str(info.value)
    assert str(tmp_path / "masks" / "a.png") in msg and str(tmp_path / "images" / "a.png") in msg
    assert "32x20" in msg and "32x32" in msg and "data.mask_resize=stretch" in msg and "\n" not in msg
    with pytest.raises(SandboxError, match=r"unreadable file\(s\).*masks/a.png: mask is 32x20"):
        ds.check()


def test_mask_resize_stretch_accepts_it(tmp_path):
    _image(tmp_path / "images" / "a.png", w=32, h=32)
    _mask(tmp_path / "masks" / "a.png", Image.fromarray(np.repeat(np.eye(2, dtype=np.uint8) * 255, [10, 10], 0)
                                                        .repeat(16, 1)))  # 32x20: quadrants
    ds = FolderDataset(tmp_path, "train", size=32, val_fraction=0, test_fraction=0, mask_resize="stretch")
    mask = ds[0]["mask"][0].numpy()
    assert mask[:16, :16].all() and mask[16:, 16:].all() and not mask[:16, 16:].any() and not mask[16:, :16].any()
    data = build_data(config_from_dict({"data": {"name": "folder", "root": str(tmp_path), "size": 32,
                                                 "val_fraction": 0, "test_fraction": 0, "mask_resize": "stretch"},
                                        "model": {"depth": 2}}), ("train",))
    assert np.array_equal(data["train"][0]["mask"][0].numpy(), mask)


def test_mask_on_raw_pixels_of_an_exif_rotated_photo(tmp_path):
    """The photo is stored 24 wide x 16 high with EXIF orientation 6 (shown 16 x 24, as the loader
    reads it); a mask drawn on the stored pixels is 24 x 16: named as such, not stretched."""
    _image(tmp_path / "images" / "a.jpg", w=24, h=16, exif_orientation=6)
    _mask(tmp_path / "masks" / "a.png", Image.fromarray(np.full((16, 24), 255, np.uint8)))
    with pytest.raises(SandboxError, match=r"masks/a.png: mask is 24x16 but its image .*images/a.jpg is 16x24 "
                                           r"after its EXIF rotation.*stored pixels"):
        _folder(tmp_path)[0]


def test_smaller_mask_of_the_same_aspect_still_loads(tmp_path):
    """The shared human_seg layout: masks smaller than their image, same aspect (433x577 for 480x640),
    and a one-pixel rounding on a tiny mask (15x11 for 40x30) also passes."""
    m = np.zeros((577, 433), np.uint8)
    m[100:400, 50:300] = 255
    _image(tmp_path / "images" / "big.jpg", w=480, h=640)
    _mask(tmp_path / "masks" / "big.png", Image.fromarray(m))
    _image(tmp_path / "images" / "tiny.jpg", w=40, h=30)
    _mask(tmp_path / "masks" / "tiny.png", Image.fromarray(np.full((11, 15), 255, np.uint8)))
    ds = FolderDataset(tmp_path, "train", size=64, val_fraction=0, test_fraction=0)
    big, tiny = (ds[i]["mask"][0].numpy() for i in range(2))
    assert 0.2 < big.mean() < 0.4 and tiny.all()
    assert ds.check() == {"items": 2, "grey_masks": 0}


def test_predict_reads_masks_by_the_same_rules(tmp_path):
    from sandbox.analysis.prediction import read_pair

    _image(tmp_path / "a.png", w=S, h=S)
    _mask(tmp_path / "a_mask.png", Image.fromarray(BLOCK))  # 0/1
    _mask(tmp_path / "wide.png", Image.fromarray(np.zeros((8, S), np.uint8)))
    _, truth = read_pair(tmp_path / "a.png", tmp_path / "a_mask.png", 0.5)
    assert np.array_equal(truth, BLOCK.astype(bool))
    with pytest.raises(SandboxError, match=r"wide.png: mask is 16x8 but its image .*a.png is 16x16"):
        read_pair(tmp_path / "a.png", tmp_path / "wide.png", 0.5)
    assert read_pair(tmp_path / "a.png", tmp_path / "wide.png", 0.5, "stretch")[1].shape == (S, S)
