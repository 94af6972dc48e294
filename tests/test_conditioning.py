"""Conditions and classifier-free guidance (issue 31, item 1): the condition embedding, guidance in every
sampler, and the data's ``condition``. Closed-form checks, no training."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sandbox.build import build_data
from sandbox.config.loading import load_config
from sandbox.config.schema import Config
from sandbox.config import validate as validate_mod
from sandbox.data.attractors import Attractors
from sandbox.data.conditions import Conditioned, condition_factors, conditions_of, parse_utkface
from sandbox.data.folders import ImageFolder
from sandbox.data.loader import collate
from sandbox.diffusion import Diffusion, FlowMatching
from sandbox.diffusion import samplers as S
from sandbox.diffusion.schedules import target_of
from sandbox.errors import ConfigError, SandboxError
from sandbox.nn.condition import ConditionEmbedding, Factor, null_condition
from sandbox.nn.timestep import TimeEmbedding

FACES = Path("/work/shared/data/faces")
FACTORS = [("a", 0), ("kind", 3), ("b", 0)]


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- the embedding

def test_null_rows_and_drop_give_the_null_embedding():
    torch.manual_seed(0)
    emb = ConditionEmbedding(FACTORS, 8).eval()
    with torch.no_grad():
        emb.null.normal_()  # a learned null vector (zeros at init would hide a mix-up with a zero embedding)
    c = torch.tensor([[0.5, 2.0, -1.0], [1.5, 0.0, 3.0]])
    null = emb.classes[0].weight[3] + emb.null  # the continuous part's null vector + the class table's extra row
    by_nan = emb(torch.cat([c, null_condition(1, 3)]))
    by_drop = emb(c, drop=torch.tensor([False, True]))
    assert torch.equal(by_nan[2], null) and torch.equal(by_drop[1], null)
    assert torch.equal(by_drop[0], by_nan[0]) and not torch.allclose(by_nan[0], by_nan[1])


def test_continuous_factors_are_standardised_by_stored_statistics():
    torch.manual_seed(1)
    emb = ConditionEmbedding([("a", 0), ("b", 0)], 6)
    table = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]])
    emb.set_statistics(table)
    assert torch.allclose(emb.mean, torch.tensor([3.0, 20.0])) and torch.allclose(emb.std, torch.tensor([2.0, 10.0]))
    assert {"mean", "std"} <= set(dict(emb.named_buffers()))  # saved with the weights
    out = emb.eval()(table)
    assert torch.allclose(out, emb.mlp((table - emb.mean) / emb.std), atol=1e-6)
    moved = ConditionEmbedding([("a", 0), ("b", 0)], 6)
    moved.load_state_dict(emb.state_dict())
    assert torch.equal(moved.eval()(table), out)


def test_condition_dropout_rate_matches_p_and_follows_the_generator():
    emb = ConditionEmbedding(FACTORS, 4, p_drop=0.3)
    n = 40_000
    rate = emb.draw_drop(n, torch.Generator().manual_seed(0)).float().mean().item()
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)  # 4 binomial standard errors (0.009)
    c = torch.tensor([[0.2, 1.0, -0.5]]).repeat(2000, 1)
    emb.train()
    a = emb(c, generator=torch.Generator().manual_seed(5))
    b = emb(c, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    null = emb.eval()(null_condition(1, 3))[0]
    dropped = (a == null).all(dim=1)
    assert torch.equal(dropped, emb.draw_drop(2000, torch.Generator().manual_seed(5)))
    assert abs(dropped.float().mean().item() - 0.3) < 4 * math.sqrt(0.21 / 2000)
    assert not (emb.eval()(c) == null).all(dim=1).any()  # eval mode drops nothing


def test_bad_conditions_stop_with_one_line():
    emb = ConditionEmbedding(FACTORS, 4)
    with pytest.raises(SandboxError) as exc:
        emb(torch.tensor([[0.0, 3.0, 1.0]]))
    assert "kind" in one_line(exc) and "[0, 2]" in str(exc.value)
    with pytest.raises(SandboxError) as exc:
        emb(torch.tensor([[0.0, 1.5, 1.0]]))
    assert "1.5" in one_line(exc)
    with pytest.raises(SandboxError) as exc:
        emb(torch.tensor([[float("nan"), 1.0, 1.0]]))
    assert "partly NaN" in one_line(exc)
    with pytest.raises(SandboxError) as exc:
        emb(torch.zeros(2, 2))
    assert "(batch, 3)" in one_line(exc)
    with pytest.raises(SandboxError):
        ConditionEmbedding([("a", 0)], 4, p_drop=1.0)


# ----------------------------------------------------------------------------- guidance

class ToyNet(nn.Module):
    """``(x (B, 2, 4, 4), t (B,), c (B, 3) | None) -> (B, 2, 4, 4)``: time + condition embedding into a
    linear map of x, so conditional and unconditional predictions differ everywhere."""

    def __init__(self):
        super().__init__()
        self.time, self.cond = TimeEmbedding(16, 32), ConditionEmbedding(FACTORS, 16)
        self.lin = nn.Linear(32 + 16, 32)

    def forward(self, x, t, c=None):
        c = null_condition(x.shape[0], 3) if c is None else c
        e = self.time(t, batch=x.shape[0]) + self.cond(c)
        return self.lin(torch.cat([x.flatten(1), e], dim=1)).reshape(x.shape)


def _toy():
    torch.manual_seed(3)
    net = ToyNet().eval()
    x = torch.randn(5, 2, 4, 4)
    t = torch.rand(5)
    c = torch.tensor([[0.3, 0.0, 1.0], [1.0, 1.0, -2.0], [-0.4, 2.0, 0.5], [2.0, 0.0, 0.0], [0.1, 1.0, 1.0]])
    return net, x, t, c


def test_guidance_0_and_1_are_the_unconditional_and_conditional_predictions_exactly():
    net, x, t, c = _toy()
    with torch.no_grad():
        assert torch.equal(S.guided(net, c, 0.0)(x, t), net(x, t, null_condition(5, 3)))
        assert torch.equal(S.guided(net, c, 1.0)(x, t), net(x, t, c))
        assert torch.equal(S.guided(net, c)(x, t), net(x, t, c))  # no guidance given: conditional
        assert not torch.allclose(net(x, t, c), net(x, t, null_condition(5, 3)))


def test_guidance_above_1_is_one_batched_call_extrapolating_past_the_condition():
    net, x, t, c = _toy()
    calls = []

    def counted(x, t, c):
        calls.append(x.shape[0])
        return net(x, t, c)

    with torch.no_grad():
        out = S.guided(counted, c, 2.5)(x, t)
        cond, uncond = net(x, t, c), net(x, t, null_condition(5, 3))
    assert calls == [10]  # cond and null concatenated: one forward
    assert torch.allclose(out, uncond + 2.5 * (cond - uncond), atol=1e-6)


@pytest.mark.parametrize("proc,sampler", [(FlowMatching(), "euler"), (FlowMatching(), "heun"),
                                          (Diffusion(), "ddim"), (Diffusion(), "ddpm"), (Diffusion(), "euler"),
                                          (Diffusion(), "heun")])
def test_every_sampler_takes_the_condition(proc, sampler):
    net, _, _, c = _toy()
    noise = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(model, **kw):
        return proc.sample(model, noise, steps=4, sampler=sampler, generator=torch.Generator().manual_seed(1), **kw)

    with torch.no_grad():
        plain = run(lambda x, t: net(x, t))  # no condition: the model is called with (x, t) only
        assert torch.equal(run(net, condition=c, guidance=0), plain)  # the null condition is the default of ToyNet
        assert torch.equal(run(net, condition=c, guidance=1), run(lambda x, t: net(x, t, c)))
        guided = run(net, condition=c, guidance=3.0)
        assert torch.isfinite(guided).all() and not torch.allclose(guided, run(net, condition=c))
        if sampler != "ddpm":
            back = proc.invert(net, guided, steps=4, sampler=sampler, condition=c, guidance=0)
            assert torch.equal(back, proc.invert(lambda x, t: net(x, t), guided, steps=4, sampler=sampler))


def test_guidance_without_a_condition_or_below_0_stops():
    net, x, _, c = _toy()
    with pytest.raises(SandboxError) as exc:
        FlowMatching().sample(net, x, steps=2, guidance=2.0)
    assert "needs a condition" in one_line(exc)
    for bad in (-1.0, float("inf"), "2"):
        with pytest.raises(SandboxError):
            FlowMatching().sample(net, x, steps=2, condition=c, guidance=bad)


# ----------------------------------------------------------------------------- a mixture in closed form

# 1-D Gaussian components (class, weight, mean, std): class 0 one component, class 1 two
MIX = [(0, 0.3, -2.0, 0.3), (1, 0.2, 1.0, 0.3), (1, 0.5, 3.5, 0.3)]
SPLIT01, SPLIT1 = -0.5, 2.25  # between class 0 and class 1; between class 1's two components


def mixture_net(proc):
    """The exact conditional network of ``proc`` for data ~ MIX: ``(x (B, 1), t (B,), c (B, 1) class or NaN)``.

    Per component k, x_t = a x0 + s eps is Gaussian N(a mu_k, a^2 sd_k^2 + s^2) and E[x0 | x_t, k] =
    mu_k + a sd_k^2 (x - a mu_k) / var_k, E[eps | x_t, k] = s (x - a mu_k) / var_k; the posterior weights of
    the components of the asked class (all for the null condition) mix them; the network predicts the
    process's target of (E x0, E eps) (linear in them)."""
    cls, w, mu, sd = (torch.tensor([m[i] for m in MIX], dtype=torch.float64) for i in range(4))

    def net(x, t, c=None):
        a, s = (v.double()[:, None] for v in proc.alpha_sigma(t))
        x = x.double()
        var = a**2 * sd**2 + s**2
        r = x - a * mu
        logp = torch.log(w) - 0.5 * torch.log(var) - r**2 / (2 * var)
        if c is not None:
            asked = c.double()
            logp = torch.where(torch.isnan(asked) | (cls == asked), logp, -math.inf)
        post = torch.softmax(logp, dim=1)
        x0 = (post * (mu + a * sd**2 * r / var)).sum(1, keepdim=True)
        eps = (post * (s * r / var)).sum(1, keepdim=True)
        a1, s1 = a[:, 0], s[:, 0]
        out = eps - x0 if isinstance(proc, FlowMatching) else target_of(x0, eps, a1, s1, proc.prediction)
        return out.float()

    return net


