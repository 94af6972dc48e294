"""A study's answer: per cell mean, std and 95 % CI over seeds on the report split, paired tests for the
comparisons it names, time to a threshold, wall times and the machine (report.md's protocol section).

Files next to report.md: ``report.csv`` (one row per cell), ``comparisons.csv`` (one row per pair and
metric) and ``report_runs.csv`` (one row per run: the numbers every other table is computed from).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from sandbox.analysis import significance as sig
from sandbox.analysis.probe import EVAL_KEYS
from sandbox.analysis.reports import lower_is_better, metric_mode, run_kind, run_stats, write_csv
from sandbox.analysis.study import MIN_SEEDS, OPTIMISED_BY, eval_file, machine
from sandbox.analysis.tables import format_table
from sandbox.errors import SandboxError
from sandbox.metrics.selection import best_index


SIGNED = ("hf_log_ratio",)  # 0 is best: below, the samples lack fine detail (blur); above, they carry extra (noise)


def first_reach(run, key: str, threshold: float) -> tuple[float | None, float | None]:
    """``(epoch, seconds)`` of the first validated epoch whose ``key`` reaches ``threshold`` (at least it
    when higher is better, at most it otherwise); ``(None, None)`` when no epoch does."""
    up = metric_mode(run, key) == "max"
    for row in run.epochs:
        v = row.get(key)
        if v is not None and math.isfinite(v) and (v >= threshold if up else v <= threshold):
            return row["epoch"], row["time"]
    return None, None


def run_record(spec, run, protocol: dict) -> dict | None:
    """One run's numbers: report-split metrics from checkpoints/best, the selection metric, wall time,
    reach; None for a run reporting on test without an evaluation from its checkpoints/best."""
    monitor = run.cfg.train.monitor
    st = run_stats(run, monitor)
    rec = {"cell": spec.cell.name, "seed": spec.seed, "run": spec.name, "selected epoch": st.get("best epoch"),
           f"{monitor} (selection)": st.get(f"best {monitor}")}
    if protocol["report_on"] == "test":
        f = eval_file(spec.path, "test")
        if f is None:  # its evaluation failed (the command said so): left out, and report.md says so
            return None
        scored = json.loads(f.read_text())
        means = scored["means"]
        rec.update({m: means.get(m.split("/", 1)[1]) for m in protocol["metrics"]})
        if run_kind(run.cfg) == "generative":  # score_run's file: no per-image scores (a sample set is scored whole)
            rec.update({"samples": scored.get("samples"), "probe fit": scored.get("fit"),
                        "sampling threads": scored.get("threads")})
        else:
            rec["per_image"] = str(f.with_suffix(".csv"))
    else:
        i = best_index(run.epochs, monitor, metric_mode(run, monitor), monitor=True)
        row = run.epochs[i] if i is not None else {}
        scored = {}
        if run_kind(run.cfg) == "generative":  # samples and probe: the study's evaluation of checkpoints/best
            f = eval_file(spec.path, "val")
            if f is None:
                return None
            scored = json.loads(f.read_text())
            rec.update({"samples": scored.get("samples"), "probe fit": scored.get("fit"),
                        "sampling threads": scored.get("threads")})
        for m in protocol["metrics"]:
            key = m.split("/", 1)[1]
            if key in EVAL_KEYS and scored:
                rec[m] = scored["means"].get(key)  # None: the model has no such number (no encoder: no probe)
            elif m in row:
                rec[m] = row[m]
            else:
                logged = sorted(k for k in run.epochs[-1] if k.startswith("val/"))
                raise SandboxError(f"{m}: not logged by {spec.path} (its val metrics: {', '.join(logged)})")
    rec["train_s"] = st["train_time"]
    rec["wall_s"] = st["total_time"]
    for key, thr in protocol["reach"].items():
        rec[f"epochs to {key} {thr:g}"], rec[f"seconds to {key} {thr:g}"] = first_reach(run, key, thr)
    return rec


def _fmt(ci: sig.Interval, with_ci: bool) -> str:
    if ci.n == 0:
        return "n/a"
    if ci.n == 1:
        return f"{ci.mean:.4g}"
    return f"{ci.mean:.4g} ± {ci.std:.2g}" + (f" [{ci.lo:.4g}, {ci.hi:.4g}]" if with_ci else "")


def cell_tables(records: list[dict], cells: list[str], protocol: dict, labels: dict) -> tuple[list[dict], list[dict]]:
    """``(csv rows, markdown rows)``, one per cell in the study's order (never sorted by a metric)."""
    rows, md = [], []
    sel = next((k for k in records[0] if k.endswith("(selection)")), None)
    reach = [k for k in records[0] if k.startswith(("epochs to", "seconds to"))]
    for cell in cells:
        recs = [r for r in records if r["cell"] == cell]
        if not recs:
            continue
        row, line = {"cell": cell, **labels[cell], "seeds": len(recs)}, {"cell": cell, "seeds": len(recs)}
        # train_s: absent from the report_runs.csv of reports older than it (rebuilt by study_rebuild.py)
        for m in protocol["metrics"] + ([sel] if sel else []) + [k for k in ("train_s", "wall_s") if k in records[0]]:
            ci = sig.mean_ci([r.get(m) for r in recs])
            row.update({f"{m}_mean": ci.mean, f"{m}_std": ci.std, f"{m}_ci_lo": ci.lo, f"{m}_ci_hi": ci.hi})
            label = {"train_s": "train s / run", "wall_s": "wall s / run"}.get(m, m)
            line[label] = _fmt(ci, len(recs) >= MIN_SEEDS and m in protocol["metrics"])
        for k in reach:
            got = [r[k] for r in recs if r.get(k) is not None]
            ci = sig.mean_ci(got)
            row.update({f"{k}_mean": ci.mean, f"{k}_reached": len(got)})
            line[k] = f"{_fmt(ci, False)} ({len(got)}/{len(recs)} reached)" if got else f"not reached (0/{len(recs)})"
        rows.append(row)
        md.append(line)
    return rows, md


