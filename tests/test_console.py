"""What the console and the pictures tell a user (issue 17): lr_find's warning, integer epoch ticks,
labelled grids, interpolation strips with their endpoints, the P(mask) colour bar, progress."""
import math

from sandbox.analysis.lr_find import end_slope, range_advice, still_falling

LRS = [10 ** (-5 + i / 4) for i in range(21)]  # 1e-5 .. 1, 4 per decade


def test_lr_find_warns_only_while_the_last_slope_of_the_curve_falls():
    # falls to 0.84 one step before the end, then jumps to 1.2: the curve turned. The old rule (minimum
    # within the last two points) called this "still falling"; the least-squares slope over the last 3
    # points (21 // 10 = 2 -> 3) is (1.2 - 0.85) / (2 * ln(10) / 4) > 0
    turned = [2.0 - 0.05 * i for i in range(18)] + [1.15, 1.14, 1.6]
    assert min(range(21), key=turned.__getitem__) == 19  # the minimum is the second-last point
    assert end_slope(LRS, turned) > 0 and not still_falling(LRS, turned)
    falling = [2.0 - 0.05 * i for i in range(21)]  # d loss / d log lr = -0.05 / (ln 10 / 4) everywhere
    assert math.isclose(end_slope(LRS, falling), -0.05 / (math.log(10) / 4))
    assert still_falling(LRS, falling) and not still_falling(LRS, falling, stopped_early=True)


def test_lr_find_advice_never_goes_above_lr_1_for_adam():
    def advice(end, optimizer):
        lrs = [end / 10 ** (3 - i / 4) for i in range(13)]
        return range_advice({"lrs": lrs, "still_falling": True}, optimizer)

    exhausted = advice(1.0, "adamw")
    assert "range is exhausted" in exhausted and "did not turn" in exhausted and "higher --max-lr" not in exhausted
    assert "range is exhausted" in advice(1.0, "adam")
    assert "--max-lr 1)" in advice(0.3, "adamw")  # 10 x 0.3 capped at 1
    assert "--max-lr 10)" in advice(1.0, "sgd")  # plain SGD: a higher lr is a fair question
    assert range_advice({"lrs": [1e-3, 1.0], "still_falling": False}, "adamw") is None


# ----------------------------------------------------------------------------- pictures
def open_figures(monkeypatch, draw):
    """The matplotlib figures ``draw()`` makes (their closing is suspended to look at them)."""
    from sandbox.viz.backend import plt

    real_close = plt.close
    real_close("all")
    monkeypatch.setattr(plt, "close", lambda *a, **k: None)
    draw()
    figs = [plt.figure(n) for n in plt.get_fignums()]
    monkeypatch.setattr(plt, "close", real_close)
    return figs


def test_every_epoch_and_step_axis_of_a_one_epoch_run_has_integer_ticks(tmp_path, monkeypatch):
    """One epoch used to get ticks 0.96, 0.98, ... (MaxNLocator(integer=True) needs 2 integers in view)."""
    from types import SimpleNamespace

    from sandbox.viz.backend import plt
    from sandbox.viz.curves import plot_curves, plot_generative, plot_groups

    records = [{"split": "train", "epoch": 1, "step": 1, "train/loss": 1.0},
               {"split": "train", "epoch": 1, "step": 2, "train/loss": 0.9, "train/loss/mask/dice": 0.5},
               {"split": "val", "epoch": 1, "step": 2, "val/loss": 0.8, "val/dice": 0.5, "val/fid_own": 3.0}]
    runs = {"a": [SimpleNamespace(epochs=[{"epoch": 1, "time": 9.0, "train/loss": 1.0, "val/dice": 0.5}])]}
    figs = open_figures(monkeypatch, lambda: (plot_curves(records, tmp_path), plot_groups(runs, tmp_path / "g.png"),
                                              plot_generative(records, tmp_path / "gen.png")))
    axes = [ax for f in figs for ax in f.axes if ax.get_xlabel() in ("epoch", "optimizer step")]
    assert len(figs) == 4 and len([ax for ax in axes if ax.get_xlabel() == "epoch"]) >= 3
    for ax in axes:
        assert all(float(t).is_integer() for t in ax.get_xticks()), (ax.get_title(), ax.get_xticks())
    plt.close("all")


