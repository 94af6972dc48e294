"""Conditional ddpm and flow (issue 31): the real model's guidance, condition dropout in its loss, the
standardisation statistics in checkpoints, tiny conditional runs end to end, the factor-R² measurement and
interpolate.py's factor walk.

The samplers' guidance and the ConditionEmbedding alone are tested in tests/test_conditioning.py; here they run
inside the model the trainer trains."""
import math
from pathlib import Path

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.analysis.guidance import factor_r2, guidance_sweep, pick_conditions
from sandbox.analysis.interpolation import walk_values
from sandbox.data.conditions import conditions_of
from sandbox.diffusion.samplers import guided
from sandbox.errors import ConfigError, SandboxError
from sandbox.models import MODELS
from sandbox.models.objective import Step, whole
from sandbox.nn.condition import Factor, null_condition
from sandbox.runs.load import load_run

NAMES = ["ddpm", "flow"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def conditional(name: str, factors=("a", "b"), cond_drop: float = 0.1, **kw):
    """A tiny conditional model whose every weight is random: at init the scale-shift layers are zero
    (adaLN-Zero), so the prediction would not depend on the condition at all and every guidance test would pass
    trivially."""
    torch.manual_seed(0)
    m = MODELS[name](size=16, width=8, depth=2, norm="group", sample_steps=3, factors=list(factors),
                     cond_drop=cond_drop, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


# ----------------------------------------------------------------------------- guidance through the real model

@pytest.mark.parametrize("name", NAMES)
def test_guidance_0_and_1_are_exactly_the_null_and_conditional_predictions_of_the_net(name):
    m = conditional(name)
    net = m.image_generator
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.full((4,), 0.6)
    c = torch.tensor([[1.0, -0.5], [0.2, 0.3], [-1.0, 1.5], [0.0, 0.0]])
    with torch.no_grad():
        cond, null = net(x, t, c), net(x, t, null_condition(4, 2))
        assert (cond - null).abs().max() > 1e-3  # the condition matters, so the checks below can fail
        fn = m._fn()
        assert torch.equal(guided(fn, c, 0.0)(x, t), null.float())
        assert torch.equal(guided(fn, c, 1.0)(x, t), cond.float())
        assert torch.equal(net(x, t), null)  # no condition: the null condition
        w2 = guided(fn, c, 2.0)(x, t)
        assert torch.allclose(w2, null + 2 * (cond - null), atol=1e-5)
        # whole samples: w = 0 is the unconditional sampler, w = 1 the sampler of the conditional net
        z = m.prior(4, torch.Generator().manual_seed(3))
        assert torch.equal(m.decode(z, condition=c, guidance=0.0), m.decode(z))
        explicit = m.process.sample(lambda xx, tt: net(xx, tt, c).float(), z, steps=3, sampler=m.sampler)
        assert torch.equal(m.decode(z, condition=c, guidance=1.0), ((explicit + 1) / 2).clamp(0, 1))
        assert not torch.equal(m.decode(z, condition=c, guidance=2.0), m.decode(z, condition=c, guidance=1.0))


def test_default_guidance_is_the_models_and_bad_uses_stop_in_one_line():
    m = conditional("flow", guidance=3.0)
    z = m.prior(2, torch.Generator().manual_seed(0))
    c = torch.tensor([0.5, -0.5])  # one condition for the batch
    assert torch.equal(m.decode(z, condition=c), m.decode(z, condition=c, guidance=3.0))
    with pytest.raises(SandboxError, match="needs a condition"):
        m.decode(z, guidance=2.0)
    plain = MODELS["flow"](size=16, width=8, depth=2, norm="group", sample_steps=2).eval()
    with pytest.raises(SandboxError, match="trained without one"):
        plain.sample(2, condition=c)
    with pytest.raises(SandboxError, match="without one"):
        plain(z, 0.5, c.expand(2, -1))


# ----------------------------------------------------------------------------- the loss: condition dropout

def _captured_drops(m, n: int, draws: int, draw=whole, seed: int = 0) -> torch.Tensor:
    """The drop masks the model's loss hands to the net over ``draws`` batches of ``n`` (global RNG seeded)."""
    seen = []

    def forward(x_t, t, condition=None, drop=None):
        seen.append(drop.clone())
        return torch.zeros_like(x_t)

    g = torch.Generator().manual_seed(100)  # the batch comes from the data, not from the global RNG
    batch = {"image": torch.rand(n, 3, 16, 16, generator=g), "condition": torch.randn(n, 2, generator=g)}
    torch.manual_seed(seed)
    for _ in range(draws):
        m.loss(batch, Step(forward=forward, draw=draw))
    return torch.stack(seen)


def test_the_drop_mask_rate_is_cond_drop_and_processes_agree_on_the_global_batch():
    m = conditional("flow", cond_drop=0.3).train()
    drops = _captured_drops(m, 64, 50)
    assert drops.dtype == torch.bool and drops.shape == (50, 64)
    # 3,200 Bernoulli(0.3) draws: sd 0.0081; 4 sd either side
    assert abs(drops.float().mean().item() - 0.3) < 0.033
    assert len({tuple(d.tolist()) for d in drops}) == 50  # a fresh mask each step
    # 2 processes x batch 8 (Trainer.shard_draw: each draws the global 16 and keeps its rows) = 1 x 16
    one = _captured_drops(m, 16, 3)

    def rank(r):
        return lambda fn, n: fn(2 * n)[r * n:(r + 1) * n]

    two = torch.cat([_captured_drops(m, 8, 3, rank(0)), _captured_drops(m, 8, 3, rank(1))], dim=1)
    assert torch.equal(one, two)
    assert not _captured_drops(conditional("flow", cond_drop=0.0).train(), 64, 5).any()


def test_an_unconditional_models_loss_draws_are_unchanged_by_the_feature():
    """No condition: no drop drawn, so the RNG stream after a loss is what it was before conditions existed."""
    torch.manual_seed(0)
    m = MODELS["flow"](size=16, width=8, depth=2, norm="group")
    batch = {"image": torch.rand(4, 3, 16, 16)}
    torch.manual_seed(5)
    m.loss(batch, Step())
    after = torch.rand(1)
    torch.manual_seed(5)
    m.training_pair(batch["image"])
    assert torch.equal(after, torch.rand(1))


# ----------------------------------------------------------------------------- statistics buffers

def test_the_statistics_are_buffers_of_the_net_and_its_ema_and_round_trip_a_state_dict():
    m = conditional("ddpm")
    table = torch.tensor([[1.0, 10.0], [3.0, 14.0], [5.0, 12.0]])
    m.set_condition_statistics(table)
    for net in (m.net, m.generator_ema):
        assert torch.allclose(net.cond.mean, torch.tensor([3.0, 12.0]))
        assert torch.allclose(net.cond.std, torch.tensor([2.0, 2.0]))
    sd = m.state_dict()
    assert {"net.cond.mean", "net.cond.std", "generator_ema.cond.mean", "generator_ema.cond.std"} <= set(sd)
    fresh = MODELS["ddpm"](size=16, width=8, depth=2, norm="group", factors=["a", "b"])
    assert torch.equal(fresh.net.cond.mean, torch.zeros(2))
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.net.cond.mean, m.net.cond.mean) and torch.equal(fresh.generator_ema.cond.std,
                                                                               m.generator_ema.cond.std)


# ----------------------------------------------------------------------------- tiny conditional runs

def tiny(tmp_path, name: str, run: str, extra=()):
    return load_config(None, [f"out_dir={tmp_path}", f"name={run}", f"model.name={name}", "data.name=attractors",
                              "data.size=16", "data.num_train=8", "data.num_val=4", "data.num_test=6",
                              "data.batch_size=4", "model.width=8", "model.depth=2", "model.norm=group",
                              "model.sample_steps=2", "train.epochs=2", "train.log_every=1", "train.num_images=2",
                              "track.wandb=disabled", "train.mixed_precision=no", "train.monitor=val/loss",
                              "train.monitor_mode=min", "train.fid_samples=6", "data.condition=params",
                              "model.cond_drop=0.2", "model.guidance=1.5", *extra])


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_conditional_run_trains_saves_resumes_and_samples_with_a_condition(tmp_path, name, monkeypatch):
    first = build_trainer(tiny(tmp_path, name, "run"))
    train_table = conditions_of(first.datasets["train"])
    m = first.unwrapped
    assert m.conditional and m.guidance == 1.5 and m.net.cond.p_drop == 0.2
    assert torch.allclose(m.net.cond.mean, train_table.double().mean(0).float())
    assert torch.allclose(m.generator_ema.cond.std, train_table.double().std(0).float())
    # the per-epoch samples are conditioned on the validation split's first conditions, cycled
    from sandbox.trainers.sampling import sample_conditions

    val_table = conditions_of(first.datasets["val"])
    assert torch.equal(sample_conditions(first, 6), torch.cat([val_table, val_table[:2]]))
    first.fit(until_epoch=1)
    saved = m.net.cond.mean.clone()
    # a resume takes the statistics from the checkpoint, not from the data: the data's are made wrong here
    import sandbox.trainers.denoising as trainer_mod

    monkeypatch.setattr(trainer_mod, "conditions_of", lambda ds: torch.full((3, 4), 99.0))
    resumed = build_trainer(tiny(tmp_path, name, "run", [f"train.resume={tmp_path / 'run'}"]))
    assert torch.equal(resumed.unwrapped.net.cond.mean, saved)
    out = resumed.fit()
    assert math.isfinite(out["val/loss"]) and math.isfinite(out["val/fid_own"])  # trained, and sampled
    assert (tmp_path / "run" / "images" / "samples_epoch002.png").is_file()
    cfg, loaded = load_run(str(tmp_path / "run"), "last", task="generative")
    assert cfg.data.condition == "params" and loaded.factors == tuple(Factor(n) for n in "abcd")
    assert torch.equal(loaded.net.cond.mean, saved) and torch.equal(loaded.generator_ema.cond.mean, saved)
    c = val_table[:3]
    x = loaded.sample(3, torch.Generator().manual_seed(0), condition=c)
    assert x.shape == (3, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    again = loaded.sample(3, torch.Generator().manual_seed(0), condition=c)
    uncond = loaded.sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(x, again) and not torch.equal(x, uncond)


@pytest.mark.parametrize("overrides, match", [
    (["model.cond_drop=0.1"], "model.cond_drop: .*data.condition is null"),
    (["model.guidance=2"], "model.guidance: .*data.condition is null"),
    (["data.condition=params", "model.cond_drop=1"], r"model.cond_drop: got 1(\.0)?, expected .* in \[0, 1\)"),
    (["data.condition=params", "model.guidance=-1"], r"model.guidance: got -1(\.0)?, expected .* in \[0, inf\)"),
    (["data.condition=params", "model.name=vae"], "takes no condition"),
])
def test_config_errors_name_the_key(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["data.name=attractors", "model.name=flow", "model.norm=group", *overrides])


def test_the_conditional_recipe_loads_as_flow_attractors_plus_the_condition():
    cond = load_config("configs/flow_attractors_cond.yaml", [])
    plain = load_config("configs/flow_attractors.yaml", [])
    assert (cond.data.condition, cond.model.cond_drop, cond.model.guidance) == ("params", 0.1, 1.0)
    for section in ("model", "train", "data"):
        a, b = vars(getattr(cond, section)).copy(), vars(getattr(plain, section)).copy()
        for key in ("condition", "cond_drop", "guidance"):
            a.pop(key, None), b.pop(key, None)
        assert a == b, section


# ----------------------------------------------------------------------------- factor R² and the sweep

def test_factor_r2_is_1_for_the_asked_factors_0_for_their_mean_and_negative_shuffled():
    asked = torch.randn(400, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 5.0, 0.1]) + 2
    names = ["a", "b", "c"]
    assert factor_r2(asked, asked.clone(), names) == {n: 1.0 for n in names}
    assert all(abs(v) < 1e-9 for v in factor_r2(asked, asked.mean(0).expand_as(asked), names).values())
    shuffled = asked[torch.randperm(400, generator=torch.Generator().manual_seed(1))]
    r2 = factor_r2(asked, shuffled, names)
    # independent rows: E(e - a)² = 2 var, so R² ~ -1 (sd ~0.1 at n = 400)
    assert all(-1.4 < v < -0.6 for v in r2.values()), r2
    noisy = factor_r2(asked, asked + 0.5 * asked.std(0) * torch.randn(400, 3, generator=torch.Generator().manual_seed(2)),
                      names)
    assert all(0.65 < v < 0.85 for v in noisy.values()), noisy  # 1 - 0.25
    with pytest.raises(SandboxError, match="expected two"):
        factor_r2(asked, asked[:, :2], names)


def test_pick_conditions_is_seeded_and_cycles():
    table = torch.arange(10.0).reshape(5, 2)
    a, b = pick_conditions(table, 7, 3), pick_conditions(table, 7, 3)
    assert torch.equal(a, b) and torch.equal(a[5:], a[:2])
    assert sorted(a[:5, 0].tolist()) == [0.0, 2.0, 4.0, 6.0, 8.0]


class EchoEvaluator:
    """An evaluator that reads a sample's factors back exactly: each sample image carries its index in pixel
    (0, 0), and ``regress`` returns the asked condition of that index (the sweep's noise and conditions are
    seeded, so the test knows them)."""

    def __init__(self, asked: torch.Tensor):
        self.asked = asked
        self.meta = {"names": ["a", "b", "c", "d"], "key": {"dataset": "echo"}, "heldout": {}}

    def regress(self, images):
        return self.asked[images[:, 0, 0, 0].round().long()]

    def features(self, images):
        return images.flatten(1)[:, :8].float()


def test_the_guidance_sweep_scores_r2_1_when_the_estimates_are_the_asked_factors(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "flow", "sweep", ["train.epochs=1"])
    build_trainer(cfg).fit()
    cfg, model = load_run(str(tmp_path / "sweep"), "last", task="generative")
    test = conditions_of(__import__("sandbox.build", fromlist=["build_data"]).build_data(cfg, ("test",))["test"])
    asked = pick_conditions(test, 10, cfg.seed)
    # samples whose pixel (0, 0) is their index: the echo evaluator then reads back the asked factors exactly
    monkeypatch.setattr(type(model), "decode", lambda self, z, g=None, c=None, w=None:
                        torch.arange(len(z)).float()[:, None, None, None].expand(len(z), 3, 16, 16).clone())
    res = guidance_sweep(cfg, model, EchoEvaluator(asked), n=10, weights=[0, 2], out=tmp_path / "grids")
    assert list(res["per_w"]) == ["0", "2"] and res["scored"] == ["a", "b", "c", "d"]
    assert all(v == pytest.approx(1.0) for v in res["per_w"]["2"]["r2"].values())
    assert Path(res["per_w"]["0"]["grid"]).is_file() and (tmp_path / "grids" / "guidance_w2.png").is_file()
    # shuffled estimates: R² about -1
    shuffled = EchoEvaluator(asked[torch.randperm(10, generator=torch.Generator().manual_seed(4))])
    res = guidance_sweep(cfg, model, shuffled, n=10, weights=[1])
    assert res["per_w"]["1"]["r2_mean"] < 0.2 and "grid" not in res["per_w"]["1"]


def test_the_guidance_script_and_the_factor_walk_write_their_files(tmp_path, monkeypatch, capsys):
    build_trainer(tiny(tmp_path, "flow", "walk", ["train.epochs=1"])).fit()
    run = tmp_path / "walk"
    import runpy

    script = Path(__file__).resolve().parents[1] / "results" / "conditional" / "guidance.py"
    monkeypatch.setattr("sys.argv", ["guidance.py", "--run", str(run), "--which", "last", "--n", "6", "--w", "0",
                                     "1", "--evaluators", str(tmp_path / "ev"), "--evaluator-steps", "3",
                                     "--evaluator-images", "16"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    import json

    res = json.loads((run / "eval" / "guidance_test.json").read_text())
    assert set(res["per_w"]) == {"0", "1"} and (run / "images" / "guidance_w1.png").is_file()
    assert all(isinstance(v, float) for v in res["per_w"]["0"]["r2"].values()) and "R2 mean" in out
    # interpolate.py: walk a from -1.5 to 1.5 in 5 frames at fixed noise
    from tests.test_generative import interpolate_cli

    code, out, err = interpolate_cli(monkeypatch, capsys, "--run", str(run), "--which", "last", "--factor", "a",
                                     "--from", "-1.5", "--to", "1.5", "--frames", "5", "--at", "1")
    assert code == 0 and "5 frames (a -1.5 -> 1.5)" in out, err
    stem = run / "images" / "walk_a_-1.5_to_1.5_test1_seed0"
    from PIL import Image

    with Image.open(f"{stem}.gif") as gif:
        assert gif.n_frames == 5
    assert Path(f"{stem}.png").is_file()
    for args, words in [(["--factor", "e", "--from", "0", "--to", "1"], "not a factor of this run"),
                        (["--factor", "a", "--from", "0", "1", "--to", "1"], "one number after --from"),
                        (["--to", "1"], "one number after --from")]:
        code, out, err = interpolate_cli(monkeypatch, capsys, "--run", str(run), "--which", "last", *args)
        assert code == 2 and words in err and err.count("\n") == 1, err


def test_walk_values_continuous_and_class_factors():
    assert torch.allclose(walk_values(Factor("a"), -1.5, 1.5, 4), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    assert walk_values(Factor("race", 5), 3, 1, 8).tolist() == [3.0, 2.0, 1.0]
    with pytest.raises(SandboxError, match="class ids in"):
        walk_values(Factor("race", 5), 0, 5, 8)