def _per_image(path: str) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {(r.get("stem") or r["index"]): r for r in csv.DictReader(f)}


def compare_pair(records: list[dict], a: str, b: str, metric: str, seed: int = 0, test_train: float = 0.0) -> dict:
    """``b - a`` on ``metric`` over the seeds both cells finished: paired t-test (Nadeau-Bengio corrected
    with ``test_train`` = n_test / n_train > 0: seeds that re-split one data set), d_z, and a paired bootstrap
    over the per-image scores of the report split (same seed: the same test images). The verdict is the
    pair's alone; :func:`adjust` replaces it by the family's."""
    def has(r: dict) -> bool:
        return r.get(metric) is not None and math.isfinite(r[metric])

    ra = {r["seed"]: r for r in records if r["cell"] == a and has(r)}
    rb = {r["seed"]: r for r in records if r["cell"] == b and has(r)}
    seeds = sorted(set(ra) & set(rb))  # a cell without the metric (no encoder: no probe) has no seed here
    xa, xb = [ra[s][metric] for s in seeds], [rb[s][metric] for s in seeds]
    test = sig.paired_test(xa, xb, test_train)
    diffs, key = [], metric.split("/", 1)[1]
    for s in seeds:
        if "per_image" not in ra[s]:
            break
        ia, ib = _per_image(ra[s]["per_image"]), _per_image(rb[s]["per_image"])
        diffs.append([float(ib[k][key]) - float(ia[k][key]) for k in ia if k in ib])
    _, blo, bhi = sig.bootstrap_diff(diffs, seed=seed) if diffs else (math.nan, math.nan, math.nan)
    out = {"a": a, "b": b, "metric": metric, "seeds": len(seeds), "diff_mean": test.diff.mean,
           "diff_ci_lo": test.diff.lo, "diff_ci_hi": test.diff.hi, "t": test.t, "p": test.p, "d_z": test.dz,
           "bootstrap_lo": blo, "bootstrap_hi": bhi, "images": sum(len(d) for d in diffs),
           "verdict": sig.verdict(test.p) if seeds or (ra and rb)
           else f"n/a ({', '.join(c for c, r in ((a, ra), (b, rb)) if not r)}: no {metric})"}
    if test_train:  # the uncorrected test beside it, so the correction can be read off
        out["p_plain"] = sig.paired_test(xa, xb).p
    return out


