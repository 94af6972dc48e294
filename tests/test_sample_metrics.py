"""Sample metrics that grade: KID, precision/recall, nearest-training-image distance, the Inception loader."""
from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch

from sandbox.errors import SandboxError
from sandbox.metrics.generative import (kid, min_distances, own_features, precision_recall, radial_power, sample_scores,
                                       spectrum_scores)


def _gauss(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def _blobs(n: int, seed: int, side: int = 16) -> torch.Tensor:
    """``(n, 3, side, side)`` images of one distribution: a coloured Gaussian blob at a random place."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centre = torch.rand(n, 2, generator=g) * side
    blob = torch.exp(-((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2) / 8)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    return (0.1 + 0.8 * blob[:, None] * colour).clamp(0, 1)


# ----------------------------------------------------------------------------- KID

def test_kid_equals_a_direct_numpy_unbiased_mmd_with_the_cubic_kernel():
    """5 vs 5 points in 3-D (every subset is the whole set): the unbiased MMD² written out term by term,
    k(x, y) = (x.y / d + 1)^3, sum over i != j within each set / (m (m-1)) - 2 sum over all cross pairs / m²."""
    x, y = _gauss(5, 3, 0).double().numpy(), _gauss(5, 3, 1, shift=0.5).double().numpy()
    m, d = 5, 3

    def k(a, b):
        return (np.dot(a, b) / d + 1) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    expected = within / (m * (m - 1)) - 2 * cross / m ** 2
    got, std = kid(torch.from_numpy(x), torch.from_numpy(y))
    assert got == pytest.approx(expected, rel=1e-12) and std == 0.0


def test_kid_subsets_average_the_mmd_of_each_subset():
    """N = 6 real vs 4 fake, subsets of 4: each subset's value must be the direct formula on that subset,
    so the mean over subsets lies between the smallest and the largest 4-subset value of the real side."""
    x, y = _gauss(6, 2, 2).double(), _gauss(4, 2, 3).double()
    per = [kid(x[list(c)], y)[0] for c in itertools.combinations(range(6), 4)]
    mean, std = kid(x, y, subsets=50)
    assert min(per) <= mean <= max(per) and std > 0


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_kernel_inception_distance():
    """The maintained implementation (torchmetrics, fed features through an identity 'feature network'),
    one subset = the whole sets, so no random draw enters."""
    tm_kid = pytest.importorskip("torchmetrics.image.kid")
    x, y = _gauss(40, 16, 4), _gauss(40, 16, 5, shift=0.3)
    metric = tm_kid.KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=40)
    metric.update(x.double(), real=True)
    metric.update(y.double(), real=False)
    assert kid(x, y)[0] == pytest.approx(float(metric.compute()[0]), rel=1e-9)


def test_kid_is_unbiased_where_the_plain_mmd_is_not():
    """Two samples of 20 from one 4-D Gaussian, 200 times: KID's mean is within 3 standard errors of 0,
    while the biased V-statistic (diagonals kept, / m²) is positive by many standard errors (the test
    can tell the two apart)."""
    unbiased, biased = [], []
    for s in range(200):
        x, y = _gauss(20, 4, 2 * s).double(), _gauss(20, 4, 2 * s + 1).double()
        unbiased.append(kid(x, y)[0])
        kxx, kyy, kxy = ((a @ b.T / 4 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(float((kxx.sum() + kyy.sum() - 2 * kxy.sum()) / 400))
    u, b = torch.tensor(unbiased), torch.tensor(biased)
    se = u.std() / math.sqrt(len(u))
    assert abs(u.mean()) < 3 * se
    assert b.mean() > 10 * se


def test_kid_of_real_against_held_out_real_images_is_near_zero_against_noise():
    """Own features of 16 px blob images: a second draw of the same images scores ~0, noise images far more."""
    real, held = own_features(_blobs(120, 0)), own_features(_blobs(120, 1))
    noise = own_features(torch.rand(120, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
    same, other = kid(real, held)[0], kid(real, noise)[0]
    assert other > 0 and abs(same) < 0.02 * other


def test_kid_needs_two_images_per_set():
    with pytest.raises(SandboxError, match="at least 2"):
        kid(_gauss(1, 4, 0), _gauss(8, 4, 1))


# ----------------------------------------------------------------------------- precision and recall

def test_precision_recall_on_a_hand_computed_example():
    """1-D, k = 1. Real 0, 1, 2, 3: every radius is 1. Fake 0.5 and 10: radii 9.5 each.
    Precision: 0.5 is inside (|0.5 - 0| <= 1), 10 is not -> 1/2. Recall: every real point is within 9.5
    of 0.5 -> 1."""
    real, fake = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_precision_and_recall_are_near_one_for_two_samples_of_one_distribution():
    p, r = precision_recall(_gauss(2000, 2, 0), _gauss(2000, 2, 1))
    assert p > 0.93 and r > 0.93


def test_a_collapsed_set_keeps_precision_and_loses_recall():
    """Every sample the same (real-looking) point: it lies inside the real manifold (precision 1), but a
    set of copies has k-th neighbour radius 0 and covers no real point (recall ~0)."""
    real = _gauss(1000, 8, 0)
    collapsed = _gauss(1, 8, 1).clamp(-0.5, 0.5).expand(1000, -1)
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.05


def test_a_collapsed_image_set_has_recall_far_below_precision():
    """The same on images: one real blob image repeated, against real blob images (own features)."""
    real = own_features(_blobs(200, 0))
    collapsed = own_features(_blobs(1, 1).expand(200, -1, -1, -1).contiguous())
    p, r = precision_recall(real, collapsed)
    assert r < 0.05 and p > r + 0.5


def test_a_shifted_distribution_has_low_precision_and_recall():
    p, r = precision_recall(_gauss(1000, 8, 0), _gauss(1000, 8, 1, shift=3.0))
    assert p < 0.1 and r < 0.1


def test_precision_recall_is_nan_without_a_kth_neighbour():
    assert all(math.isnan(v) for v in precision_recall(_gauss(3, 2, 0), _gauss(10, 2, 1)))


def test_sample_scores_hold_every_metric():
    s = sample_scores(_gauss(50, 8, 0), _gauss(50, 8, 1))
    assert set(s) == {"fid_own", "kid_own", "kid_own_std", "precision", "recall", "diversity"}
    assert all(math.isfinite(v) for v in s.values())


# ----------------------------------------------------------------------------- nearest training image

def test_nearest_train_distance_is_zero_for_copies_of_training_images():
    """Samples copied from train: 0 in features and pixels; held-out images of the same kind: above 0."""
    from sandbox.analysis.probe import nearest_train

    train_images = _blobs(40, 0)
    train = [{"image": x} for x in train_images]
    res = nearest_train(train, {"samples": train_images[5:25], "heldout": _blobs(20, 1)}, chunk=16)
    assert res["nearest_train_images"] == 40
    assert res["nearest_features_samples"] == pytest.approx(0, abs=1e-5)
    assert res["nearest_pixels_samples"] == pytest.approx(0, abs=1e-6)
    assert res["nearest_features_heldout"] > 0.01 and res["nearest_pixels_heldout"] > 0.01


def test_min_distances_are_the_distance_to_the_closest_reference():
    """3-4-5 triangles: (0, 0) is 5 from (3, 4) and 10 from (6, 8); (6, 8) is 0 from itself."""
    q, ref = torch.tensor([[0.0, 0.0], [6.0, 8.0]]), torch.tensor([[3.0, 4.0], [6.0, 8.0]])
    assert min_distances(q, ref, chunk=1).tolist() == pytest.approx([5.0, 0.0])


# ----------------------------------------------------------------------------- Inception weights

def _probe_cli(monkeypatch, capsys, *args):
    from tests.conftest import command

    monkeypatch.setattr(sys, "argv", ["probe.py", *args])
    with pytest.raises(SystemExit) as exc:
        command("probe").main()
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize("kind", ["missing", "garbage", "other_tensors", "not_a_dict"])
def test_a_missing_or_wrong_inception_file_is_one_clean_line(tmp_path, monkeypatch, capsys, kind):
    """Checked before the run is even loaded (a run directory that does not exist is not reached), never
    a traceback, and no download: socket connections are refused for the whole command."""
    import socket

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    if kind == "garbage":
        path.write_bytes(b"\x00not a torch file" * 100)
    elif kind == "other_tensors":
        pytest.importorskip("torch_fidelity")
        torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    code, io = _probe_cli(monkeypatch, capsys, "--run", str(tmp_path / "run"), "--inception-weights", str(path))
    lines = io.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), io.err
    assert "Traceback" not in io.err and str(path) in lines[0]


def test_inception_features_come_from_a_safely_loaded_state_dict(tmp_path, monkeypatch):
    """An InceptionV3 state dict of the right keys and shapes (random weights: the real file is not
    shipped) loads through load_safely and gives (N, 2048) features for 16 px greyscale images."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from sandbox.metrics.inception import inception_features, load_inception

    with monkeypatch.context() as m:  # build the network once without weights to get a matching file
        m.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: {})
        state = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    net = load_inception(path)
    feats = inception_features(net, torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert torch.equal(net.state_dict()["fc.weight"], state["fc.weight"])


# ----------------------------------------------------------------------------- power spectrum

def _dots(n: int, seed: int, side: int = 32, density: float = 0.05) -> torch.Tensor:
    """Sparse bright points (like a rendered attractor): power at every frequency."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, side, side, generator=g) < density).float().expand(-1, 3, -1, -1).clone()


def test_radial_power_puts_a_cosine_in_its_own_ring():
    """cos(2 pi k x / S) has its whole spectrum at (0, +-k): power (S^2 / 2)^2 at each of the two points, so
    ring k's mean power is 2 (S^2 / 2)^2 / (points in ring k) and every other ring holds ~0."""
    side, k = 16, 3
    x = torch.arange(side).double()
    img = torch.cos(2 * math.pi * k * x / side)[None, :].expand(side, side)[None, None]
    p = radial_power(img)
    f = torch.fft.fftfreq(side, d=1.0 / side)
    ring_points = int((torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).round() == k).sum())
    assert p.shape == (side // 2,)
    assert float(p[k - 1]) == pytest.approx(2 * (side ** 2 / 2) ** 2 / ring_points, rel=1e-9)
    assert float(torch.cat([p[:k - 1], p[k:]]).max()) < 1e-12 * float(p[k - 1])


def test_spectrum_scores_closed_forms_equal_sets_and_halved_contrast():
    """Equal sets score 0; halving the contrast (x -> 0.5 x, the mean is removed) multiplies the power by
    1/4 at every radius: spectral_l1 = |log10 1/4| = 0.602 and hf_log_ratio = -0.602."""
    real = _dots(20, 0)
    assert spectrum_scores(real, real) == {"spectral_l1": 0.0, "hf_log_ratio": 0.0}
    got = spectrum_scores(real, 0.5 * real)
    assert got["spectral_l1"] == pytest.approx(math.log10(4), abs=1e-9)
    assert got["hf_log_ratio"] == pytest.approx(-math.log10(4), abs=1e-9)


def test_spectrum_sees_blur_as_missing_and_noise_as_excess_fine_detail():
    """Held-out images of the same distribution sit near 0; a 3x3 blur of them loses the upper band
    (hf_log_ratio far below 0) and added pixel noise gains it (above 0), each far outside the held-out
    spread (the blur on sparse dots, the noise on smooth blobs)."""
    real, held = _dots(64, 0), _dots(64, 1)
    blurred = torch.nn.functional.avg_pool2d(held, 3, stride=1, padding=1, count_include_pad=False)
    base = spectrum_scores(real, held)
    assert base["spectral_l1"] < 0.05 and abs(base["hf_log_ratio"]) < 0.05
    blur = spectrum_scores(real, blurred)
    assert blur["hf_log_ratio"] < -0.5 and blur["spectral_l1"] > 10 * base["spectral_l1"]
    smooth, smooth_held = _blobs(64, 3, side=32), _blobs(64, 4, side=32)  # little fine detail of their own
    noisy = smooth_held + 0.05 * torch.randn(smooth_held.shape, generator=torch.Generator().manual_seed(2))
    assert abs(spectrum_scores(smooth, smooth_held)["hf_log_ratio"]) < 0.1
    assert spectrum_scores(smooth, noisy)["hf_log_ratio"] > 1.0


def test_spectrum_of_two_image_sizes_is_one_clear_error():
    with pytest.raises(SandboxError, match=r"differ in shape: \(3, 32, 32\) vs \(3, 16, 16\)"):
        spectrum_scores(_dots(4, 0), _dots(4, 1, side=16))
