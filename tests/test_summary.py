"""sandbox.nn.measure and the summary CLI: numbers checked against hand computation."""

import pytest
import torch
from torch import nn

from sandbox import load_config
from sandbox.models import MODELS
from sandbox.analysis.measure import (ReceptiveField, activation_memory, bottleneck_shape, count_params,
                                      flops_per_image, measure_receptive_field, predicted_bottleneck_side,
                                      receptive_field, segmentation_models, summarize)
from sandbox.analysis.tables import format_table
from tests.conftest import ROOT, run_command

SEG = segmentation_models()


def tiny(name: str, depth: int):
    torch.manual_seed(0)
    return MODELS[name](width=4, depth=depth)


@pytest.mark.parametrize("name", SEG)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_measured_bottleneck_matches_prediction(name, depth):
    size = 32
    downsamples = getattr(MODELS[name], "downsamples", True)
    model = tiny(name, depth)
    c, h, w = bottleneck_shape(model, size)
    expected = size // 2**depth if downsamples else size  # simpleconv keeps the full side
    assert (h, w) == (expected, expected)
    assert predicted_bottleneck_side(size, depth, downsamples) == expected
    assert c == model.encoder.out_channels[-1]


def test_flops_of_one_conv_by_hand():
    # 2 FLOPs per multiply-add: 2 * Cin * Cout * k*k per output pixel, 16*16 pixels, bias not counted
    assert flops_per_image(nn.Conv2d(3, 8, 3, padding=1), 16) == 2 * 3 * 8 * 9 * 16 * 16


def test_flops_scale_with_pixels():
    model = tiny("simpleconv", 1)  # convolutions only, no resizing: FLOPs proportional to H*W
    assert flops_per_image(model, 64) == 4 * flops_per_image(model, 32)


def test_count_params_by_hand():
    conv = nn.Conv2d(3, 8, 3)
    assert count_params(conv) == (3 * 8 * 9 + 8, 3 * 8 * 9 + 8)
    conv.bias.requires_grad_(False)
    assert count_params(conv) == (3 * 8 * 9 + 8, 3 * 8 * 9)


@pytest.mark.parametrize("layers,expected", [
    ([nn.Conv2d(3, 4, 1)], 1),
    ([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)], 5),  # 1 + 2 + 2
    ([nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)], 5),
    ([nn.Conv2d(3, 4, 3, padding=2, dilation=2)], 5),
    # 3, then pool: 3 + 1 = 4 at stride 2, then conv: 4 + 2 * 2 = 8 (max-pool sends gradient to one pixel per window)
    ([nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1)], 8),
])
def test_receptive_field_of_small_stacks_by_hand(layers, expected):
    torch.manual_seed(0)
    assert receptive_field(nn.Sequential(*layers), 32) == expected


def test_receptive_field_of_models_by_hand():
    # simpleconv depth d: (d + 1) encoder + d decoder stages of two 3x3 convs: 1 + 2 * 2 * (2d + 1)
    for d in (1, 2, 3):
        assert receptive_field(tiny("simpleconv", d), 64) == 8 * d + 5
    # unet/hourglass depth 1: a bottleneck pixel j sees input 2j-6 .. 2j+7 (14 px); the last two 3x3
    # convs at full size reach 3 neighbouring bottleneck pixels: 14 + 2 * 2 = 18
    assert receptive_field(tiny("unet", 1), 32) == 18
    assert receptive_field(tiny("hourglass", 1), 32) == 18


@pytest.mark.parametrize("name", SEG)
def test_receptive_field_grows_with_depth(name):
    rfs = [receptive_field(tiny(name, d), 32) for d in (1, 2, 3)]
    assert rfs[0] < rfs[1] < rfs[2], rfs


def test_downsampling_sees_further_than_simpleconv():
    assert receptive_field(tiny("unet", 2), 64) > receptive_field(tiny("simpleconv", 2), 64)


def test_receptive_field_beyond_the_image_is_remeasured_larger():
    model = tiny("unet", 3)  # RF 92 px: reaches the border at 32 and 64, fits at 128
    assert measure_receptive_field(model, 32) == ReceptiveField(92, 128, False)
    # not allowed to grow: the box is the whole image and flagged as a lower bound
    assert measure_receptive_field(model, 32, max_scale=1) == ReceptiveField(32, 32, True)


def test_receptive_field_target_and_bad_target():
    torch.manual_seed(0)
    model = MODELS["unet"](targets={"mask": 1, "depth": 1}, width=4, depth=1)
    assert receptive_field(model, 32, target="depth") == 18
    with pytest.raises(Exception, match="accepted: mask, depth"):
        receptive_field(model, 32, target="edges")


