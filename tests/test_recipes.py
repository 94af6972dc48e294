"""The core's attention block (model.attention of ddpm/flow) and the committed attractor recipes.

The block: shapes, the identity at init for every input and time (zero-initialised output), the
attention itself against a hand-written softmax, that every pixel then sees every other one, and that
nets without it keep their keys. The recipes: they load, and build the net they say they build."""
import math
from pathlib import Path

import pytest
import torch

from sandbox import build_model, load_config
from sandbox.errors import ConfigError, SandboxError
from sandbox.models import MODELS
from sandbox.nn.attention import SelfAttention2d
from sandbox.nn.core import Encoder
from sandbox.nn.timestep import modulation

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_attention_keeps_the_shape_and_starts_as_the_identity():
    """Zero-initialised output projection: x + 0 for any input and any time embedding."""
    torch.manual_seed(0)
    block = SelfAttention2d(16, heads=4, emb_dim=8)
    x, emb = torch.randn(3, 16, 4, 4), torch.randn(3, 8)
    y = block(x, emb)
    assert y.shape == x.shape
    assert torch.equal(y, x)


def test_attention_is_softmax_of_scaled_dot_products():
    """With the output projection set to the identity, the block adds per head softmax(q k^T / sqrt(d)) v
    over the H * W pixels, computed here by hand from the block's own qkv of its normalised input."""
    torch.manual_seed(1)
    c, heads, h, w = 8, 2, 3, 2
    block = SelfAttention2d(c, heads=heads, norm="none")
    with torch.no_grad():
        block.out.weight.copy_(torch.eye(c)[:, :, None, None])
    x = torch.randn(2, c, h, w)
    qkv = torch.einsum("oc,bcn->bon", block.qkv.weight[:, :, 0, 0], x.reshape(2, c, h * w))
    q, k, v = qkv.reshape(2, 3, heads, c // heads, h * w).unbind(1)  # (B, heads, d, N)
    att = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(c // heads), dim=-1)
    expected = x + torch.einsum("bhnm,bhdm->bhdn", att, v).reshape(2, c, h, w)
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_attention_lets_every_pixel_see_every_other():
    """A change at one corner of the map moves the output at the opposite corner (a 3 x 3 conv could not)."""
    torch.manual_seed(2)
    block = SelfAttention2d(8, heads=2, norm="none")
    torch.nn.init.normal_(block.out.weight)
    x = torch.randn(1, 8, 6, 6)
    x2 = x.clone()
    x2[..., 0, 0] += 1.0
    assert not torch.allclose(block(x)[..., 5, 5], block(x2)[..., 5, 5])


def test_attention_is_time_conditioned_through_the_nets_modulation():
    """The block's scale-shift joins the one Modulation of the enclosing net: once trained away from
    zero, two times give two outputs."""
    torch.manual_seed(3)
    enc = Encoder(3, [8, 16], norm="group", emb_dim=8, attention=True)
    torch.nn.init.normal_(enc.attention.film.proj.weight)
    torch.nn.init.normal_(enc.attention.out.weight)
    x = torch.randn(1, 3, 8, 8)
    m = modulation(enc, torch.randn(1, 8))
    assert enc.attention.film in m.index
    out1 = enc(x, torch.zeros(1, 8))[-1]
    out2 = enc(x, torch.ones(1, 8))[-1]
    assert not torch.allclose(out1, out2)


def test_attention_refuses_widths_it_cannot_split():
    with pytest.raises(SandboxError, match="heads"):
        SelfAttention2d(6, heads=4)


def test_a_net_without_attention_keeps_its_keys():
    """model.attention unset: no new keys, so earlier checkpoints load as before; set: the bottleneck's."""
    plain = MODELS["flow"](size=16, width=8, depth=2).state_dict()
    attn = MODELS["flow"](size=16, width=8, depth=2, attention=True).state_dict()
    assert not any("attention" in k for k in plain)
    extra = set(attn) - set(plain)
    assert extra and all(k.split(".", 1)[1].startswith("encoder.attention.") for k in extra)  # net and its EMA


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_attention_at_init_changes_nothing_in_the_denoiser(name):
    """A fresh net with attention predicts exactly what the same net with the block removed predicts."""
    torch.manual_seed(0)
    net = MODELS[name](size=16, width=8, depth=2, attention=True).net
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        with_block = net(x, t)
        del net.encoder.attention
        without = net(x, t)
    assert torch.equal(with_block, without)


def test_attention_is_refused_where_no_model_reads_it():
    with pytest.raises(ConfigError, match="model.attention"):
        MODELS["vae"].check_options({"attention": True})


@pytest.mark.parametrize("recipe", ["flow_attractors", "ddpm_attractors"])
def test_recipe_builds_the_net_it_says(recipe):
    cfg = load_config(str(ROOT / "configs" / f"{recipe}.yaml"), ["track.wandb=disabled"])
    model = build_model(cfg)
    assert hasattr(model.net.encoder, "attention") == bool(cfg.model.attention)
    x = torch.rand(2, 3, cfg.data.size, cfg.data.size)
    assert model(x, torch.tensor([0.1, 0.8])).shape == x.shape