def adjust(comps: list[dict], test_train: float = 0.0) -> list[dict]:
    """Holm within each metric's family of planned pairs (``c["planned"]``, default True): ``p_holm`` and
    the verdict from it; a pair not planned is labelled exploratory and left out of every family. Also
    ``seeds_needed``: the seeds for 80 % power at the pair's observed d_z under the study's test."""
    for metric in dict.fromkeys(c["metric"] for c in comps):
        family = [c for c in comps if c["metric"] == metric and c.get("planned", True)]
        for c, ph in zip(family, sig.holm([c["p"] for c in family])):
            c["p_holm"], c["family"] = ph, f"{metric}: {len(family)} planned pair(s)"
    for c in comps:
        if not c.get("planned", True):
            c["p_holm"], c["family"] = math.nan, "exploratory"
        if math.isfinite(c["p"]):
            c["verdict"] = sig.verdict(c["p"], None if c["family"] == "exploratory" else c["p_holm"],
                                       exploratory=c["family"] == "exploratory")
        c["seeds_needed"] = sig.seeds_needed(c["d_z"], test_train)
    return comps


def circular(protocol: dict, configs: dict) -> list[str]:
    """Warnings for report metrics that some cells' losses optimise directly and others' do not
    (``{cell: Config}``): a ranking by such a metric favours the cells trained on it. (A metric every
    cell optimises, such as Dice for cells that all train on Dice, is the common objective.)"""
    out = []
    for m in protocol["metrics"]:
        name = m.split("/", 1)[1]
        target = "depth" if name.startswith("depth_") else "mask"
        hits = {c: sorted(set(OPTIMISED_BY.get(name, ())) & set((cfg.loss or {}).get(target, {})))
                for c, cfg in configs.items()}
        hits = {c: h for c, h in hits.items() if h}
        if hits and len(hits) < len(configs):
            who = ", ".join(f"{c} ({'+'.join(h)})" for c, h in hits.items())
            role = "the primary metric" if m == protocol["primary"] else "a reported metric"
            out.append(f"**Warning:** {m} is {role} and also what {who} train on: a ranking by it favours "
                       "them; read the metrics no cell optimises.")
    return out


def protocol_report(finished: list, protocol: dict, sweep_dir: Path, cells: dict, seeds: list[int],
                    wall_s: float) -> list[str]:
    """report.md's protocol section (Markdown lines) and its three CSV files, from ``finished``:
    ``[(Spec, Run), ...]`` of the finished runs; ``cells``: ``{name: Cell}`` in the study's order."""
    records = [run_record(s, r, protocol) for s, r in finished]
    unscored = [s.name for (s, _), rec in zip(finished, records) if rec is None]
    records = [r for r in records if r is not None]
    if not records:
        raise SandboxError(f"no finished run of {sweep_dir} has an evaluation on {protocol['report_on']}; "
                           "rerun the study command to evaluate them")
    check_splits(finished, protocol)
    write_csv(records, sweep_dir / "report_runs.csv")
    comps = study_comparisons(records, protocol)
    body, n = results_section(records, protocol, cells, sweep_dir, comps)
    sel, rep = protocol["select_on"], protocol["report_on"]
    lines = ["## Protocol", "",
             f"Primary metric **{protocol['primary']}**. Each run's checkpoint is selected on val "
             f"(checkpoints/best by {sel if '/' in sel else 'train.monitor'}; ties: lower val/loss) and scored on "
             f"**{rep}**{per_image_note(finished) if rep == 'test' else ''}. "
             f"Seeds {', '.join(map(str, seeds))}: the seed sets the weights, the data order and, for synthetic "
             "data and folder splits, the data, so two cells' runs with the same seed see the same images.", ""]
    if unscored:
        lines += [f"**Left out:** {len(unscored)} finished run(s) without a {protocol['report_on']} evaluation "
                  f"({', '.join(unscored)}); rerun the study command to evaluate them.", ""]
    if len(seeds) < MIN_SEEDS:
        lines += [f"**Warning:** {len(seeds)} seed(s): fewer than {MIN_SEEDS}, so no confidence interval is given.", ""]
    lines += circular(protocol, {s.cell.name: r.cfg for s, r in finished}) + [""] + body
    total = sum(r["wall_s"] for r in records)
    m = machine()
    lines += [f"Wall time: {total / 60:.1f} min of training summed over {len(records)} runs "
              f"(per run in report_runs.csv), this invocation {wall_s / 60:.1f} min. Machine: {m['cpu']}, "
              f"{m['cores']} cores, GPU {m['gpu']}, torch {m['torch']}, Python {m['python']}.", "",
              "Files: report.csv (per cell), comparisons.csv, report_runs.csv (per run).", ""]
    return lines


