"""Augmentations from YAML, the deterministic Augmented wrapper, and fit_to_size / unfit."""
import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sandbox.build import build_data
from sandbox.config.loading import config_from_dict
from sandbox.data.synthetic import Dancers
from sandbox.data.transforms import Augmented, build_augment, fit_to_size, unfit
from sandbox.errors import ConfigError
from sandbox.data.loader import collate

S = 24


class Toy(Dataset):
    """Random image in [0, 1], a binary mask and a depth map with values outside [0, 1]."""

    targets = ("mask", "depth")

    def __init__(self, n=4):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, S, S, generator=g)
        self.masks = (torch.rand(n, 1, S, S, generator=g) > 0.5).float()
        self.depths = torch.rand(n, 1, S, S, generator=g) * 10 + 3.25  # metres: must not be clipped

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "depth": self.depths[i], "index": i}


# ----------------------------------------------------------------------------- build_augment

def test_empty_spec_is_no_augmentation():
    assert build_augment([]) is None and build_augment(None) is None


def test_unknown_transform_names_index_and_close_matches():
    with pytest.raises(ConfigError, match=r"data.augment\[1\]: unknown albumentations transform 'HorizontalFlipp'; "
                                          r"close matches: HorizontalFlip"):
        build_augment([{"VerticalFlip": {}}, {"HorizontalFlipp": {"p": 0.5}}])


@pytest.mark.parametrize("spec,message", [
    ([{"HorizontalFlip": {"p": 2}}], r"data.augment\[0\].HorizontalFlip: p: Input should be less than or equal to 1"),
    ([{"HorizontalFlip": {"prob": 0.5}}], r"data.augment\[0\].HorizontalFlip: unknown option\(s\) prob; accepted: p"),
    ([{"HorizontalFlip": 0.5}], r"data.augment\[0\].HorizontalFlip: got 0.5, expected a mapping of options"),
    (["HorizontalFlip"], r"data.augment\[0\]: got 'HorizontalFlip', expected one mapping"),
    ([{"HorizontalFlip": {}, "VerticalFlip": {}}], r"data.augment\[0\]: got .*, expected one mapping"),
    ([{"OneOf": {"transforms": [{"Blurr": {}}]}}], r"data.augment\[0\].OneOf.transforms\[0\]: unknown .* 'Blurr'"),
])
def test_bad_specs_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_augment(spec)
    assert "\n" not in str(info.value)


def test_nested_compose_and_null_options():
    t = build_augment([{"OneOf": {"transforms": [{"HorizontalFlip": None}, {"VerticalFlip": {}}], "p": 1.0}}])
    out = Augmented(Toy(), t)[0]
    x = Toy()[0]["image"]
    assert torch.equal(out["image"], x.flip(-1)) or torch.equal(out["image"], x.flip(-2))


# ----------------------------------------------------------------------------- what moves with what

def test_flip_moves_image_mask_and_depth_together():
    ds = Toy()
    out = Augmented(ds, build_augment([{"HorizontalFlip": {"p": 1.0}}]))[(0, 2)]
    src = ds[2]
    for k in ("image", "mask", "depth"):
        assert out[k].shape == src[k].shape and out[k].dtype == torch.float32
        assert torch.equal(out[k], src[k].flip(-1)), k
    assert out["index"] == 2


def test_photometric_changes_the_image_only_and_depth_stays_float():
    ds = Toy()
    out = Augmented(ds, build_augment([{"RandomBrightnessContrast": {"brightness_limit": [0.2, 0.3], "p": 1.0}}]))[1]
    src = ds[1]
    assert (out["image"] - src["image"]).abs().mean() > 0.05 and 0 <= out["image"].min() <= out["image"].max() <= 1
    assert torch.equal(out["mask"], src["mask"]) and torch.equal(out["depth"], src["depth"])
    assert out["depth"].dtype == torch.float32 and out["depth"].max() > 10  # not clipped to [0, 1]


def test_rotation_keeps_mask_binary_and_depth_values_nearest():
    ds = Toy()
    out = Augmented(ds, build_augment([{"Affine": {"rotate": [20, 30], "p": 1.0}}]))[(0, 0)]
    src = ds[0]
    assert not torch.equal(out["mask"], src["mask"])
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert set(out["depth"].unique().tolist()) <= set(src["depth"].unique().tolist()) | {0.0}  # no blending


def test_never_mutates_the_wrapped_dataset():
    ds = Dancers("train", num=2, size=32, cache=True)
    before = ds[0]["image"].clone()
    Augmented(ds, build_augment([{"HorizontalFlip": {"p": 1}}, {"RandomBrightnessContrast": {"p": 1}}]))[0]
    assert torch.equal(ds[0]["image"], before)


# ----------------------------------------------------------------------------- determinism

