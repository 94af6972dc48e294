from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from sandbox.errors import ConfigError, SandboxError
from sandbox.models import MODELS, check_model_options
from sandbox.nn.blocks import make_upsample
from sandbox.nn.core import Decoder, Encoder
from sandbox.nn.resnet import ResNet18Encoder

ROOT = Path(__file__).resolve().parents[1]
# every registered model trained on (image -> targets); generative ones bring their own tests
SEGMENTATION = [n for n in MODELS.names() if MODELS[n].task == "segmentation"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny ops, one thread is faster


@pytest.mark.parametrize("name", SEGMENTATION)  # generative models: tests/test_generative.py
@pytest.mark.parametrize("size,depth", [(32, 1), (32, 3), (64, 2), (64, 4)])
def test_forward_backward_keeps_size(name, size, depth):
    torch.manual_seed(0)
    model = MODELS[name](targets={"mask": 1, "depth": 1}, width=4, depth=depth)
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert isinstance(out, dict) and set(out) == {"mask", "depth"}
    for v in out.values():
        assert v.shape == (2, 1, size, size)
    loss = sum(v.mean() for v in out.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# Every upsample x skip pair once; block x norm rotate so that all 6 of their pairs appear too.
COMBOS = [
    dict(upsample="transpose", skip="none", block="plain", norm="batch"),
    dict(upsample="transpose", skip="concat", block="residual", norm="group"),
    dict(upsample="transpose", skip="add", block="plain", norm="none"),
    dict(upsample="pixel_shuffle", skip="none", block="residual", norm="none"),
    dict(upsample="pixel_shuffle", skip="concat", block="plain", norm="batch"),
    dict(upsample="pixel_shuffle", skip="add", block="residual", norm="group"),
    dict(upsample="bilinear", skip="none", block="plain", norm="group"),
    dict(upsample="bilinear", skip="concat", block="residual", norm="none"),
    dict(upsample="bilinear", skip="add", block="residual", norm="batch"),
    dict(dilation=2, dropout=0.1, downsample="stride"),
    dict(widths=[4, 6, 10], skip="add", block="residual"),
    dict(encoder="resnet18", skip="concat", upsample="pixel_shuffle"),
    dict(encoder="resnet18", skip="add", upsample="bilinear", norm="group", dropout=0.1, dilation=2),
    dict(encoder="resnet18", skip="none", block="residual", norm="none"),
]


def _legal_cases():
    cases, seen = [], set()
    for name in SEGMENTATION:
        for combo in COMBOS:
            if name == "simpleconv":  # never resizes: keep the rest of the combination
                if combo.get("encoder", "core") != "core":
                    continue
                combo = {k: v for k, v in combo.items() if k not in ("upsample", "downsample")}
            key = (name, repr(sorted(combo.items())))
            if key not in seen:
                seen.add(key)
                cases.append(pytest.param(name, combo, id=f"{name}-" + "-".join(f"{k}={v}" for k, v in combo.items())))
    return cases


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name,combo", _legal_cases())
def test_legal_combinations_forward_backward(name, combo, size):
    opts = dict(width=4, depth=2, **combo)
    check_model_options(name, opts)  # legal: no error
    torch.manual_seed(0)
    model = MODELS[name](targets={"mask": 1, "depth": 1}, **opts)
    out = model(torch.rand(2, 3, size, size))
    assert isinstance(out, dict) and set(out) == {"mask", "depth"}
    assert all(v.shape == (2, 1, size, size) for v in out.values())
    assert 0 <= out["depth"].min() and out["depth"].max() <= 1
    (out["mask"].square().mean() + out["depth"].mean()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    assert sum(p.grad.abs().sum() for p in trainable.values()) > 0


@pytest.mark.parametrize("in_channels", [1, 4])
@pytest.mark.parametrize("name,encoder", [(n, "core") for n in SEGMENTATION] + [("unet", "resnet18")])
def test_other_input_channel_counts(name, encoder, in_channels):
    model = MODELS[name](targets={"mask": 1}, in_channels=in_channels, width=4, depth=2, encoder=encoder)
    assert model(torch.rand(1, in_channels, 32, 32))["mask"].shape == (1, 1, 32, 32)


def test_mask_is_logits_and_regression_goes_through_a_sigmoid():
    model = MODELS["unet"](targets={"mask": 1, "depth": 1}, width=4, depth=1).eval()
    for head in model.heads.heads.values():
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.constant_(head.bias, 3.0)
    out = model(torch.rand(1, 3, 16, 16))
    assert torch.allclose(out["mask"], torch.full_like(out["mask"], 3.0))
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 1 / (1 + torch.exp(torch.tensor(-3.0)))))


@pytest.mark.parametrize("name", SEGMENTATION)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_measured_bottleneck_side(name, depth):
    size = 32
    model = MODELS[name](width=4, depth=depth)
    feats = model.encoder(torch.rand(1, 3, size, size))
    assert len(feats) == depth + 1 and model.encoder.depth == depth
    expected = size if name == "simpleconv" else size // 2**depth
    assert feats[-1].shape[-1] == expected == size // model.encoder.reduction
    assert [f.shape[1] for f in feats] == model.encoder.out_channels


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_resnet18_depth_maps_to_levels(depth):
    torch.manual_seed(0)
    model = MODELS["unet"](targets={"mask": 1}, width=4, depth=depth, encoder="resnet18")
    x = torch.rand(1, 3, 64, 64)
    feats = model.encoder(x)
    assert [f.shape[-1] for f in feats] == [64 // 2**i for i in range(depth + 1)]
    assert [f.shape[1] for f in feats] == [3, 64, 64, 128, 256, 512][:depth + 1] == model.encoder.out_channels
    assert model.encoder.reduction == 2**depth
    assert len(model.encoder.layers) == depth - 1  # the unused stages are not built
    assert model(x)["mask"].shape == (1, 1, 64, 64)


@pytest.mark.parametrize("downsample", ["maxpool", "stride"])
@pytest.mark.parametrize("size,depth", [(32, 2), (64, 3), (64, 5)])
def test_bottleneck_side_is_size_over_2_pow_depth(downsample, size, depth):
    enc = Encoder(3, [4 * 2**i for i in range(depth + 1)], downsample=downsample)
    feats = enc(torch.rand(1, 3, size, size))
    assert len(feats) == depth + 1
    assert [f.shape[-1] for f in feats] == [size // 2**i for i in range(depth + 1)]
    assert feats[-1].shape[1] == enc.out_channels[-1]


@pytest.mark.parametrize("skip", ["none", "concat", "add"])
@pytest.mark.parametrize("upsample", ["transpose", "pixel_shuffle", "bilinear"])
def test_decoder_options_restore_resolution(skip, upsample):
    enc = Encoder(3, [8, 16, 32])
    dec = Decoder(enc.out_channels, skip=skip, upsample=upsample)
    y = dec(enc(torch.rand(2, 3, 32, 32)))
    assert y.shape == (2, 8, 32, 32)


@pytest.mark.parametrize("kind", ["transpose", "transpose_k4", "transpose_k3", "pixel_shuffle", "bilinear"])
def test_every_upsample_choice_doubles_the_side(kind):
    from sandbox.config.schema import ModelConfig, choices

    assert kind in choices(ModelConfig, "upsample")  # the config accepts what the core builds
    assert make_upsample(kind, 6, 4)(torch.rand(2, 6, 5, 7)).shape == (2, 4, 10, 14)  # odd sides too


def test_transposed_conv_kernels_overlap_as_derived():
    # Ones in, all-ones kernel, no bias: each output pixel counts the taps that reach it. Output o of a
    # stride-2 transposed conv with padding p takes input i through tap k = o + p - 2i (0 <= k < kernel).
    # k4, p1: k = o + 1 - 2i hits 2 of 0..3 for every o: 2 x 2 = 4 taps everywhere (even overlap).
    # k3, p1: even o = 2j: k = 1 only (1 tap); odd o: k = 0 and 2 (2 taps): per 2x2 phase 1, 2, 2, 4.
    def taps(kind):
        up = make_upsample(kind, 1, 1)
        torch.nn.init.ones_(up.weight)
        torch.nn.init.zeros_(up.bias)
        with torch.no_grad():
            return up(torch.ones(1, 1, 6, 6))[0, 0, 2:-2, 2:-2]  # interior: no border effects

    assert torch.equal(taps("transpose_k4"), torch.full((8, 8), 4.0))
    assert torch.equal(taps("transpose"), torch.ones(8, 8))  # k2: no overlap, one tap each
    k3 = taps("transpose_k3")
    assert [float(k3[i, j]) for i in (0, 1) for j in (0, 1)] == [1.0, 2.0, 2.0, 4.0]  # interior row 2 is even
    assert torch.equal(k3, k3[:2, :2].repeat(4, 4))  # the same 2 x 2 pattern everywhere: a checkerboard


def test_add_skip_projects_mismatched_widths():
    dec = Decoder([3, 8, 16], widths=[4, 8, 32], skip="add")
    assert isinstance(dec.projs[0], torch.nn.Identity)  # level 1: 8 == 8
    assert dec.projs[1].weight.shape == (4, 3, 1, 1)  # level 0: 3 -> 4
    feats = [torch.rand(1, 3, 16, 16), torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)]
    assert dec(feats).shape == (1, 4, 16, 16)


def test_hourglass_has_no_skip_path_and_unet_does():
    """Only the UNet's output depends on the fine encoder features directly: perturbing an encoder
    feature of level < depth (the finest, f0, included) changes the UNet's output and leaves the
    HourGlass's bit for bit, while the bottleneck feature drives both."""
    torch.manual_seed(0)
    for name, expect_skip in [("unet", True), ("hourglass", False)]:
        m = MODELS[name](width=4, depth=2).eval()
        with torch.no_grad():
            feats = m.encoder(torch.rand(2, 3, 16, 16))
            out = m.heads(m.decoder(feats))["mask"]
            for level in range(len(feats)):
                moved = [f + 1.0 if i == level else f for i, f in enumerate(feats)]
                delta = (m.heads(m.decoder(moved))["mask"] - out).abs().max().item()
                carries = expect_skip or level == len(feats) - 1
                assert (delta > 1e-4) if carries else (delta == 0), (name, level, delta)


def test_simpleconv_never_resizes():
    m = MODELS["simpleconv"](width=4, depth=2)
    feats = m.encoder(torch.rand(1, 3, 33, 17))  # any size works without pooling
    assert all(f.shape[-2:] == (33, 17) for f in feats)


def test_input_not_divisible_is_one_clear_error():
    with pytest.raises(SandboxError, match=r"input of 30x32 px does not halve 2 times evenly; use sides divisible by 4"):
        MODELS["unet"](width=4, depth=2)(torch.rand(1, 3, 30, 32))


ILLEGAL = [
    ("simpleconv", {"upsample": "bilinear"}, r"^model\.upsample: simpleconv never resizes; leave it unset$"),
    ("simpleconv", {"downsample": "stride"}, r"^model\.downsample: simpleconv never resizes; leave it unset$"),
    ("simpleconv", {"encoder": "resnet18"}, r"^model\.encoder: simpleconv never resizes, but resnet18 halves"),
    ("unet", {"encoder": "resnet18", "depth": 6}, r"^model\.encoder: resnet18 supports depth 1\.\.5, got 6$"),
    ("hourglass", {"encoder": "resnet18", "depth": 0}, r"^model\.encoder: resnet18 supports depth 1\.\.5, got 0$"),
    ("hourglass", {"encoder": "resnet18", "downsample": "stride"}, r"^model\.downsample: resnet18 downsamples by"),
    ("unet", {"weights": "w.pth"}, r"^model\.weights: only model\.encoder=resnet18 loads weights"),
    ("unet", {"encoder": "resnet18", "weights": "nope.pth"}, r"^model\.weights: file 'nope\.pth' not found"),
    ("unet", {"skip": "sum"}, r"^model\.skip: got 'sum', expected one of 'none', 'concat', 'add'$"),
    ("hourglass", {"upsample": "nearest"}, r"^model\.upsample: got 'nearest', expected one of 'transpose', "),
    ("unet", {"norm": "layer"}, r"^model\.norm: got 'layer', expected one of 'batch', 'group', 'none'$"),
    ("unet", {"encoder": "vit"}, r"^model\.encoder: got 'vit', expected one of 'core', 'resnet18'$"),
    ("unet", {"widths": [4, 8], "depth": 3}, r"^model\.widths: got 2 widths for model\.depth=3; expected depth \+ 1 = 4"),
    ("unet", {"dropout": 1.0}, r"^model\.dropout: got 1\.0, expected a number in \[0, 1\)$"),
    ("unet", {"dilation": 0}, r"^model\.dilation: got 0, expected an integer >= 1$"),
    ("unet", {"freeze_encoder": "yes"}, r"^model\.freeze_encoder: got 'yes', expected true or false$"),
    ("unet", {"colour": 3}, r"^model\.colour: unknown option for unet; accepted: in_channels, width, "),
]


@pytest.mark.parametrize("name,opts,message", ILLEGAL, ids=[f"{n}-{'-'.join(o)}" for n, o, _ in ILLEGAL])
def test_illegal_options_raise_config_error_with_key(name, opts, message):
    with pytest.raises(ConfigError, match=message):
        check_model_options(name, opts)
    with pytest.raises(ConfigError, match=message):  # the Python API fails with the same line
        MODELS[name](width=4, **opts)


def test_check_model_options_unknown_model_and_none_means_default():
    with pytest.raises(ConfigError, match=r"^model\.name: unknown model 'vit'; accepted: .*unet"):
        check_model_options("vit", {})
    check_model_options("simpleconv", {"upsample": None, "downsample": None, "weights": None, "depth": 3})


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_segmentation_config_passes_the_checks_and_builds(path):
    """The model section of each config (with its data.size; its data source may be absent here)."""
    from sandbox.build import build_model
    from sandbox.config.loading import config_from_dict, read_yaml

    raw = read_yaml(path)
    model = raw.get("model") or {}
    if model.get("name", "unet") not in SEGMENTATION:
        pytest.skip(f"{model.get('name')} is not a segmentation model")
    cfg = config_from_dict({"model": model, "data": {"size": (raw.get("data") or {}).get("size", 128)}})
    check_model_options(cfg.model.name, {k: v for k, v in vars(cfg.model).items() if k != "name"})
    net = build_model(cfg).eval()
    with torch.no_grad():
        out = net(torch.rand(1, cfg.model.in_channels, cfg.data.size, cfg.data.size))
    assert out["mask"].shape == (1, 1, cfg.data.size, cfg.data.size)


# ----------------------------------------------------------------------------- resnet18 weights

@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(state, path)
    return path, state


def test_resnet18_loads_a_local_state_dict(r18_file):
    path, state = r18_file
    check_model_options("unet", {"encoder": "resnet18", "weights": str(path), "depth": 3})
    model = MODELS["unet"](width=4, depth=3, encoder="resnet18", weights=str(path))
    enc = model.encoder
    assert torch.equal(enc.stem[0].weight, state["conv1.weight"])
    assert torch.equal(enc.stem[1].running_var, state["bn1.running_var"])
    assert torch.equal(enc.layers[0][1][1].conv2.weight, state["layer1.1.conv2.weight"])
    assert torch.equal(enc.layers[1][0].downsample[0].weight, state["layer2.0.downsample.0.weight"])


def test_resnet18_weights_wrapped_and_ddp_prefixed(tmp_path, r18_file):
    _, state = r18_file
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items() if k.startswith(("conv1", "bn1", "layer"))}},
               path)
    enc = ResNet18Encoder(3, depth=1, weights=path)
    assert torch.equal(enc.stem[0].weight, state["conv1.weight"])