def check_splits(finished: list, protocol: dict) -> None:
    """A study declared ``resampled: {n_train, n_test}``: every run's splits/ (the file lists it trained and
    was scored on) holds those counts, so the correction uses the sizes the runs really had."""
    want = protocol.get("resampled")
    for spec, _ in finished if want else []:
        got = {k: sum(1 for _ in csv.DictReader(open(spec.path / "splits" / f"{k[2:]}.csv")))
               for k in ("n_train", "n_test") if (spec.path / "splits" / f"{k[2:]}.csv").is_file()}
        if got and got != want:
            raise SandboxError(f"{spec.path}/splits: {got}; the study file's resampled: says {want} "
                               "(set it to the split sizes the runs have)")


def study_comparisons(records: list[dict], protocol: dict) -> list[dict]:
    """Every planned pair on every metric, tested as the study's design asks and Holm-adjusted per metric."""
    tt = test_train(protocol)
    return adjust([compare_pair(records, a, b, m, test_train=tt) for a, b in protocol["pairs"]
                   for m in protocol["metrics"]], tt)


def test_train(protocol: dict) -> float:
    """``n_test / n_train`` of a ``resampled:`` study (the Nadeau-Bengio term), else 0 (the plain test)."""
    r = protocol.get("resampled")
    return r["n_test"] / r["n_train"] if r else 0.0


def results_section(records: list[dict], protocol: dict, cells: dict, out: Path, comps: list[dict],
                    note: str = "") -> tuple[list[str], int]:
    """report.md's numbers, from ``records`` (report_runs.csv's rows): the per-cell table, the primary
    metric's comparisons with the test, its correction and the seeds for 80 % power, the generative notes;
    writes report.csv and comparisons.csv into ``out``. Returns ``(lines, fewest seeds of a cell)``."""
    rows, md = cell_tables(records, list(cells), protocol, {n: c.labels for n, c in cells.items()})
    write_csv(rows, out / "report.csv")
    if comps:
        write_csv(comps, out / "comparisons.csv")
    n = min((r["seeds"] for r in rows), default=0)
    lines = [f"Per cell, over seeds: mean ± sample std [95 % CI: Student t, n - 1 dof; {sig.T_SOURCE}]"
             f"{'' if n >= MIN_SEEDS else ' (no CI below 3 seeds)'}. Cells in the study's order, not ranked.", "",
             format_table(md), ""]
    primary = [c for c in comps if c["metric"] == protocol["primary"]]
    if primary:
        lines += [f"Comparisons on {protocol['primary']} (b − a over the same seeds; {test_words(protocol)}; "
                  f"d_z = mean / std of the differences; bootstrap: {sig.BOOTSTRAP:,} resamples of the "
                  f"{protocol['report_on']} images within each seed, seed 0: it holds the trained models fixed, so it "
                  "is narrower than the t interval, which includes the spread between seeds; every metric in "
                  f"comparisons.csv){note}:", "", format_table([_comp_row(c) for c in primary]), "",
                  f"p: the pair's own two-sided test; Holm: adjusted within the family of the "
                  f"{sum(c['family'] != 'exploratory' for c in primary)} planned pair(s) on this metric (Holm 1979; "
                  "each metric in comparisons.csv is its own family); the verdict follows the Holm p.", "",
                  "Seeds for 80 % power at the observed d_z (two-sided, alpha 0.05, the same test; noncentral t): "
                  + "; ".join(f"{c['a']} → {c['b']}: {_seeds(c)}" for c in primary)
                  + ". A d_z from a few seeds is a rough estimate (optimistic after a significant result).", ""]
    lines += generative_notes(records, rows, protocol)
    return lines, n


def test_words(protocol: dict) -> str:
    """The test in words, for report.md: plain paired t over seeds, or the corrected resampled t."""
    r = protocol.get("resampled")
    if not r:
        return "paired t-test over seeds, two-sided: each seed draws its own independent data"
    return (f"Nadeau-Bengio corrected resampled t-test, two-sided: every seed re-splits the same data set, so the "
            f"seeds' test sets share images; variance × (1/J + n_test/n_train), J seeds, n_test/n_train = "
            f"{r['n_test']}/{r['n_train']} (one seed's test and training splits; the study file's resampled:), "
            "the 95 % CI (t) widened alike; p_plain in comparisons.csv is the uncorrected paired test")


