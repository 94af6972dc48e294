"""Bugs a review of the 2026-12-08 merges found, each pinned by a test that fails on the bug: interpolate's
--guidance range after the options moved per family; a non-finite batch must not poison a VQ-VAE codebook (the
engine skips the step after the forward has run); probe grades a conditional run under its split's conditions
at its own guidance, not at w = 0."""
from __future__ import annotations

import torch

from sandbox import build_trainer
from sandbox.analysis import probe as probe_mod
from sandbox.config.schema import RANGES
from sandbox.models import MODELS
from sandbox.models.denoising import DenoisingOptions
from sandbox.models.objective import Step
from tests.test_conditional_models import tiny
from tests.test_generative import interpolate_cli


def test_the_guidance_range_is_one_declaration_read_by_the_options_and_the_flag(tmp_path, monkeypatch, capsys):
    field = DenoisingOptions.__dataclass_fields__["guidance"]
    assert field.metadata["range"] == RANGES["model.guidance"] == "[0, inf)"
    build_trainer(tiny(tmp_path, "flow", "walk", ["train.epochs=1"])).fit()
    args = ["--run", str(tmp_path / "walk"), "--which", "last", "--factor", "a", "--from", "-1", "--to", "1",
            "--frames", "2"]
    code, out, err = interpolate_cli(monkeypatch, capsys, *args, "--guidance", "2")
    assert code == 0, err  # the flag parsed "2" as a range name before
    code, out, err = interpolate_cli(monkeypatch, capsys, *args, "--guidance", "-1")
    assert code == 2 and "--guidance" in err and "[0, inf)" in err, err


def test_a_non_finite_batch_leaves_the_vqvae_codebook_as_it_was():
    torch.manual_seed(0)
    m = MODELS["vqvae"](size=16, width=4, depth=2, latent_dim=16, codebook_size=8).train()
    x = torch.rand(4, 3, 16, 16)
    m.loss({"image": x}, Step(criterion=lambda out, batch: (torch.nn.functional.mse_loss(out["image"], batch["image"]), {})))
    before = {k: v.clone() for k, v in m.codebook.state_dict().items()}
    x[0, 0, 0, 0] = float("nan")
    total, _ = m.loss({"image": x}, Step(criterion=lambda out, batch: (torch.nn.functional.mse_loss(out["image"], batch["image"]), {})))
    assert not torch.isfinite(total)  # the engine skips this step (train.nonfinite) ...
    for k, v in m.codebook.state_dict().items():  # ... and the forward did not move the codebook either
        assert torch.isfinite(v).all() and torch.equal(v, before[k]), k


def test_probe_samples_a_conditional_run_under_the_splits_conditions(tmp_path, monkeypatch):
    tr = build_trainer(tiny(tmp_path, "flow", "probe", ["train.epochs=1"]))
    model = tr.unwrapped.eval()
    seen = []
    real_sample = model.sample

    def sample(n, generator=None, **kw):
        seen.append(kw.get("condition"))
        return real_sample(n, generator, **kw)

    monkeypatch.setattr(model, "sample", sample)
    probe_mod.probe_run(tr.cfg, model, "test", samples=8, fit=0, baselines=False, untrained=False, nearest_max=0)
    from sandbox.data.conditions import conditions_of

    table = conditions_of(probe_mod.build_data(tr.cfg, ("test",))["test"])
    asked = torch.cat(seen)
    assert asked.shape == (8, table.shape[1])
    assert torch.equal(asked, table[torch.arange(8) % len(table)])  # the test split's, cycled (6 images)