def test_resnet18_one_channel_weights_see_grey_as_rgb(r18_file):
    path, _ = r18_file
    rgb, grey = ResNet18Encoder(3, 1, path).eval(), ResNet18Encoder(1, 1, path).eval()
    g = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(grey(g)[-1], rgb(g.expand(1, 3, 32, 32))[-1], rtol=1e-4, atol=1e-5)
    four = ResNet18Encoder(4, 1, path)
    w = rgb.stem[0].weight
    torch.testing.assert_close(four.stem[0].weight, torch.cat([w, w[:, :1]], 1) * 0.75)
    assert four(torch.rand(1, 4, 32, 32))[-1].shape == (1, 64, 16, 16)


def test_resnet18_weights_missing_mismatching_or_unreadable(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.weights: file '.*nope\.pth' not found"):
        MODELS["unet"](encoder="resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(SandboxError, match=r"resnet18 weights: file '.*nope\.pth' not found"):
        ResNet18Encoder(3, 2, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 5, 5), "head.weight": torch.zeros(2)}, bad)
    with pytest.raises(SandboxError, match=r"resnet18 weights: '.*bad\.pth' does not match torchvision's resnet18: "
                                           r"missing bn1\.weight, .*; unexpected head\.weight \(1\); "
                                           r"shape conv1\.weight \(64, 3, 5, 5\) != \(64, 3, 7, 7\) \(1\)$"):
        MODELS["unet"](encoder="resnet18", weights=str(bad), width=4, depth=2)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SandboxError, match=r"^resnet18 weights: cannot read '.*junk\.pth' as a torch state dict"):
        ResNet18Encoder(3, 2, junk)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(SandboxError, match=r"'.*list\.pth' holds a list, expected a state dict"):
        ResNet18Encoder(3, 2, listed)


