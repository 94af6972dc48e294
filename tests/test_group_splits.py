"""Leak-free splits: data.group_by keeps every group of files in one split; the dancers' sequences
never cross splits; predict.py warns when its inputs are the run's training images."""
import numpy as np
import pytest
import torch
from PIL import Image

from sandbox import build_trainer, load_config
from sandbox.analysis.prediction import predict_run
from sandbox.build import build_data
from sandbox.data import Dancers, splits_of
from sandbox.data.splits import make_splits, write_splits
from sandbox.errors import ConfigError

# 10 clips of 5 frames (clip00_f0 .. clip09_f4): 50 files
STEMS = [f"clip{c:02d}_f{f}" for c in range(10) for f in range(5)]
CLIP = r"^(clip\d+)_"


def clip_of(stem: str) -> str:
    return stem.split("_")[0]


def homes(splits: dict) -> dict[str, set]:
    out = {}
    for name, stems in splits.items():
        for s in stems:
            out.setdefault(clip_of(s), set()).add(name)
    return out


def test_group_by_keeps_every_clip_in_one_split_with_whole_group_counts():
    splits = make_splits(STEMS, 0, 0.2, 0.2, group_by=CLIP)
    assert all(len(h) == 1 for h in homes(splits).values())
    assert sorted(s for v in splits.values() for s in v) == sorted(STEMS)
    # n = 50: test and val take round(0.2 * 50) = 10 files each, i.e. exactly 2 clips of 5; train the other 6
    assert [len(splits[k]) for k in ("train", "val", "test")] == [30, 10, 10]
    assert splits == make_splits(list(reversed(STEMS)), 0, 0.2, 0.2, group_by=CLIP)  # seeded, order-free
    # the same files split without group_by put frames of one clip into two splits (the leak it prevents)
    assert any(len(h) > 1 for h in homes(make_splits(STEMS, 0, 0.2, 0.2)).values())


def test_group_id_is_the_first_group_that_matched_or_the_whole_match():
    stems = ["a-1", "a-2", "b-1", "b-2", "c-1", "c-2", "solo"]
    splits = make_splits(stems, 3, 0.3, 0.3, group_by=r"^(\w)-|^solo$")  # 'solo' is its own group (whole match)
    where = {s: k for k, v in splits.items() for s in v}
    assert where["a-1"] == where["a-2"] and where["b-1"] == where["b-2"] and where["c-1"] == where["c-2"]


def test_train_fraction_keeps_whole_groups():
    splits = make_splits(STEMS, 0, 0.2, 0.2, train_fraction=0.5, group_by=CLIP)
    assert len(splits["train"]) == 15 and all(len(h) == 1 for h in homes(splits).values())  # 3 of the 6 clips


@pytest.mark.parametrize("stems,pattern,message", [
    (STEMS, r"^(take\d+)_", r"^data\.group_by '\^\(take\\\\d\+\)_' matches none of the 50 file stems \(clip00_f0, "),
    (STEMS + ["other"], CLIP, r"^data\.group_by .* does not match 1 of the 51 file stems \(other\)"),
    (STEMS[:10], CLIP, r"^data\.group_by: the 2 groups of 10 files leave none for val"),
])
def test_a_pattern_that_misses_stems_or_too_few_groups_is_one_line(stems, pattern, message):
    with pytest.raises(ConfigError, match=message) as exc:
        make_splits(stems, 0, 0.2, 0.2, group_by=pattern)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("overrides,message", [
    (["data.name=folder", "data.group_by=(clip"], r"^data\.group_by: '\(clip' is not a regular expression \("),
    (["data.group_by=^(clip)"], r"^data\.group_by: dataset 'dancers' is not split from files"),
])
def test_bad_group_by_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def make_clips(root, clips=6, frames=3, size=32):
    rng = np.random.default_rng(0)
    for c in range(clips):
        for f in range(frames):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"c{c}_{f}.png")
            mask = np.zeros((size, size), np.uint8)
            mask[8:24, 8:24] = 255
            Image.fromarray(mask).save(root / "masks" / f"c{c}_{f}.png")


