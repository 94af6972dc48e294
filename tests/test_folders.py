"""Folder datasets and splits on tiny folders made here (plus the real human_seg when present)."""
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sandbox.build import build_data
from sandbox.config.loading import config_from_dict, load_config
from sandbox.data import DATASETS, FolderDataset, ImageFolder, splits_of
from sandbox.data.splits import find_items, make_splits, read_splits, write_splits
from sandbox.data.transforms import Augmented
from sandbox.errors import ConfigError, SandboxError
from tests.conftest import ROOT, SHARED_DATA

S = 32


def _save(arr, path):
    """uint8 -> L/RGB/RGBA, uint16 -> I;16, bool -> 1-bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_folder(root, n=10, size=S, img_ext=".png", mask_ext=".png", mask_scale=1):
    """``root/images/<i>.png`` random RGB and ``root/masks/<i>.png`` (0/255, 2x2 blocks) of side size // mask_scale."""
    rng = np.random.default_rng(0)
    masks = {}
    for i in range(n):
        _save(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), root / "images" / f"{i:02d}{img_ext}")
        m = (rng.random((size // mask_scale // 2, size // mask_scale // 2)) > 0.5).astype(np.uint8)
        m = np.kron(m, np.ones((2, 2), np.uint8))
        masks[f"{i:02d}"] = m
        _save(m * 255, root / "masks" / f"{i:02d}{mask_ext}")
    return masks


def folder(root, split="train", **kw):
    kw = {"val_fraction": 0.0, "test_fraction": 0.0, "size": S, **kw}
    return FolderDataset(root, split, **kw)


# ----------------------------------------------------------------------------- pairing and reading

def test_pairs_by_stem_across_extensions_and_ignores_junk(tmp_path):
    rgb = np.full((S, S, 3), 100, np.uint8)
    for name in ("a.jpg", "b.png", "c.jpeg", "x.jpg.chip.jpg"):
        _save(rgb, tmp_path / "images" / name)
    for name in ("a.png", "b.bmp", "c.png", "x.jpg.chip.png"):
        _save(np.zeros((S, S), np.uint8), tmp_path / "masks" / name)
    for junk in ("images/.DS_Store", "images/Thumbs.db", "images/notes.txt", "masks/.DS_Store", "masks/desktop.ini"):
        (tmp_path / junk).write_bytes(b"junk")
    items = find_items(tmp_path, "images", "masks")
    assert [(it.stem, it.image, it.mask) for it in items] == [
        ("a", "images/a.jpg", "masks/a.png"), ("b", "images/b.png", "masks/b.bmp"),
        ("c", "images/c.jpeg", "masks/c.png"), ("x.jpg.chip", "images/x.jpg.chip.jpg", "masks/x.jpg.chip.png")]
    ds = folder(tmp_path)
    assert len(ds) == 4 and ds[3]["image"].shape == (3, S, S)
    assert ds.targets == ("mask",) and FolderDataset.targets == ("mask", "depth")


def test_sample_contract_and_mask_resized_to_image_with_nearest(tmp_path):
    masks = make_folder(tmp_path, n=4, mask_scale=2)  # masks are half the image side
    ds = folder(tmp_path)
    for i in range(4):
        s = ds[i]
        assert s["image"].shape == (3, S, S) and s["image"].dtype == torch.float32
        assert s["mask"].shape == (1, S, S) and s["mask"].dtype == torch.float32
        assert set(s["mask"].unique().tolist()) <= {0.0, 1.0} and s["index"] == i
        expected = np.kron(masks[ds.items[i].stem], np.ones((2, 2), np.uint8))  # nearest: each pixel -> 2x2
        assert np.array_equal(s["mask"][0].numpy(), expected)


def test_grayscale_rgba_palette_and_16bit_images_become_rgb(tmp_path):
    gray = np.arange(S * S, dtype=np.uint16).reshape(S, S) % 256
    _save(gray.astype(np.uint8), tmp_path / "images" / "gray.png")
    rgba = np.dstack([np.full((S, S), v, np.uint8) for v in (10, 20, 30, 0)])  # fully transparent
    _save(rgba, tmp_path / "images" / "rgba.png")
    _save(gray.astype(np.uint8), tmp_path / "images" / "pal.png")
    Image.open(tmp_path / "images" / "pal.png").convert("P").save(tmp_path / "images" / "pal.png")
    deep = (np.arange(S * S).reshape(S, S) * 60).astype(np.uint16)
    _save(deep, tmp_path / "images" / "deep.png")
    assert Image.open(tmp_path / "images" / "deep.png").mode == "I;16"
    for stem in ("gray", "rgba", "pal", "deep"):
        _save(np.zeros((S, S), np.uint8), tmp_path / "masks" / f"{stem}.png")
    ds = folder(tmp_path)
    got = {ds.items[i].stem: ds[i]["image"] for i in range(len(ds))}
    for img in got.values():
        assert img.shape == (3, S, S)
    assert torch.allclose(got["gray"], torch.from_numpy(gray / 255.0).float().expand(3, S, S))
    assert torch.allclose(got["rgba"][:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)  # alpha dropped
    assert torch.allclose(got["pal"][0], got["gray"][0], atol=3 / 255)
    assert torch.allclose(got["deep"], torch.from_numpy(np.rint(deep / 65535 * 255) / 255).float().expand(3, S, S))


@pytest.mark.parametrize("values,mode,threshold,foreground", [
    ([0, 100, 127, 128, 200, 255], None, 0.5, [0, 0, 0, 1, 1, 1]),  # 8-bit: > 127.5
    ([0, 40, 51, 52, 255, 255], None, 0.2, [0, 0, 0, 1, 1, 1]),  # 8-bit: > 51
    ([0, 32767, 32768, 65535, 0, 1000], "I;16", 0.5, [0, 0, 1, 1, 0, 0]),  # 16-bit: > 32767.5
    ([0, 1, 1, 0, 1, 0], "1", 0.5, [0, 1, 1, 0, 1, 0]),  # 1-bit: > 0.5
])
def test_mask_threshold_rule(tmp_path, values, mode, threshold, foreground):
    n = len(values)
    _save(np.zeros((1, n, 3), np.uint8), tmp_path / "images" / "a.png")
    arr = np.array([values], np.uint16 if mode == "I;16" else bool if mode == "1" else np.uint8)
    _save(arr, tmp_path / "masks" / "a.png")
    ds = FolderDataset(tmp_path, "train", size=n, val_fraction=0, test_fraction=0, mask_threshold=threshold)
    img, mask, _ = ds.arrays(0)
    assert mask.shape == (n, n)  # stretched to n x n: every row is the input row
    assert mask[0].tolist() == foreground


def test_grey_level_masks_warn_once(tmp_path, caplog):
    make_folder(tmp_path, n=3)
    for i in range(2):  # two soft masks: one warning
        _save(np.tile(np.linspace(0, 255, S).astype(np.uint8), (S, 1)), tmp_path / "masks" / f"{i:02d}.png")
    ds = folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        masks = [ds[i]["mask"] for i in range(3)]
    warnings = [r for r in caplog.records if "grey levels" in r.message]
    assert len(warnings) == 1 and "00.png" in warnings[0].getMessage()
    assert masks[0][0, 0].tolist() == (np.linspace(0, 255, S) > 127.5).astype(np.float32).tolist()
    assert ds.check() == {"items": 3, "grey_masks": 2}


def test_pad_mode_keeps_aspect_and_pads_mask_as_background(tmp_path):
    _save(np.full((16, 32, 3), 200, np.uint8), tmp_path / "images" / "w.png")  # 32 wide, 16 high
    _save(np.full((16, 32), 255, np.uint8), tmp_path / "masks" / "w.png")
    ds = FolderDataset(tmp_path, "train", size=S, resize="pad", val_fraction=0, test_fraction=0)
    s = ds[0]
    assert s["mask"][0, 8:24].eq(1).all() and s["mask"][0, :8].eq(0).all() and s["mask"][0, 24:].eq(0).all()
    assert s["image"][:, :8].eq(0).all() and torch.allclose(s["image"][:, 8:24], torch.tensor(200 / 255))
    assert ds.meta(0) == {"stem": "w", "path": str(tmp_path / "images" / "w.png"), "orig_hw": (16, 32),
                          "box": (8, 0, 16, 32), "size": S}


def test_unlabelled_images_flat_folder(tmp_path):
    for i in range(5):
        _save(np.full((20, 30, 3), i * 40, np.uint8), tmp_path / f"face_{i}.jpg.chip.jpg")
    (tmp_path / ".DS_Store").write_bytes(b"")
    ds = ImageFolder(tmp_path, "train", image_dir=".", size=16, val_fraction=0.2, test_fraction=0.2)
    assert ImageFolder.targets == ("image",)
    assert len(ds) == 3 and sorted(ds[0]) == ["image", "index"] and ds[0]["image"].shape == (3, 16, 16)
    assert sum(len(v) for v in ds.splits.values()) == 5


# ----------------------------------------------------------------------------- errors

def test_missing_root_and_subfolders(tmp_path):
    with pytest.raises(ConfigError, match="data.root is not set"):
        FolderDataset(None)
    with pytest.raises(SandboxError, match=r"data.root '.*nowhere': no such folder; expected a folder with images/ and masks/"):
        FolderDataset(tmp_path / "nowhere")
    make_folder(tmp_path, n=3)
    (tmp_path / "extra").mkdir()
    with pytest.raises(SandboxError, match=r"labels: no such folder \(data.mask_dir='labels'\); "
                                           r"sub-folders of .*: extra, images, masks"):
        folder(tmp_path, mask_dir="labels")
    with pytest.raises(SandboxError, match=r"no such folder \(data.image_dir='Training_Images'\)"):
        folder(tmp_path, image_dir="Training_Images")


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "masks").mkdir()
    with pytest.raises(SandboxError, match=r"images: no image files \(expected .jpg .*\); found 1 other entry"):
        folder(tmp_path)


def test_unpaired_images_and_masks(tmp_path):
    make_folder(tmp_path, n=5)
    (tmp_path / "masks" / "03.png").unlink()
    (tmp_path / "masks" / "04.png").rename(tmp_path / "masks" / "zz.png")
    with pytest.raises(SandboxError, match=r"2 image\(s\) have no mask in .*masks \(03.png, 04.png\); "
                                           r"1 mask\(s\) have no image \(zz.png\); expected each image"):
        folder(tmp_path)


def test_duplicate_stems(tmp_path):
    make_folder(tmp_path, n=2)
    _save(np.zeros((S, S, 3), np.uint8), tmp_path / "images" / "00.jpg")
    with pytest.raises(SandboxError, match=r"00.jpg and 00.png share the stem '00'"):
        folder(tmp_path)


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(b""), r"01.png: empty file \(0 bytes\)"),
    (lambda p: p.write_bytes(p.read_bytes()[:60]), r"01.png: unreadable or truncated image"),
    (lambda p: p.write_bytes(b"not an image at all"), r"01.png: unreadable or truncated image"),
])
def test_bad_image_named_when_read_and_by_check(tmp_path, damage, message):
    make_folder(tmp_path, n=3)
    damage(tmp_path / "images" / "01.png")
    ds = folder(tmp_path)  # listing does not decode
    assert ds[0]["image"].shape == (3, S, S)
    with pytest.raises(SandboxError, match=message):
        ds[1]
    with pytest.raises(SandboxError, match=r"1 unreadable file\(s\) under .*: .*" + message):
        ds.check()