def _seeds(c: dict) -> str:
    if not math.isfinite(c["d_z"]) or c["d_z"] == 0:
        return "no effect observed"
    n = c["seeds_needed"]
    return f"{n} (d_z {c['d_z']:+.2g})" if n else f"more than 100 (d_z {c['d_z']:+.2g})"


def per_image_note(finished: list) -> str:
    """Where a test evaluation lives: eval/test.json, with per-image scores for segmentation runs."""
    if all(run_kind(r.cfg) == "generative" for _, r in finished):
        return " from that checkpoint (eval/test.json: samples from fresh noise against every test image)"
    return " from that checkpoint (eval/test.json, per image in eval/test.csv)"


def generative_notes(records: list[dict], rows: list[dict], protocol: dict) -> list[str]:
    """report.md's lines on a study of generative runs: how they were scored, what the times mean, and
    the best cell by mean per metric (the direction by the metric's name; whether it is a win is the
    comparisons' and the intervals' to say)."""
    if not any("samples" in r for r in records):
        return []
    def one(key: str):
        got = sorted({r.get(key) for r in records if r.get(key) is not None})
        return ", ".join(map(str, got)) or "?"

    lines = [f"Generative runs are scored once, from checkpoints/best, on {protocol['report_on']} "
             f"(sandbox/analysis/probe.py `score_run`, eval/{protocol['report_on']}.json in each run): "
             f"{one('samples')} samples against every image of the split in the sandbox's own features (kid_own, "
             f"precision, recall: the same features and counts for every cell; spectral_l1 and hf_log_ratio: the "
             f"samples' power spectrum against the {protocol['report_on']} images' in pixels, hf_log_ratio closest "
             "to 0 is best)"
             + ("; the latent probe (R² of ridge and kernel ridge from codes to the 4 attractor parameters) fitted on "
                f"{one('probe fit')} training images: codes of AE/VAE/AAE, the inverted noise of DDPM/flow, **n/a** for "
                "a model without an encoder (DCGAN)" if any(r.get("probe fit") for r in records) else "")
             + ". sample_time_per_100: seconds of model.sample() per 100 samples (fp32, eval mode with the EMA "
             f"weights, batches of 256, {one('sampling threads')} torch thread(s), on the machine below; a timing "
             "under whatever else ran there). train s / run: seconds in training steps (the budget); wall s: since "
             "the run started, evaluation each epoch and checkpoints included.", ""]
    best = []
    for m in protocol["metrics"]:
        have = [(r[f"{m}_mean"], r["cell"]) for r in rows if math.isfinite(r.get(f"{m}_mean", math.nan))]
        if have and m.rsplit("/", 1)[-1] in SIGNED:
            val, cell = min(have, key=lambda vc: abs(vc[0]))
            best.append(f"{m} (closest to 0 is best): {cell} ({val:.4g})")
        elif have:
            low = lower_is_better(m)
            val, cell = (min if low else max)(have)
            best.append(f"{m} ({'lower' if low else 'higher'} is better): {cell} ({val:.4g})")
    if best:
        lines += ["Best cell by mean: " + "; ".join(best) + ". A best mean is a win only where the comparisons "
                  "(paired over seeds, Holm-adjusted, comparisons.csv for every metric) say so.", ""]
    return lines


def _comp_row(c: dict) -> dict:
    def num(x: float) -> str:
        return f"{x:+.4g}" if math.isfinite(x) else "–"

    def pv(x: float) -> str:
        return f"{x:.3g}" if math.isfinite(x) else "–"

    return {"a": c["a"], "b": c["b"], "seeds": c["seeds"], "b − a": num(c["diff_mean"]),
            "95 % CI (t)": f"[{num(c['diff_ci_lo'])}, {num(c['diff_ci_hi'])}]", "p": pv(c["p"]),
            "Holm p": pv(c["p_holm"]) if c["family"] != "exploratory" else "exploratory", "d_z": num(c["d_z"]),
            "bootstrap 95 % CI": f"[{num(c['bootstrap_lo'])}, {num(c['bootstrap_hi'])}]"
            if math.isfinite(c["bootstrap_lo"]) else "n/a (no per-image scores)", "verdict": c["verdict"]}