@pytest.fixture
def clips(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    make_clips(root)
    return root


def folder_cfg(root, tmp_path, *extra):
    return load_config(None, [f"out_dir={tmp_path}", "name=seg", "data.name=folder", f"data.root={root}",
                              "data.size=32", "data.val_fraction=0.2", "data.test_fraction=0.2", "data.batch_size=4",
                              "model.width=4", "model.depth=2", "train.epochs=1", "train.num_images=0",
                              "track.wandb=disabled", "train.mixed_precision=no", *extra])


def test_folder_runs_split_by_group_and_check_given_splits(clips, tmp_path):
    lists = splits_of(build_data(folder_cfg(clips, tmp_path, r"data.group_by=^(c\d)_"))["train"])
    where = {}
    for name, items in lists.items():
        for it in items:
            where.setdefault(it.stem[:2], set()).add(name)
    assert len(where) == 6 and all(len(h) == 1 for h in where.values())
    with pytest.raises(ConfigError, match=r"^data\.group_by '\^\(x\)' matches none of the 18 file stems"):
        build_data(folder_cfg(clips, tmp_path, "data.group_by=^(x)"))
    # reused split lists that put one clip in two splits are refused when group_by is set
    leaky = {"train": lists["train"] + lists["val"][:1], "val": lists["val"][1:], "test": lists["test"]}
    write_splits(leaky, tmp_path / "leaky")
    with pytest.raises(ConfigError, match=r"^data\.splits '.*leaky' puts group 'c\d' .* in train and val"):
        build_data(folder_cfg(clips, tmp_path, r"data.group_by=^(c\d)_", f"data.splits={tmp_path / 'leaky'}"))


def test_dancers_sequences_never_cross_splits():
    # The frames of one sequence share its background (drawn from (seed, split, sequence)); at difficulty 0 there
    # is no sensor noise, so the background pixels of two frames of one sequence are identical. A val or test
    # frame from a train sequence would share them with that sequence's train frames: none shares any.
    kw = dict(num=12, size=32, seed=0, seq_len=4, cache=False, difficulty=0.0)
    frames = {s: torch.stack([Dancers(s, **kw)[i]["image"] for i in range(12)]) for s in ("train", "val", "test")}

    def shared(a, b):  # fraction of pixels (all 3 channels) equal, for every pair of frames
        return ((a[:, None] - b[None]).abs().amax(2) == 0).flatten(2).float().mean(2)

    within = shared(frames["train"], frames["train"])
    assert min(float(within[i, j]) for i in range(12) for j in range(12) if i // 4 == j // 4) > 0.3
    for a, b in (("val", "train"), ("test", "train"), ("val", "test")):
        assert float(shared(frames[a], frames[b]).max()) == 0.0, (a, b)


def test_predict_warns_once_naming_inputs_from_the_train_split(clips, tmp_path):
    build_trainer(folder_cfg(clips, tmp_path, r"data.group_by=^(c\d)_")).fit()
    run = tmp_path / "seg"
    train_files = [clips / "images" / f"{s}.png" for s in
                   (line.split(",")[0] for line in (run / "splits" / "train.csv").read_text().splitlines()[1:])]
    test_files = [clips / "images" / f"{s}.png" for s in
                  (line.split(",")[0] for line in (run / "splits" / "test.csv").read_text().splitlines()[1:])]
    said = []
    predict_run(str(run), [str(f) for f in test_files + train_files[:2]], out_arg=str(tmp_path / "p1"), say=said.append)
    warnings = [line for line in said if "training split" in line]
    assert len(warnings) == 1
    assert f"2 of the {len(test_files) + 2} input image(s) are in the run's training split" in warnings[0]
    assert train_files[0].name in warnings[0] and train_files[1].name in warnings[0]
    said.clear()
    predict_run(str(run), [str(f) for f in test_files], out_arg=str(tmp_path / "p2"), say=said.append)
    assert not [line for line in said if "training split" in line]
