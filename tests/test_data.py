import numpy as np
import pytest
import torch

from sandbox.data import DATASETS
from sandbox.data.synthetic import Dancers


def test_registered_datasets_declare_targets():
    for name in DATASETS.names():
        assert DATASETS[name].targets


def test_dancers_sample_contract():
    ds = Dancers("train", num=4, size=64, seed=0)
    s = ds[1]
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["mask"].shape == (1, 64, 64) and set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert s["depth"].shape == (1, 64, 64) and 0 <= s["depth"].min() and s["depth"].max() <= 1
    assert s["index"] == 1
    with pytest.raises(IndexError):
        ds[4]


def test_dancers_deterministic_from_seed_split_index():
    a = Dancers("train", num=10, size=64, seed=3, cache=False)
    b = Dancers("train", num=10, size=64, seed=3, cache=True)
    for i in (0, 7):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
    other_seed = Dancers("train", num=10, size=64, seed=4)
    other_split = Dancers("val", num=10, size=64, seed=3)
    assert not torch.equal(a[0]["image"], other_seed[0]["image"])
    assert not torch.equal(a[0]["image"], other_split[0]["image"])


def test_dancer_person_is_foreground_with_thin_limbs():
    ds = Dancers("val", num=16, size=128, seed=0)
    fracs = [ds[i]["mask"].mean().item() for i in range(16)]
    assert all(0.01 < f < 0.35 for f in fracs), fracs  # a person, never empty, never the whole frame
    # thin structures: a sizeable share of the mask lies within 2 px of its boundary
    m = ds[0]["mask"][0].numpy().astype(bool)
    eroded = m.copy()
    for _ in range(2):
        e = eroded.copy()
        e[1:] &= eroded[:-1]
        e[:-1] &= eroded[1:]
        e[:, 1:] &= eroded[:, :-1]
        e[:, :-1] &= eroded[:, 1:]
        eroded = e
    assert (m & ~eroded).sum() / m.sum() > 0.3
    # the person is nearer than the background behind it
    s = ds[0]
    assert s["depth"][s["mask"] > 0].mean() < s["depth"][s["mask"] == 0].mean()


def test_poses_change_smoothly_within_a_sequence_and_jump_between():
    ds = Dancers("train", num=16, size=64, seed=0, seq_len=8)

    def iou(i, j):
        a, b = ds[i]["mask"] > 0, ds[j]["mask"] > 0
        return (a & b).sum().item() / max((a | b).sum().item(), 1)

    within = np.mean([iou(i, i + 1) for i in range(0, 7)])
    across = iou(7, 8)  # last frame of sequence 0 vs first of sequence 1
    assert within > 0.3 and within > across


def test_difficulty_adds_clutter():
    easy = Dancers("train", num=8, size=64, seed=0, difficulty=0.0)
    hard = Dancers("train", num=8, size=64, seed=0, difficulty=2.0)
    # image variance outside the person grows with clutter and noise
    def bg_std(ds):
        return np.mean([ds[i]["image"][:, ds[i]["mask"][0] == 0].std().item() for i in range(8)])
    assert bg_std(hard) > bg_std(easy)