def test_depth_in_loss_needs_depth_dir(tmp_path):
    make_folder(tmp_path, n=3)
    cfg = config_from_dict({"data": {"name": "folder", "root": str(tmp_path), "size": S},
                            "model": {"depth": 2}, "loss": {"mask": {"dice": 1.0}, "depth": {"l1": 1.0}}})
    with pytest.raises(ConfigError, match="data.depth_dir is not set"):
        build_data(cfg, ("train",))


def test_depth_maps_move_with_the_sample(tmp_path):
    make_folder(tmp_path, n=3)
    for i in range(3):  # 16-bit depth at half size
        _save((np.arange(16 * 16).reshape(16, 16) * 200).astype(np.uint16), tmp_path / "depth" / f"{i:02d}.png")
    ds = folder(tmp_path, depth_dir="depth")
    s = ds[0]
    assert ds.targets == ("mask", "depth") and s["depth"].shape == (1, S, S) and s["depth"].dtype == torch.float32
    expected = np.kron(np.arange(16 * 16).reshape(16, 16) * 200 / 65535, np.ones((2, 2)))
    assert np.allclose(s["depth"][0].numpy(), expected, atol=1e-6)


# ----------------------------------------------------------------------------- splits

def test_splits_deterministic_disjoint_and_sized():
    stems = [f"{i}" for i in range(20)]
    a = make_splits(stems, seed=3, val_fraction=0.15, test_fraction=0.15)
    shuffled = stems[:]
    random.Random(0).shuffle(shuffled)
    assert make_splits(shuffled, 3, 0.15, 0.15) == a  # independent of listing order
    assert make_splits(stems, 4, 0.15, 0.15) != a
    assert [len(a[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(stems)
    half = make_splits(stems, 3, 0.15, 0.15, train_fraction=0.5)
    assert len(half["train"]) == 7 and set(half["train"]) < set(a["train"])  # a subset of the full train part
    assert half["val"] == a["val"] and half["test"] == a["test"]
    tiny = make_splits(stems, 3, 0.15, 0.15, train_fraction=0.01)
    assert len(tiny["train"]) == 1  # at least one


def test_split_minimums_and_bad_fractions():
    five = make_splits(list("abcde"), 0, val_fraction=0.05, test_fraction=0.05)
    assert [len(five[s]) for s in ("train", "val", "test")] == [3, 1, 1]  # 0.25 rounds to 0, then at least 1
    assert make_splits(list("ab"), 0, 0.15, 0.15) == {"train": ["a", "b"], "val": [], "test": []}
    with pytest.raises(ConfigError, match=r"data.val_fraction: got 1.5, expected a fraction in \[0, 1\)"):
        make_splits(list("abc"), 0, 1.5, 0.1)
    with pytest.raises(ConfigError, match=r"data.train_fraction: got 0, expected a fraction in \(0, 1\]"):
        make_splits(list("abc"), 0, 0.1, 0.1, train_fraction=0)
    with pytest.raises(ConfigError, match="leave no training items out of 4"):
        make_splits(list("abcd"), 0, 0.5, 0.5)


def test_write_read_round_trip_and_reuse(tmp_path):
    make_folder(tmp_path / "data", n=12)
    ds = FolderDataset(tmp_path / "data", "val", size=S, seed=7)
    written = write_splits(splits_of(ds), tmp_path / "run" / "splits")
    assert (written / "train.csv").read_text().splitlines()[0] == "stem,image,mask"
    back = read_splits(written, tmp_path / "data")
    assert back == ds.splits
    again = FolderDataset(tmp_path / "data", "val", size=S, seed=99, splits=str(written))  # seed ignored
    assert again.items == ds.items and torch.equal(again[0]["image"], ds[0]["image"])


def test_split_file_naming_missing_image(tmp_path):
    make_folder(tmp_path / "data", n=6)
    ds = folder(tmp_path / "data")
    write_splits(ds.splits, tmp_path / "splits")
    (tmp_path / "data" / "images" / "02.png").unlink()
    with pytest.raises(SandboxError, match=r"train.csv: line 4 names 'images/02.png', which does not exist under"):
        folder(tmp_path / "data", splits=tmp_path / "splits")
    with pytest.raises(SandboxError, match=r"data.splits '.*nope': no such folder; expected a folder with train.csv"):
        folder(tmp_path / "data", splits=tmp_path / "nope")


def test_build_data_folder_shares_splits_and_augments_train_only(tmp_path):
    make_folder(tmp_path, n=10)
    cfg = config_from_dict({"seed": 1, "data": {"name": "folder", "root": str(tmp_path), "size": S,
                                                "augment": [{"HorizontalFlip": {"p": 0.5}}]},
                            "model": {"depth": 2}})
    data = build_data(cfg)
    assert isinstance(data["train"], Augmented) and not isinstance(data["val"], Augmented)
    assert splits_of(data["train"]) is splits_of(data["val"]) and splits_of(data["test"]) is not None
    assert [len(data[s]) for s in ("train", "val", "test")] == [6, 2, 2]  # 0.15 * 10 = 1.5 rounds half up
    assert splits_of(build_data(config_from_dict({}), ("val",))["val"]) is None  # synthetic data


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_declares_targets_and_gives_images(name, tmp_path):
    make_folder(tmp_path, n=4)
    kw = {"root": tmp_path, "val_fraction": 0, "test_fraction": 0} if name in ("folder", "images") else {"num": 2}
    ds = DATASETS[name](split="train", size=S, **kw)
    s = ds[0]
    assert DATASETS[name].targets and s["image"].shape == (3, S, S) and 0 <= s["image"].min() <= s["image"].max() <= 1
    assert all(s[t].shape[-2:] == (S, S) for t in ds.targets if t in s)


# ----------------------------------------------------------------------------- the real data (when present)

HUMAN_SEG = SHARED_DATA / "human_seg"


@pytest.mark.skipif(not HUMAN_SEG.is_dir(), reason="../shared/data/human_seg is not on this machine")
def test_human_seg_193_pairs_load():
    items = find_items(HUMAN_SEG, "Training_Images", "Ground_Truth")
    assert len(items) == 193
    ds = FolderDataset(HUMAN_SEG, "train", image_dir="Training_Images", mask_dir="Ground_Truth", size=64,
                       val_fraction=0.15, test_fraction=0.15)
    assert sum(len(v) for v in ds.splits.values()) == 193
    for i in (0, len(ds) - 1):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and set(s["mask"].unique().tolist()) == {0.0, 1.0}
        assert 0.02 < s["mask"].mean() < 0.98  # a person, not an empty or full mask


@pytest.mark.skipif(not HUMAN_SEG.is_dir(), reason="../shared/data/human_seg is not on this machine")
@pytest.mark.parametrize("config", ["human_seg_unet.yaml", "human_seg_hourglass.yaml"])
def test_human_seg_configs_build(config):
    cfg = load_config(ROOT / "configs" / config, [f"data.root={HUMAN_SEG}"])
    data = build_data(cfg, ("train", "val"))
    assert isinstance(data["train"], Augmented)
    s = data["train"][(0, 0)]
    assert s["image"].shape == (3, cfg.data.size, cfg.data.size) and s["mask"].shape[0] == 1