@pytest.mark.parametrize("proc,sampler,steps", [(FlowMatching(), "heun", 20), (FlowMatching(), "euler", 50),
                                                (Diffusion(), "ddim", 40), (Diffusion(), "ddpm", 50)])
def test_mixture_samples_have_the_class_proportions_and_means(proc, sampler, steps):
    """w = 0 samples the whole mixture: class 1 has 0.7 of the mass. w = 1 with class 1 samples class 1
    only, its components 0.2 : 0.5 and its mean (0.2 * 1 + 0.5 * 3.5) / 0.7; class 0 gives N(-2, 0.3^2).
    Tolerances: 4 binomial/standard errors of n = 4000 samples (proportions 0.03, class-1 mean 0.1) and a
    little more for the discretisation of the sampler."""
    net, n = mixture_net(proc), 4000
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))

    def draw(condition, w):
        return proc.sample(net, noise, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(1),
                           condition=None if condition is None else torch.full((n, 1), float(condition)),
                           guidance=w)[:, 0]

    free = draw(None, None)  # the unconditional network directly (c=None) ...
    assert abs((free > SPLIT01).float().mean().item() - 0.7) < 0.03
    same = draw(0, 0.0)  # ... and through guidance 0: the null condition gives the same field
    assert torch.allclose(same, free, atol=1e-5)
    one = draw(1, 1.0)
    assert (one > SPLIT01).float().mean().item() > 0.995
    assert abs((one[one > SPLIT01] < SPLIT1).float().mean().item() - 0.2 / 0.7) < 0.03
    assert abs(one.mean().item() - (0.2 * 1.0 + 0.5 * 3.5) / 0.7) < 0.12
    zero = draw(0, 1.0)
    assert (zero < SPLIT01).float().mean().item() > 0.995
    assert abs(zero.mean().item() + 2.0) < 0.03 and abs(zero.std().item() - 0.3) < 0.03
    guided = draw(0, 3.0)  # guidance pushes away from the other class (w - 1 times cond - uncond): all of
    assert (guided < SPLIT01).float().mean().item() > 0.995  # class 0, and further from class 1 than w = 1
    assert guided.mean().item() < zero.mean().item() - 0.03