def test_measuring_leaves_the_model_untouched():
    model = tiny("unet", 2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops_per_image(model, 32), bottleneck_shape(model, 32), receptive_field(model, 32)
    activation_memory(model, 32, 2)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats unchanged
    assert all(p.grad is None for p in model.parameters())


def test_activation_memory_by_hand():
    # conv output: 8 channels * 16 * 16 pixels; an in-place ReLU aliases it (counted once), a new one does not
    numel, batch = 8 * 16 * 16, 2
    inplace = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    assert activation_memory(inplace, 16, batch) == numel * batch * 4
    assert activation_memory(fresh, 16, batch) == 2 * numel * batch * 4
    assert activation_memory(fresh, 16, batch, dtype_bytes=2) == 2 * numel * batch * 2


def test_format_table():
    rows = [{"model": "a", "params": 1234, "gflops": 0.5, "bottleneck": (8, 4, 4), "rf_lower_bound": False},
            {"model": "b", "params": 5, "extra": "x|y"}]
    assert format_table(rows, labels={"extra": "note"}).splitlines() == [
        "| model | params | GFLOPs/img (fwd) | bottleneck C x h x w (measured) | RF is a lower bound | note |",
        "|---|---:|---:|---:|---:|---|",
        "| a | 1,234 | 0.5 | 8 x 4 x 4 | no |  |",
        "| b | 5 |  |  |  | x\\|y |",
    ]


def test_summarize_tiny_config():
    cfg = load_config(ROOT / "configs" / "unet_dice.yaml", ["data.size=32", "model.width=4", "model.depth=2"])
    row = summarize(cfg)
    assert row["model"] == "unet" and row["size"] == 32
    assert row["bottleneck"] == (16, 8, 8) and row["bottleneck_predicted"] == 8
    assert row["rf"] == 44 and row["rf_at"] == 64  # reaches the 32 px border, measured again at 64
    assert row["params"] == row["trainable"] > 0 and row["gflops"] > 0 and row["activation_mb"] > 0


def test_strided_downsampling_reads_the_input_channels_of_the_encoder():
    """With downsample=stride the first conv in module order is a 16 -> 16 downsampling conv."""
    cfg = load_config(ROOT / "configs" / "unet_dice.yaml", ["data.size=32", "model.width=4", "model.depth=2",
                                                            "model.downsample=stride"])
    row = summarize(cfg)
    assert row["bottleneck"] == (16, 8, 8) and row["rf"] > 0


GENERATIVE = [n for n in MODELS if n not in SEG]


@pytest.mark.parametrize("name", GENERATIVE)
def test_summarize_generative_models(name):
    """Built for one size (a linear bottleneck): the RF is the whole image, a lower bound measured at
    that size (not re-measured larger); the bottleneck is the conv core's, before the flatten."""
    denoising = MODELS[name].trainer == "denoising"  # ddpm, flow: a fully convolutional time-conditioned UNet
    over = ["data.name=attractors", "data.size=32", "model.width=4", "model.depth=2", f"model.name={name}",
            "train.monitor=val/loss", "train.monitor_mode=min"]
    over += ["model.norm=group"] if denoising else ["model.latent_dim=4", "loss={image: {mse: 1.0}}"]
    row = summarize(load_config(None, over))
    assert row["bottleneck"][1:] == (8, 8) and row["bottleneck_predicted"] == 8
    # group norm mixes the whole image: the RF reaches the border at every size the UNet can take
    assert (row["rf"], row["rf_at"], row["rf_lower_bound"]) == ((128, 128, True) if denoising else (32, 32, True))
    assert row["gflops"] > 0 and row["params"] > 0
    assert ("note" in row) == (name == "dcgan")  # a GAN is measured through its discriminator


def run_cli(*args):
    return run_command("summary", "--config", ROOT / "configs" / "unet_dice.yaml", *args)


def test_cli_prints_a_table():
    res = run_cli("data.size=64", "model.width=4")
    assert res.code == 0, res.err[-2000:]
    table = [ln for ln in res.out.splitlines() if ln.startswith("|")]
    assert len(table) == 3 and "bottleneck" in table[0] and table[2].startswith("| unet | 64 |")


def test_cli_all_models_gives_one_row_each():
    res = run_cli("--all-models", "data.size=32", "model.width=4", "model.depth=1")
    assert res.code == 0, res.err[-2000:]
    rows = [ln for ln in res.out.splitlines() if ln.startswith("|")][2:]
    assert [r.split("|")[1].strip() for r in rows] == SEG


def test_cli_bad_override_is_one_line():
    res = run_cli("model.depth=9")
    assert res.code == 2
    assert "Traceback" not in res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "model.depth" in lines[0], res.err
