"""Statistics that survive a referee (issue 29): Holm within a study's family of planned pairs, the
Nadeau-Bengio corrected resampled t-test for seeds that re-split one data set, the seeds for 80 % power,
and the committed reports rebuilt from their CSVs (the numbers nothing changed come back bit for bit)."""
import csv
import math
import shutil

import pytest

from sandbox.analysis import significance as sig
from tests.conftest import ROOT


@pytest.fixture(params=["scipy", "built-in"])
def t_source(request, monkeypatch):
    """Every test runs on scipy's t (and noncentral t) and on the built-in closed form / approximation."""
    if request.param == "built-in":
        monkeypatch.setattr(sig, "_scipy_stats", None)
    return request.param


def test_holm_on_a_hand_example():
    # p = [0.01, 0.04, 0.03, 0.20], m = 4. Sorted: 0.01, 0.03, 0.04, 0.20 (ranks 1..4); each times
    # (m - rank + 1): 0.01 * 4 = 0.04, 0.03 * 3 = 0.09, 0.04 * 2 = 0.08, 0.20 * 1 = 0.20; running maximum:
    # 0.04, 0.09, 0.09 (0.08 < 0.09), 0.20; capped at 1 (none is). Back in the given order:
    assert sig.holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    # the cap: 0.3 * 4 = 1.2 -> 1; a NaN (no test) is not counted in m: 0.02 * 2 = 0.04, then max(0.04, 0.5)
    assert sig.holm([0.3, 0.3, 0.3, 0.3]) == [1.0] * 4
    got = sig.holm([0.5, math.nan, 0.02])
    assert got[0] == pytest.approx(0.5) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)


def test_verdict_follows_the_adjusted_p():
    assert sig.verdict(0.016, 0.065) == "not significant (p = 0.016, Holm 0.065)"  # the mask-losses case
    assert sig.verdict(0.0061, 0.018) == "significant (p = 0.0061, Holm 0.018)"
    assert sig.verdict(0.017, exploratory=True) == "exploratory (p = 0.017, not adjusted)"
    assert sig.verdict(0.042) == "significant (p = 0.042)"  # one test alone: unchanged


def test_nadeau_bengio_on_a_hand_example(t_source):
    # d = b - a = [0.5, 0.4, 0.8] (as in test_study_protocol): J = 3, mean 0.56667, var 0.043333 (std 0.208167).
    # Plain: t = mean / sqrt(var / J) = 0.56667 / 0.120185 = 4.7150.
    # Corrected (Nadeau & Bengio 2003), n_test / n_train = 29 / 135 = 0.214815:
    #   t = mean / sqrt((1/J + n2/n1) * var) = 0.56667 / sqrt((0.333333 + 0.214815) * 0.043333)
    #     = 0.56667 / sqrt(0.023753) = 0.56667 / 0.154120 = 3.6768.
    # With 2 dof P(|T| < t) = t / sqrt(2 + t²): p = 1 - 3.6768 / sqrt(15.5189) = 1 - 0.93334 = 0.06666.
    # The 95 % CI widens alike: 0.56667 ± 4.303 * 0.154120 = [-0.0965, 1.2298]. d_z stays mean / std = 2.7222.
    a, b = [1.0, 2.0, 3.0], [1.5, 2.4, 3.8]
    r = sig.paired_test(a, b, test_train=29 / 135)
    assert r.t == pytest.approx(3.6768, abs=1e-4) and r.p == pytest.approx(0.06666, abs=1e-4)
    assert (r.diff.lo, r.diff.hi) == (pytest.approx(-0.0965, abs=2e-4), pytest.approx(1.2298, abs=2e-4))
    assert r.dz == pytest.approx(2.7222, abs=1e-4)
    plain = sig.paired_test(a, b)
    assert plain.t == pytest.approx(4.7150, abs=1e-4) and plain.p < 0.05 < r.p  # the correction flips it


