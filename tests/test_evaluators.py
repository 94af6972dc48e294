"""Evaluators trained on the data (sandbox/metrics/evaluators.py, render_back.py, two_sample.py, references.py):
floors in closed form, the collapsed set last, render-back validity, the cache (train split only, weights only)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sandbox.data.attractors import Attractors
from sandbox.errors import SandboxError
from sandbox.metrics.evaluators import domain_scores
from sandbox.metrics.references import gaussian_blur, orders, references, score_references
from sandbox.metrics.render_back import attractor_evaluator, attractor_scores, render, similarity, validity
from sandbox.metrics.two_sample import c2st

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, IMAGES, STEPS = 16, 160, 120  # a tiny evaluator: seconds, R² well above 0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluators")


@pytest.fixture(scope="module")
def evaluator(cache):
    return attractor_evaluator(cache, SIZE, data_seed=0, steps=STEPS, images=IMAGES)


@pytest.fixture(scope="module")
def held_out():
    ds = Attractors("val", num=96, size=SIZE, seed=0)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["params"] for it in items]).numpy()


def test_a_sample_set_equal_to_the_real_one_scores_at_the_floor(evaluator, held_out):
    real, _ = held_out
    s = domain_scores(evaluator, real, real)
    assert abs(s["fid_domain"]) < 1e-6  # closed form: the Fréchet distance of a set with itself is 0
    assert s["precision_domain"] == 1 and s["recall_domain"] == 1
    worse = domain_scores(evaluator, real, gaussian_blur(real, 2.0))
    assert worse["fid_domain"] > 1e-2 and worse["kid_domain"] > abs(s["kid_domain"])


def test_c2st_of_identical_sets_is_one_half_inside_its_interval_and_grades_a_shift():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 8, generator=g)
    same = c2st(f, f.clone())
    assert same["c2st_auc"] == 0.5 and same["c2st_auc_lo"] < 0.5 < same["c2st_auc_hi"]
    assert abs(same["c2st_nll_gain"]) < 1e-6  # the fit cannot tell the halves apart: log-loss = ln 2
    small, large = (c2st(f, torch.randn(200, 8, generator=g) + d) for d in (0.5, 3.0))
    assert 0.5 < small["c2st_auc_lo"] and small["c2st_auc"] < 0.99  # a small shift: detected, not saturated
    assert large["c2st_auc"] > small["c2st_auc"] and large["c2st_nll_gain"] > small["c2st_nll_gain"] + 0.1


def test_a_collapsed_set_scores_worst_on_each_ranking_metric(evaluator, held_out):
    real, _ = held_out
    anchor, sets = references(real, seed=0)
    fa = evaluator.features(anchor)
    rows = score_references(anchor, sets, {
        "domain": lambda a, x: domain_scores(evaluator, a, x, real_features=fa),
        "render_back": lambda a, x: attractor_scores(evaluator, a, x),
        "c2st": lambda a, x: c2st(fa, evaluator.features(x))})
    got = orders(rows)
    for metric in ("fid_domain", "kid_domain", "param_w1"):
        assert got[metric]["collapsed_last"] == "yes", (metric, rows)
    for metric in ("fid_domain", "kid_domain"):
        assert got[metric]["floor_best"], (metric, rows)


def test_render_back_validity_of_real_attractors_is_near_its_ceiling_and_of_blurred_ones_far_below(evaluator,
                                                                                                  held_out):
    real, params = held_out
    # rendered back from their true parameters (a perfect estimator), with other orbits than the data's
    truth = render(params, SIZE, seed=123)
    ceiling = similarity(real, truth).mean()
    assert ceiling > 0.85
    assert similarity(gaussian_blur(real, 1.0), truth).mean() < 0.75 * ceiling  # 16 px: 0.68 vs 0.99
    assert similarity(gaussian_blur(real, 2.0), truth).mean() < 0.5 * ceiling  # 0.38
    # through the learned estimate: real images keep more of it than blurred ones
    assert validity(evaluator, real).mean() > 1.2 * validity(evaluator, gaussian_blur(real, 2.0)).mean()


def test_the_cache_returns_identical_weights_and_reads_only_the_train_split(tmp_path, monkeypatch):
    seen = []
    original = Attractors.__getitem__

    def recording(self, index):
        seen.append((self.split, index))
        return original(self, index)

    monkeypatch.setattr(Attractors, "__getitem__", recording)
    first = attractor_evaluator(tmp_path / "a", SIZE, data_seed=3, steps=5, images=24)
    assert seen and {s for s, _ in seen} == {"train"} and max(i for _, i in seen) < 24
    assert first.meta["split"] == "train" and first.meta["indices"] == [0, 24]
    seen.clear()
    again = attractor_evaluator(tmp_path / "a", SIZE, data_seed=3, steps=5, images=24)
    assert seen == []  # read from the cache: no image rendered
    fresh = attractor_evaluator(tmp_path / "b", SIZE, data_seed=3, steps=5, images=24)  # trained again
    for other in (again, fresh):
        a, b = first.net.state_dict(), other.net.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other_seed = attractor_evaluator(tmp_path / "a", SIZE, data_seed=4, steps=5, images=24)
    assert not torch.equal(other_seed.net.head.weight, first.net.head.weight)
    assert len(list((tmp_path / "a").glob("*.safetensors"))) == 2


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling it creates the marker file


def test_the_cache_is_weights_only_and_a_planted_pickle_is_never_loaded(tmp_path):
    from safetensors import safe_open

    ev = attractor_evaluator(tmp_path, SIZE, data_seed=5, steps=3, images=16)
    weights = next(tmp_path.glob("*.safetensors"))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]
    with safe_open(str(weights), "pt") as f:  # a safetensors file: a JSON header and raw tensors, no pickle
        assert "head.weight" in set(f.keys()) and "target_mean" in set(f.keys())
    marker = tmp_path.parent / f"{tmp_path.name}_unpickled"
    (tmp_path / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))  # beside the cache: never opened
    again = attractor_evaluator(tmp_path, SIZE, data_seed=5, steps=3, images=16)
    assert torch.equal(again.net.head.weight, ev.net.head.weight) and not marker.exists()
    weights.write_bytes(pickle.dumps(_Payload(marker)))  # the weights file itself replaced by a pickle
    with pytest.raises(SandboxError, match="not a readable safetensors file"):
        attractor_evaluator(tmp_path, SIZE, data_seed=5, steps=3, images=16)
    assert not marker.exists()


def test_the_evaluator_never_touches_the_callers_random_stream(tmp_path):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    attractor_evaluator(tmp_path, SIZE, data_seed=6, steps=3, images=16)
    c2st(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(20, 4))
    assert torch.equal(torch.rand(3), expected)
    assert np.isfinite(list(attractor_evaluator(tmp_path, SIZE, 6, 3, 16).meta["heldout"].values())).all()


def test_score_run_adds_the_domain_metrics_to_an_attractor_runs_eval_json(tmp_path, monkeypatch, capsys, evaluator):
    """A tiny flow run on 16 px attractors scored by score_run: eval/val.json holds every DOMAIN_KEY, from the
    evaluator of the run's data seed and size in the cache directory given (here the module's tiny one)."""
    import json

    import sandbox.metrics.render_back as rb
    from sandbox.analysis.probe import DOMAIN_KEYS, EVAL_KEYS, score_run
    from tests.conftest import ROOT, train_cli

    asked = []
    monkeypatch.setattr(rb, "attractor_evaluator", lambda cache, size, seed: asked.append((cache, size, seed)) or evaluator)
    code, out = train_cli(monkeypatch, capsys, "--config", str(ROOT / "configs/flow_attractors.yaml"),
                          f"out_dir={tmp_path}", "name=tiny", f"data.size={SIZE}", "data.num_train=8",
                          "data.num_val=8", "data.batch_size=8", "model.widths=null", "model.width=4",
                          "model.depth=2", "model.attention=null", "model.block=plain",
                          "model.sample_steps=2", "train.epochs=1", "train.fid_samples=0", "train.num_images=0",
                          "track.wandb=disabled", "train.mixed_precision=no", "train.scheduler=none")
    assert code == 0, out
    ev = json.loads(score_run(tmp_path / "tiny", "val", samples=8, fit=0, evaluators=tmp_path / "cache").read_text())
    assert asked == [(tmp_path / "cache", SIZE, 0)]
    assert set(DOMAIN_KEYS) <= set(ev["means"]) <= set(EVAL_KEYS)
    assert 0 <= ev["means"]["c2st_auc_lo"] <= ev["means"]["c2st_auc"] <= ev["means"]["c2st_auc_hi"] <= 1
    assert ev["evaluator"]["images"] == IMAGES and ev["evaluator_heldout"]


def test_utkface_names_give_age_gender_race_and_malformed_ones_are_left_out():
    from sandbox.metrics.face_evaluator import utkface_labels

    assert utkface_labels("faces/26_1_3_20170119.jpg.chip.jpg") == (26, 1, 3)
    assert utkface_labels("39_1_20170116174525125.jpg.chip.jpg") is None  # UTKFace's few names without race
    assert utkface_labels("portrait.jpg") is None


def test_the_face_evaluator_learns_from_the_train_split_of_the_shared_faces_only(tmp_path):
    from sandbox.data.folders import ImageFolder
    from sandbox.metrics.face_evaluator import face_evaluator, is_utkface
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "faces"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    train, val = (ImageFolder(root, split=s, image_dir=".", size=SIZE, seed=0) for s in ("train", "val"))
    assert is_utkface(train)
    ev = face_evaluator(tmp_path, train, data_seed=0, steps=3, images=24)
    assert ev.meta["split"] == "train" and len(ev.meta["indices"]) == 24
    assert {train.items[i].image for i in ev.meta["indices"]}.isdisjoint({it.image for it in val.items})
    assert set(ev.meta["heldout"]) == {"r2_log_age", "acc_gender", "acc_race"} and ev.features(val[0]["image"][None]).shape == (1, 128)
    with pytest.raises(SandboxError, match="train split only"):
        face_evaluator(tmp_path, val, data_seed=0, steps=3, images=24)