# ----------------------------------------------------------------------------- the data's condition

def _cfg(**data) -> Config:
    cfg = Config()
    for k, v in {"name": "attractors", "size": 16, "num_train": 6, "num_val": 2, "num_test": 2, "cache": True,
                 **data}.items():
        setattr(cfg.data, k, v)
    return cfg


def test_param_condition_is_the_drawn_parameters():
    ds = build_data(_cfg(condition="params"), ("train",))["train"]
    plain = Attractors("train", num=6, size=16, seed=0)
    batch = collate([ds[i] for i in range(6)])
    drawn = torch.tensor(np.stack([plain.draw(i)[0] for i in range(6)]), dtype=torch.float32)
    assert batch["condition"].shape == (6, 4) and torch.equal(batch["condition"], drawn)
    assert torch.equal(conditions_of(ds), drawn)
    assert condition_factors(Attractors, "params") == tuple(Factor(n, 0) for n in "abcd")
    sub = build_data(_cfg(condition="params", train_fraction=0.5), ("train",))["train"]
    assert torch.equal(conditions_of(sub), torch.stack([sub[i]["condition"] for i in range(len(sub))]))
    assert len(sub) == 3


def test_no_condition_leaves_the_samples_unchanged():
    ds = build_data(_cfg(), ("train",))["train"]
    plain = Attractors("train", num=6, size=16, seed=0)
    assert set(ds[0]) == set(plain[0]) == {"image", "params", "index"}
    assert torch.equal(ds[2]["image"], plain[2]["image"])
    with pytest.raises(SandboxError):
        conditions_of(ds)