SPEC = [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"rotate": [-30, 30], "p": 0.8}},
        {"RandomBrightnessContrast": {"p": 0.8}}]


def test_same_key_same_sample_other_epoch_or_seed_differs():
    ds = Toy()
    a, b = Augmented(ds, build_augment(SPEC), seed=0), Augmented(ds, build_augment(SPEC), seed=0)
    assert all(torch.equal(a[(3, 1)][k], b[(3, 1)][k]) for k in ("image", "mask", "depth"))
    a[(5, 2)]  # another draw in between changes nothing
    assert torch.equal(a[(3, 1)]["image"], b[(3, 1)]["image"])
    assert torch.equal(a[1]["image"], a[(0, 1)]["image"])  # an int key is epoch self.epoch (0)
    a.set_epoch(3)
    assert torch.equal(a[1]["image"], b[(3, 1)]["image"])
    epochs = [a[(e, 1)]["image"] for e in range(4)]
    assert all(not torch.equal(epochs[0], x) for x in epochs[1:])
    other_seed = Augmented(ds, build_augment(SPEC), seed=1)
    assert not torch.equal(other_seed[(3, 1)]["image"], a[(3, 1)]["image"])


def test_global_rngs_neither_used_nor_disturbed():
    ds = Augmented(Toy(), build_augment(SPEC), seed=0)
    outs = []
    for seed in (1, 2):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
        outs.append([ds[(e, i)]["image"] for e in range(2) for i in range(4)])
        assert random.getstate() == states[0]
        assert np.array_equal(np.random.get_state()[1], states[1])
        assert torch.equal(torch.get_rng_state(), states[2])
    assert all(torch.equal(x, y) for x, y in zip(*outs))


def test_pickles_for_workers_and_batches_with_epoch_keys():
    ds = Augmented(Toy(), build_augment(SPEC), seed=0)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[(2, 3)]["image"], ds[(2, 3)]["image"]) and clone.targets == ("mask", "depth")
    batch = next(iter(DataLoader(ds, batch_size=4, sampler=[(1, i) for i in range(4)], collate_fn=collate)))
    assert batch["image"].shape == (4, 3, S, S) and batch["index"].tolist() == [0, 1, 2, 3]
    assert torch.equal(batch["image"][2], ds[(1, 2)]["image"])


def test_build_data_wraps_dancers_train_only():
    cfg = config_from_dict({"data": {"size": 32, "num_train": 4, "num_val": 2, "augment": SPEC}, "model": {"depth": 2}})
    data = build_data(cfg, ("train", "val"))
    assert isinstance(data["train"], Augmented) and isinstance(data["val"], Dancers)
    assert data["train"].epoch_keys and data["train"][(0, 0)]["depth"].shape == (1, 32, 32)
    with pytest.raises(ConfigError, match=r"data.augment\[0\]: unknown albumentations transform 'Flip'"):
        build_data(config_from_dict({"data": {"augment": [{"Flip": {}}]}}), ("train",))


# ----------------------------------------------------------------------------- fit_to_size / unfit

def test_stretch_and_pad_meta():
    img = np.zeros((20, 40, 3), np.uint8)
    out, meta = fit_to_size(img, 16, "stretch")
    assert out.shape == (16, 16, 3) and meta == {"orig_hw": (20, 40), "box": (0, 0, 16, 16), "size": 16}
    out, meta = fit_to_size(img, 16, "pad")
    assert out.shape == (16, 16, 3) and meta == {"orig_hw": (20, 40), "box": (4, 0, 8, 16), "size": 16}
    with pytest.raises(ConfigError, match="data.resize: got 'crop'"):
        fit_to_size(img, 16, "crop")


def test_mask_downscale_is_a_majority_vote():
    m = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], np.uint8)
    out, _ = fit_to_size(m, 2, "stretch", "mask")
    assert out.tolist() == [[1, 0], [1, 0]]  # 3/4, 0/4; 3/4, 1/4 (ties of 2/4 would be foreground)


@pytest.mark.parametrize("mode,size", [("pad", 20), ("pad", 40), ("stretch", 40)])
def test_pad_round_trip_with_unfit(mode, size):
    blocks = (np.random.default_rng(0).random((5, 10)) > 0.5).astype(np.uint8)
    mask = np.kron(blocks, np.ones((4, 4), np.uint8))  # (20, 40), 4 px blocks
    small, meta = fit_to_size(mask, size, mode, "nearest")
    back = unfit(small, meta)
    assert back.shape == (20, 40) and back.dtype == np.uint8 and np.array_equal(back, mask)
    prob = unfit(torch.from_numpy(small[None].astype(np.float32)), meta, (20, 40))  # float: bilinear
    assert prob.shape == (1, 20, 40) and ((prob[0] > 0.5).numpy() == mask.astype(bool)).mean() > 0.95