def test_seeds_needed_matches_a_power_table(t_source):
    # G*Power 3.1 (Faul et al. 2007), t tests, "difference between two dependent means (matched pairs)",
    # two tails, alpha 0.05, power 0.80: d_z = 1 -> total N 10 (actual power 0.803); d_z = 0.5 -> N 34 (0.808).
    assert sig.seeds_needed(1.0) == 10 and sig.seeds_needed(-1.0) == 10
    assert sig.seeds_needed(0.5) == 34
    assert sig.power(1.0, 10) == pytest.approx(0.803, abs=0.002)
    assert sig.power(1.0, 9) < 0.8 <= sig.power(1.0, 10)
    # re-splitting the same photos caps the noncentrality at d_z / sqrt(n2/n1) = 1 / sqrt(0.2148) = 2.16:
    # no number of seeds reaches 80 % at d_z = 1; a large effect needs more seeds than under the plain test
    assert sig.seeds_needed(1.0, test_train=29 / 135) is None
    assert sig.seeds_needed(2.0) == 5 and sig.seeds_needed(2.0, test_train=29 / 135) == 8
    assert sig.seeds_needed(0.0) is None and sig.seeds_needed(math.nan) is None


def records(diffs: dict[str, list[float]]) -> list[dict]:
    """Per-seed records of a baseline cell "a" at 0 and cells b, c, ... at a + their differences."""
    out = [{"cell": "a", "seed": s, "test/dice": 0.0} for s in range(3)]
    for cell, d in diffs.items():
        out += [{"cell": cell, "seed": s, "test/dice": x} for s, x in enumerate(d)]
    return out


def test_study_comparisons_adjust_the_planned_family_and_label_exploratory_pairs():
    from sandbox.analysis.study_report import adjust, compare_pair, study_comparisons

    recs = records({"b": [0.10, 0.12, 0.14], "c": [0.02, 0.10, 0.03], "d": [0.05, 0.06, 0.08]})
    protocol = {"pairs": [("a", "b"), ("a", "c"), ("a", "d")], "metrics": ["test/dice"], "resampled": None}
    comps = study_comparisons(recs, protocol)
    assert [c["p_holm"] for c in comps] == pytest.approx(sig.holm([c["p"] for c in comps]))
    b = comps[0]
    assert b["p"] < 0.05 and b["p_holm"] == pytest.approx(3 * b["p"]) and b["family"] == "test/dice: 3 planned pair(s)"
    assert b["verdict"] == sig.verdict(b["p"], b["p_holm"])
    assert all(c["seeds_needed"] == sig.seeds_needed(c["d_z"]) for c in comps)
    # a pair outside the plan is exploratory: not adjusted, not in the family (m stays 3)
    extra = compare_pair(recs, "b", "c", "test/dice") | {"planned": False}
    again = adjust([compare_pair(recs, a, x, "test/dice") for a, x in protocol["pairs"]] + [extra])
    assert [c["p_holm"] for c in again[:3]] == pytest.approx([c["p_holm"] for c in comps])
    assert again[3]["family"] == "exploratory" and again[3]["verdict"].startswith("exploratory (p = ")
    # a resampled study: every pair's test is the corrected one, p_plain beside it
    res = study_comparisons(recs, {**protocol, "resampled": {"n_train": 135, "n_test": 29}})
    assert res[0]["p"] == pytest.approx(sig.paired_test([0.0] * 3, [0.10, 0.12, 0.14], 29 / 135).p)
    assert res[0]["p_plain"] == pytest.approx(b["p"]) and res[0]["p"] > b["p"]


STUDY_FILE = """title: t
description: d
config: configs/human_seg_unet.yaml
grid: {model.name: [unet, hourglass]}
seeds: [0, 1, 2]
primary: test/dice
compare: [[hourglass, unet]]
"""


