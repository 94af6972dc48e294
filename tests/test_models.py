import pytest
import torch

from sandbox.models import MODELS
from sandbox.nn.core import Decoder, Encoder


@pytest.mark.parametrize("name", MODELS.names())
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


def test_hourglass_has_no_skip_path_and_unet_does():
    """Only the UNet's output depends on the fine encoder features directly."""
    torch.manual_seed(0)
    for name, expect_skip in [("unet", True), ("hourglass", False)]:
        m = MODELS[name](width=4, depth=2)
        assert (m.decoder.skip != "none") == expect_skip


def test_simpleconv_never_resizes():
    m = MODELS["simpleconv"](width=4, depth=2)
    feats = m.encoder(torch.rand(1, 3, 33, 17))  # any size works without pooling
    assert all(f.shape[-2:] == (33, 17) for f in feats)