@pytest.mark.parametrize("encoder", ["resnet18", "core"])
def test_freeze_encoder_trains_only_the_decoder(encoder):
    torch.manual_seed(0)
    model = MODELS["unet"](targets={"mask": 1}, width=4, depth=2, encoder=encoder, freeze_encoder=True)
    model.train()
    assert model.training and not any(m.training for m in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # weights and BN statistics
    dec_before = {k: v.clone() for k, v in model.decoder.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.rand(2, 3, 32, 32))["mask"].mean().backward()
    opt.step()
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in enc_before.items())
    changed = [k for k, p in model.decoder.named_parameters() if not torch.equal(p, dec_before[k])]
    assert len(changed) == len(dec_before)


# ----------------------------------------------------------------------------- pixel shuffle + ICNR

def _phase_means(y):
    return torch.stack([y[..., i::2, j::2].mean() for i in range(2) for j in range(2)])


def test_pixel_shuffle_icnr_is_checkerboard_free_at_init():
    torch.manual_seed(0)
    up = make_upsample("pixel_shuffle", 8, 4)
    y = up(torch.full((1, 8, 8, 8), 0.7))
    assert y.shape == (1, 4, 16, 16)
    torch.testing.assert_close(_phase_means(y), _phase_means(y)[:1].expand(4))
    # stronger: on any input, the output is the nearest-neighbour upsampling of its own even phase
    y = up(torch.randn(1, 8, 8, 8))
    assert torch.equal(y, F.interpolate(y[..., ::2, ::2], scale_factor=2, mode="nearest"))
    # the control: without ICNR the four phases differ (the checkerboard ICNR removes)
    plain = make_upsample("pixel_shuffle", 8, 4, icnr=False)(torch.full((1, 8, 8, 8), 0.7))
    assert (_phase_means(plain) - _phase_means(plain)[0]).abs().max() > 1e-3