def test_a_folder_study_must_declare_resampled_and_the_key_is_checked(tmp_path):
    from sandbox.analysis.sweep import check_study, load_study, make_cells, plan, study_overrides
    from sandbox.errors import ConfigError

    path = tmp_path / "s.yaml"
    path.write_text(STUDY_FILE)
    study = load_study(str(path))
    specs = plan(str(ROOT / study["config"]), make_cells(study["grid"]), study["seeds"], study_overrides(study),
                 "s", tmp_path)
    with pytest.raises(ConfigError, match="splits a folder by seed, so the seeds share images; declare resampled"):
        check_study(study, str(path), str(ROOT / study["config"]), specs)
    path.write_text(STUDY_FILE + "resampled: {n_train: 135, n_test: 29}\n")
    assert load_study(str(path))["protocol"]["resampled"] == {"n_train": 135, "n_test": 29}
    path.write_text(STUDY_FILE + "resampled: true\n")
    with pytest.raises(ConfigError, match=r"resampled: got True, expected \{n_train: N, n_test: M\}"):
        load_study(str(path))


@pytest.mark.parametrize("name", ["models", "mask_losses", "human_seg"])
def test_rebuild_from_the_committed_csvs_reproduces_the_committed_numbers(name, tmp_path):
    """The committed report.csv comes back byte for byte from report_runs.csv; comparisons.csv's numbers
    too (the bootstrap kept as committed), and report.md's per-cell table; the tests are those of the study
    file (human_seg: resampled, so its p is the corrected one and p_plain the committed plain test's)."""
    from sandbox.analysis.study_rebuild import rebuild_report
    from sandbox.analysis.sweep import load_study, make_cells

    src = ROOT / "results" / name
    folder = tmp_path / name
    shutil.copytree(src, folder)
    study = load_study(str(ROOT / "configs" / "studies" / f"{name}.yaml"))
    rebuild_report(folder, study["protocol"], {c.name: c for c in make_cells(study["grid"])})
    assert (folder / "report.csv").read_bytes() == (src / "report.csv").read_bytes()
    new, old = (list(csv.DictReader(open(f / "comparisons.csv"))) for f in (folder, src))
    keys = ["a", "b", "metric", "seeds", "diff_mean", "d_z", "bootstrap_lo", "bootstrap_hi", "images", "p", "p_holm"]
    assert [[r[k] for k in keys] for r in new] == [[r[k] for k in keys] for r in old]
    table = [ln for ln in (src / "report.md").read_text().splitlines() if ln.startswith("| model")]
    assert all(ln in (folder / "report.md").read_text().splitlines() for ln in table)
    text = (folder / "report.md").read_text()
    assert ("Nadeau-Bengio corrected resampled t-test" in text) == (name == "human_seg")
    assert "the verdict follows the Holm p" in text and "Seeds for 80 % power" in text


def test_declared_split_sizes_are_checked_against_the_runs_splits(tmp_path):
    """The correction uses the study file's sizes; a run whose splits/ holds others stops the report."""
    from types import SimpleNamespace

    from sandbox.analysis.study_report import check_splits
    from sandbox.errors import SandboxError

    splits = tmp_path / "run" / "splits"
    splits.mkdir(parents=True)
    for name, n in (("train", 135), ("val", 29), ("test", 29)):
        (splits / f"{name}.csv").write_text("stem,image\n" + "".join(f"{name}{i},{name}{i}.jpg\n" for i in range(n)))
    finished = [(SimpleNamespace(path=tmp_path / "run"), None)]
    check_splits(finished, {"resampled": {"n_train": 135, "n_test": 29}})  # as declared: passes
    check_splits(finished, {"resampled": None})  # not a resampled study: nothing to check
    with pytest.raises(SandboxError, match="splits: {'n_train': 135, 'n_test': 29}; the study file's resampled: says"):
        check_splits(finished, {"resampled": {"n_train": 164, "n_test": 29}})