def test_the_probability_map_has_a_colour_bar_in_every_row(monkeypatch):
    import torch

    from sandbox.viz.backend import plt
    from sandbox.viz.panels import segmentation_figure

    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(2, 3, 16, 16, generator=g), "mask": (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()}
    fig = segmentation_figure(batch, {"mask": torch.randn(2, 1, 16, 16, generator=g)})
    prob_axes = [ax for ax in fig.axes if ax.images and ax.images[0].get_cmap().name == "magma"]
    assert len(prob_axes) == 2 and all(ax.images[0].colorbar is not None for ax in prob_axes)
    bar = prob_axes[0].images[0].colorbar
    assert tuple(bar.mappable.get_clim()) == (0, 1)  # a probability: the bar spans 0..1 whatever the map holds
    assert sum(1 for ax in fig.axes if ax.get_label() == "<colorbar>") == 2  # nothing else got one
    plt.close(fig)


def test_a_labelled_grid_is_the_same_grid_with_a_title_band_and_row_labels(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from sandbox.viz.grids import save_grid

    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = np.asarray(Image.open(save_grid(images, tmp_path / "plain.png", nrow=2)))
    labelled = np.asarray(Image.open(save_grid(images, tmp_path / "lab.png", nrow=2, title="validation, epoch 3",
                                               row_labels=("inputs", "reconstructions"))))
    (h, w), (lh, lw) = plain.shape[:2], labelled.shape[:2]
    assert lh > h and lw > w  # a title band above, a label margin on the left
    assert np.array_equal(labelled[lh - h:, lw - w:], plain)  # the grid itself: the same pixels
    assert (labelled[:lh - h] < 128).any() and (labelled[lh - h:, :lw - w] < 128).any()  # text in both margins
    titled = np.asarray(Image.open(save_grid(images, tmp_path / "t.png", nrow=2, title="samples, epoch 1")))
    assert titled.shape[1] == w and titled.shape[0] > h  # a title alone: no left margin


def test_an_interpolation_strip_from_images_has_them_at_both_ends():
    import torch

    from sandbox.analysis.interpolation import strip

    frames, images = torch.rand(5, 3, 4, 4), torch.rand(3, 3, 4, 4)
    tiles = strip(frames, images)
    assert len(tiles) == len(frames) + 2
    assert torch.equal(tiles[0], images[0]) and torch.equal(tiles[-1], images[-1]) and torch.equal(tiles[1:-1], frames)
    assert torch.equal(strip(frames, images, cycle=True)[-1], images[0])  # a cycle ends where it started
    assert strip(frames, None) is frames  # random endpoints have no images


# ----------------------------------------------------------------------------- packaging
def test_the_packaged_configs_are_every_config_of_the_repository():
    """What a wheel ships (setup.py maps configs/ onto sandbox.packaged_configs, setup.cfg's package_data
    picks the files) is what a checkout reads: every YAML under configs/, nothing left out."""
    import configparser

    from sandbox.config.packaged import PATTERNS, config_files, configs_dir
    from tests.conftest import ROOT

    assert configs_dir() == ROOT / "configs"  # a checkout: the repository's own
    every = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))
    assert config_files(ROOT / "configs") == every and len(every) > 10
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    shipped = [p.strip() for p in cfg["options.package_data"]["sandbox.packaged_configs"].split(",")]
    assert tuple(shipped) == PATTERNS
    assert '{"sandbox.packaged_configs": "configs"}' in (ROOT / "setup.py").read_text()
    assert "recursive-include configs *.yaml" in (ROOT / "MANIFEST.in").read_text()
    assert "sandbox-init = sandbox.init:main" in (ROOT / "setup.cfg").read_text()