def test_utkface_names_parse():
    assert parse_utkface("26_1_3_20170117154600143.jpg.chip.jpg") == (26, 1, 3)
    assert parse_utkface("faces/sub/101_0_4_20170105174739309.jpg") == (101, 0, 4)
    for bad in ("61_1_20170109142408075.jpg.chip.jpg", "26_2_0_20170117154600143.jpg", "x_1_0_1.jpg",
                "26_1_5_2017.jpg", "26_1_0_.jpg"):
        with pytest.raises(SandboxError) as exc:
            parse_utkface(bad)
        assert bad in one_line(exc) and "{age}_{gender}_{race}_{date}.jpg" in str(exc.value)


def _face_folder(root: Path, names) -> Path:
    root.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(root / name, format="JPEG")
    return root


def test_face_folder_yields_the_factors_asked_in_order(tmp_path):
    names = [f"{age}_{g}_{r}_2017010{i}123456789.jpg.chip.jpg"
             for i, (age, g, r) in enumerate([(20, 0, 1), (35, 1, 4), (70, 1, 0), (5, 0, 2)])]
    root = _face_folder(tmp_path / "faces", names)
    ds = Conditioned(ImageFolder(root, "train", image_dir=".", size=8, val_fraction=0.0, test_fraction=0.0),
                     "race|age")
    assert ds.factors == (Factor("race", 5), Factor("age", 0))
    want = {parse_utkface(it.image)[2::-2]: None for it in ds.items}  # (race, age) of each file
    got = {tuple(int(v) for v in ds[i]["condition"]) for i in range(len(ds))}
    assert got == set(want) and ds[0]["image"].shape == (3, 8, 8)
    assert torch.equal(conditions_of(ds), torch.stack([ds[i]["condition"] for i in range(len(ds))]))


def test_an_unparsable_face_name_stops_with_one_line(tmp_path):
    root = _face_folder(tmp_path / "faces", ["20_0_1_20170101123456789.jpg", "holiday.jpg", "30_1_20170101.jpg"])
    plain = ImageFolder(root, "train", image_dir=".", size=8, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(SandboxError) as exc:
        Conditioned(plain, "age|gender|race")
    text = one_line(exc)
    assert str(root) in text and ("holiday.jpg" in text or "30_1_20170101.jpg" in text)
    assert "{age}_{gender}_{race}_{date}.jpg" in text and "1 more" in text


@pytest.mark.skipif(not FACES.is_dir(), reason="no face crops at /work/shared/data/faces")
def test_real_face_names_parse_as_their_fields_say():
    """Every UTKFace name with four '_' fields parses to its first three; one with three (no race) stops."""
    names = sorted(p.name for p in FACES.iterdir() if p.is_file())
    assert names
    for name in names:
        fields = name.split("_")
        if len(fields) >= 4:
            assert parse_utkface(name) == tuple(int(f) for f in fields[:3])
        else:
            with pytest.raises(SandboxError):
                parse_utkface(name)


# ----------------------------------------------------------------------------- the config key

CFG = "configs/flow_attractors.yaml"


def test_config_condition_default_none_and_bad_values_stop(monkeypatch):
    assert load_config(CFG, ["train.epochs=1"]).data.condition is None
    monkeypatch.setattr(validate_mod, "CONDITION_TRAINERS", ("denoising",))
    assert load_config(CFG, ["data.condition=params"]).data.condition == "params"
    for overrides, words in [(["data.condition=age|height"], "age, gender, race"),
                             (["data.condition=age"], "folder dataset"),
                             (["data.name=dancers", "data.condition=params"], "no generating parameters"),
                             (["data.condition=params", "data.augment=[{HorizontalFlip: {p: 0.5}}]"], "augment")]:
        with pytest.raises(ConfigError) as exc:
            load_config(CFG, overrides)
        assert "data.condition:" in one_line(exc) and words in str(exc.value)


def test_config_condition_needs_a_model_that_reads_it(monkeypatch):
    monkeypatch.setattr(validate_mod, "CONDITION_TRAINERS", ())
    with pytest.raises(ConfigError) as exc:
        load_config(CFG, ["data.condition=params"])
    assert "takes no condition" in one_line(exc)