def test_sandbox_init_copies_the_configs_and_never_overwrites_an_edit(tmp_path, monkeypatch, capsys):
    import sys

    import pytest

    from sandbox.config.packaged import copy_configs
    from sandbox.errors import SandboxError
    from tests.conftest import ROOT, command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sandbox-init"])
    command("init").main()
    repo = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))
    assert sorted(p.relative_to(tmp_path / "configs") for p in (tmp_path / "configs").rglob("*.yaml")) == repo
    assert all((tmp_path / "configs" / f).read_bytes() == (ROOT / "configs" / f).read_bytes() for f in repo)
    assert f"{len(repo)} of {len(repo)} configs written to configs" in capsys.readouterr().out
    assert copy_configs(tmp_path / "configs") == []  # twice: nothing to write
    edited = tmp_path / "configs" / "studies" / "models.yaml"
    edited.write_text("# mine\n")
    with pytest.raises(SandboxError, match=r"models.yaml differs from the packaged config .*--force"):
        copy_configs(tmp_path / "configs")
    assert edited.read_text() == "# mine\n"
    assert copy_configs(tmp_path / "configs", force=True) == [edited]
    assert edited.read_bytes() == (ROOT / "configs" / "studies" / "models.yaml").read_bytes()


def test_an_installed_package_reads_its_packaged_configs(tmp_path):
    """In a wheel the configs are sandbox/packaged_configs/ (no configs/ beside the package)."""
    from sandbox.config.packaged import configs_dir, copy_configs

    package = tmp_path / "site-packages" / "sandbox"
    (package / "packaged_configs" / "studies").mkdir(parents=True)
    (package / "packaged_configs" / "unet_dice.yaml").write_text("name: a\n")
    (package / "packaged_configs" / "studies" / "models.yaml").write_text("title: b\n")
    assert configs_dir(package) == package / "packaged_configs"
    written = copy_configs(tmp_path / "out", package=package)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["studies/models.yaml", "unet_dice.yaml"]


# ----------------------------------------------------------------------------- progress
def test_a_sweep_says_run_k_of_n_and_an_eta_from_the_finished_runs():
    from sandbox.analysis.sweep import SweepProgress

    clock = SweepProgress(5, jobs=2)
    assert clock.start("a") == "[run 1 of 5] a" and clock.start("b") == "[run 2 of 5] b"
    assert clock.finish(None) == "1 of 5 done"  # a failure alone: no time to go by
    # mean 40 s over the finished runs; 3 left on 2 parallel jobs: ceil(3 / 2) = 2 rounds -> 80 s
    assert clock.finish(40.0) == "2 of 5 done, about 80 s left"
    clock = SweepProgress(4)
    clock.finish(100.0)
    assert clock.finish(140.0) == "2 of 4 done, about 4.0 min left"  # mean 120 s x 2 runs, one at a time
    assert clock.finish(0.0) == "3 of 4 done, about 80 s left"  # mean (100 + 140 + 0) / 3 x 1 run
    assert clock.finish(30.0) == "4 of 4 done"


def test_the_synthetic_cache_is_filled_up_front_and_only_once():
    from sandbox.data.attractors import Attractors
    from sandbox.data.render import fill_cache, progress

    data = {"train": Attractors("train", num=3, size=8), "val": Attractors("val", num=2, size=8, cache=False)}
    seconds, n = fill_cache(data)
    assert n == 3 and sorted(data["train"]._cache) == [0, 1, 2] and seconds >= 0  # val does not cache: left alone
    assert fill_cache(data)[1] == 0  # all there already
    assert progress([1], "x").disable and progress([1], "x", show=False).disable  # not a terminal / not main


def test_a_trainer_renders_its_synthetic_data_before_the_first_epoch(tiny_overrides, caplog):
    import logging

    from sandbox import build_trainer, load_config
    from tests.conftest import ROOT

    caplog.set_level(logging.INFO, logger="sandbox")
    trainer = build_trainer(load_config(ROOT / "configs" / "unet_dice.yaml", tiny_overrides))
    assert len(trainer.datasets["train"]._cache) == 8 and len(trainer.datasets["val"]._cache) == 4
    assert "rendered 12 synthetic images in" in caplog.text
