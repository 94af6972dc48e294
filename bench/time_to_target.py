"""Time to a target: wall seconds from process start until a run's validation metric FIRST reaches a target,
median over seeds, for the sandbox's recipes and (segmentation) the smp Unet-ResNet18 peer trained by the
same loop at equal settings. The anchors: DAWNBench, MLPerf Training, airbench ("time to 94 % on CIFAR-10").

    python bench/time_to_target.py                          # every default target, seeds 0,1,2 (see bench/README.md)
    python bench/time_to_target.py --targets dancers --seeds 0 --max-seconds 400
    python bench/time_to_target.py --targets dancers@0.8,flow --models ours --no-wait --out ttt_quick

Each run is its own process (``python bench/time_to_target.py --child ...``: the config loaded, data, model and
loss built and trained by the sandbox's trainer, i.e. what ``sandbox/train.py`` does) with
``train.stop_at={metric, value, mode}``, so it ends at the epoch that reaches the target. The clock starts
just before the process is started (Python start-up, imports, rendering the synthetic data and building the
model all count) and stops at the time the first val record that reaches the target was logged: the child
writes the absolute start of its metrics clock (``MetricsLog.start``) beside its run, each record's ``time``
counts from there, so the crossing is exact to the clock, not to the polling. Evaluation of the epochs before
counts too (it is part of getting there). A run that ends its epochs, or passes ``--max-seconds`` (then it is
stopped with SIGTERM), without reaching the target is "not reached" with its best value.

A peer (``smp_unet_r18`` for segmentation targets, when segmentation-models-pytorch is installed) is the very
same config with the model swapped: same data, augmentation, loss, optimizer, schedule, epochs, precision,
channels_last, threads and target; its output wrapped as ``{"mask": logits}``. Runs go round-robin over seeds
(seed 0: ours, peer; seed 1: ...) so that a change of load hits both alike. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is not a package)
import torch  # noqa: E402
from torch import nn  # noqa: E402

SIDECAR = "time_to_target_child.json"  # written by the child into its run directory


@dataclass(frozen=True)
class Target:
    name: str
    config: str  # relative to the project root
    metric: str
    value: float
    mode: str  # "max": reached at >= value; "min": at <= value
    peers: tuple[str, ...] = ()
    max_seconds: float = 900.0  # default budget of one run
    data: str | None = None  # a data folder the target needs (human_seg): found or skipped
    why: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.metric} {'>=' if self.mode == 'max' else '<='} {self.value:g}"


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("dancers", "configs/unet_dice.yaml", "val/dice", 0.90, "max", ("smp_unet_r18",), 600.0,
           why="the main job (UNet w16, 128 px, 10 epochs); issue 32: about 8 epochs, ~170 s to 0.90"),
    Target("human_seg", "configs/human_seg_unet.yaml", "val/dice", 0.85, "max", ("smp_unet_r18",), 1200.0,
           data="human_seg", why="the real-photo recipe (UNet depth 5, 150 epochs, ~12 min); test Dice 0.849 today"),
    Target("flow", "configs/flow_attractors.yaml", "val/kid_own", 0.01, "min", (), 1200.0,
           why="flow matching on attractors, 32 px. val/kid_own is the one sample grade the trainer logs every "
               "epoch (64 EMA samples vs the val images; kid_domain, C2ST and render-back validity are scored "
               "only after training, by sandbox/probe.py). KID is unbiased at any count, so 64 samples do not "
               "shift it, only spread it. 0.01 lies between two disjoint sets of real images (-0.002) and the "
               "mildest degradation of results/evaluators (noise sigma 0.1: 0.016; blur sigma 1 px: 0.044). "
               "kid_own is a cheap signal, not the full grade (results/evaluators/README.md): it ranked blurred "
               "AE blobs ahead of blurred real images"),
)}


# ----------------------------------------------------------------------------- the crossing
def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def first_crossing(records: list[dict], metric: str, value: float, mode: str) -> dict:
    """The first of ``records`` (metrics.jsonl records in file order) whose ``metric`` reaches ``value``
    (``>=`` in ``max`` mode, ``<=`` in ``min``; missing and non-finite values never do), and the best value
    seen up to it (to the end when never reached): ``{"reached", "epoch", "time", "value", "best",
    "best_epoch", "evaluations"}``; ``time`` is the record's ``time`` (seconds of the run's metrics clock)."""
    from sandbox.engine.stops import reached  # the rule train.stop_at stops on

    best = best_epoch = None
    n = 0
    for r in records:
        v = _number(r.get(metric))
        if v is None:
            continue
        n += 1
        if best is None or (v > best if mode == "max" else v < best):
            best, best_epoch = v, r.get("epoch")
        if reached(v, value, mode):
            return {"reached": True, "epoch": r.get("epoch"), "time": r.get("time"), "value": v,
                    "best": best, "best_epoch": best_epoch, "evaluations": n}
    return {"reached": False, "epoch": None, "time": None, "value": None, "best": best, "best_epoch": best_epoch,
            "evaluations": n}


def read_records(path: Path) -> list[dict]:
    """The complete lines of a metrics.jsonl being written (a torn last line is left for the next read)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.split("\n")[:-1]:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def median_seconds(runs: list[dict]) -> float | None:
    """Median over seeds of the seconds to target, a run that did not reach it counting as +inf: finite
    only when more than half of the seeds reached the target (None otherwise)."""
    if not runs:
        return None
    m = statistics.median([r["seconds"] if r["reached"] else math.inf for r in runs])
    return m if math.isfinite(m) else None


# ----------------------------------------------------------------------------- data and peers
def data_folder(name: str) -> Path | None:
    """A shared data folder beside the project (never copied): ``<project>/../shared/data/<name>`` or
    ``/work/shared/data/<name>``, the first that exists."""
    for base in (common.ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (base / name).is_dir():
            return (base / name).resolve()
    return None


def build_peer(name: str, seed: int, in_channels: int = 3):
    """The peer ``name`` (see ``common.build``) initialised from ``seed`` (the global RNG left as it was, as
    ``sandbox.build.build_model`` does), returning ``{"mask": logits}`` as the supervised trainer expects."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DictOutput(PEERS[name](in_channels))


def _smp_unet_r18(in_channels: int):
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet18", encoder_weights=None, in_channels=in_channels, classes=1)


PEERS = {"smp_unet_r18": _smp_unet_r18}


class DictOutput(nn.Module):
    """A peer net that returns the mask logits as a tensor, seen as a sandbox segmentation model."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.net(x)}

    def loss(self, batch: dict, step) -> tuple[torch.Tensor, dict]:
        """The sandbox segmentation model's objective (``SegmentationModel.loss``): the config's criterion on the
        forward through the engine (``step.forward``: DDP, channels-last), so the peer trains by the same step."""
        return step.criterion((step.forward or self)(batch["image"]), batch)


# ----------------------------------------------------------------------------- the child: one training run
def child(spec: dict) -> None:
    """Train ``spec["config"]`` with ``spec["overrides"]`` (``spec["peer"]``: that peer instead of the config's
    model), writing the metrics clock's absolute start beside the run first (see the module docstring)."""
    from sandbox import build_trainer, load_config
    from sandbox.build import build_data, build_loss
    from sandbox.models import MODELS
    from sandbox.trainers import TRAINERS

    cfg = load_config(spec["config"], spec["overrides"])
    if spec.get("peer"):
        model = build_peer(spec["peer"], cfg.seed, cfg.model.in_channels)
        trainer = TRAINERS[MODELS[cfg.model.name].trainer](cfg, model, build_data(cfg, ("train", "val")),
                                                           loss=build_loss(cfg))
    else:
        trainer = build_trainer(cfg)
    side = trainer.run.path / SIDECAR
    info = {"metrics_start": trainer.metrics.start, "threads": trainer.threads,
            "torch_threads": torch.get_num_threads(), "mixed_precision": trainer.mixed_precision,
            "params": sum(p.numel() for p in trainer.unwrapped.parameters())}
    side.write_text(json.dumps(info))
    trainer.fit()
    side.write_text(json.dumps({**info, "torch_threads_end": torch.get_num_threads(), "epochs": trainer.state.epoch,
                                "stopped": trainer.state.stopped_early}))


# ----------------------------------------------------------------------------- one run, watched
def run_one(target: Target, model: str, seed: int, work: Path, max_seconds: float, extra: list[str] = (),
            poll_s: float = 0.25, data_root: Path | None = None) -> dict:
    """One training run of ``target`` with ``model`` ("ours" or a peer) and ``seed`` in a child process under
    ``work``, stopped at the target (``train.stop_at``) or after ``max_seconds`` (SIGTERM). Returns the run's
    row: reached, seconds from process start to the crossing, epochs, best value, start-up seconds, load."""
    name = f"{target.name}_{target.value:g}_{model}_s{seed}"  # one run directory per target value too
    overrides = [f"out_dir={work}", f"name={name}", f"seed={seed}", "track.wandb=disabled", "track.report_to=[]",
                 f"train.stop_at={{metric: {target.metric}, value: {target.value!r}, mode: {target.mode}}}"]
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    overrides += list(extra)
    spec = {"config": str(common.ROOT / target.config), "overrides": overrides,
            "peer": None if model == "ours" else model}
    run = work / name
    metrics = run / "metrics.jsonl"
    log_path = work / f"{name}.log"
    loads = []
    with open(log_path, "w") as log:
        t_wall = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT)
        ended, last_load = None, -math.inf
        while proc.poll() is None:
            time.sleep(poll_s)
            now = time.perf_counter() - t0
            if now - last_load >= 5.0:
                loads.append(round(common.load1(), 2))
                last_load = now
            if ended is None and first_crossing(read_records(metrics), target.metric, target.value,
                                                target.mode)["reached"]:
                ended = "target"  # the child stops by itself after this epoch's saves
            if ended is None and now > max_seconds:
                ended = "max-seconds"
                proc.send_signal(signal.SIGTERM)  # checkpoints/last at the current step, exit 143
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                break
        proc.wait()
        process_s = time.perf_counter() - t0
    records = read_records(metrics)
    cross = first_crossing(records, target.metric, target.value, target.mode)
    side = json.loads((run / SIDECAR).read_text()) if (run / SIDECAR).exists() else {}
    if side.get("metrics_start", t_wall) < t_wall:  # left by an earlier run in a kept directory: not this one
        side = {}
    startup = side["metrics_start"] - t_wall if "metrics_start" in side else None
    seconds = startup + cross["time"] if cross["reached"] and startup is not None else None
    if ended is None:
        ended = "target" if cross["reached"] else ("epochs" if proc.returncode == 0 else f"failed (exit {proc.returncode})")
    if cross["reached"] and seconds is not None and seconds > max_seconds:  # crossed past the budget, seen late
        cross["reached"], seconds, ended = False, None, "max-seconds"
    val = [r for r in records if r.get("split") == "val"]
    row = {"target": target.name, "model": model, "seed": seed, "reached": bool(cross["reached"] and seconds is not None),
           "seconds": round(seconds, 2) if seconds is not None else None, "epoch": cross["epoch"],
           "value": cross["value"], "best": cross["best"], "best_epoch": cross["best_epoch"],
           "epochs_run": max((r.get("epoch", 0) for r in val), default=0), "ended": ended,
           "startup_s": round(startup, 2) if startup is not None else None, "process_s": round(process_s, 2),
           "epoch_times": [r.get("epoch_time") for r in val], "load_during": loads,
           "threads": side.get("threads"), "mixed_precision": side.get("mixed_precision"), "params": side.get("params"),
           "returncode": proc.returncode, "log": str(log_path)}
    if row["ended"].startswith("failed"):
        row["log_tail"] = log_path.read_text()[-2000:]
        row["error"] = (row["log_tail"].strip().splitlines() or ["(no output)"])[-1]
    return row


# ----------------------------------------------------------------------------- the benchmark
def parse_targets(spec: str) -> list[Target]:
    """``dancers,flow`` or ``dancers@0.8``: default targets by name, ``@value`` another target value."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, value = item.partition("@")
        if name not in TARGETS:
            raise SystemExit(f"--targets: unknown target {name!r}; accepted: {', '.join(TARGETS)} (optionally "
                             f"NAME@VALUE, e.g. dancers@0.8)")
        t = TARGETS[name]
        if value:
            try:
                t = replace(t, value=float(value))
            except ValueError:
                raise SystemExit(f"--targets: {item!r}: the value after @ must be a number") from None
        out.append(t)
    return out


def overrides_for(target: Target, sets: list[str]) -> list[str]:
    """The ``--set`` overrides of ``target``: ``KEY=VALUE`` for every target, ``NAME:KEY=VALUE`` for ``NAME`` only."""
    out = []
    for item in sets:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head and head in TARGETS:
            if head == target.name:
                out.append(rest)
        else:
            out.append(item)
    return out


def bench(targets: list[Target], seeds: list[int], models: list[str], work: Path, max_seconds: float | None,
          extra: list[str] = (), poll_s: float = 0.25) -> dict:
    """Every run of every target, round-robin over seeds; ``{"targets": [...], "runs": [...], "skipped": {...}}``."""
    out, runs, skipped = [], [], {}
    for t in targets:
        root = None
        if t.data:
            root = data_folder(t.data)
            if root is None:
                skipped[t.label] = (f"data folder {t.data} not found at ../shared/data/{t.data} or "
                                    f"/work/shared/data/{t.data} (never copied into the project)")
                continue
        names = ["ours"] if "ours" in models else []
        for p in t.peers:
            if p in models:
                why = common.peer_available(p)
                if why:
                    skipped[f"{t.label}, {p}"] = why
                else:
                    names.append(p)
        budget = max_seconds if max_seconds is not None else t.max_seconds
        rows: dict[str, list[dict]] = {m: [] for m in names}
        for seed in seeds:
            for m in names:
                row = run_one(t, m, seed, work, budget, overrides_for(t, extra), poll_s, root)
                print(json.dumps({k: row[k] for k in ("target", "model", "seed", "reached", "seconds", "epoch",
                                                     "best", "ended", "startup_s", "load_during")}), flush=True)
                rows[m].append(row)
                runs.append(row)
        for m in names:
            rs = rows[m]
            med = median_seconds(rs)
            out.append({"target": t.label, "model": m, "budget_s": budget,
                        "reached": f"{sum(r['reached'] for r in rs)}/{len(rs)}",
                        "median_s": round(med, 1) if med is not None else None,
                        "seconds": ", ".join("-" if r["seconds"] is None or not r["reached"] else f"{r['seconds']:.1f}"
                                             for r in rs),
                        "ended": ", ".join(r["ended"] for r in rs),
                        "epochs": ", ".join(str(r["epoch"]) if r["reached"] else f"- ({r['epochs_run']})" for r in rs),
                        "best_not_reached": ", ".join(f"{r['best']:.4g}" for r in rs
                                                      if not r["reached"] and r["best"] is not None) or None,
                        "startup_s": round(statistics.median(r["startup_s"] for r in rs), 1)
                        if all(r["startup_s"] is not None for r in rs) else None,
                        "params_m": round(rs[0]["params"] / 1e6, 2) if rs[0]["params"] else None})
    return {"summary": out, "runs": runs, "skipped": skipped,
            "targets": {t.label: asdict(t) for t in targets}}


COLUMNS = [("target", "target", "s"), ("model", "model", "s"), ("params_m", "params (M)", ""),
           ("reached", "seeds reached", "s"), ("median_s", "median s to target", ""),
           ("seconds", "s per seed", "s"), ("epochs", "epoch of crossing per seed (- (epochs run))", "s"),
           ("best_not_reached", "best value, not reached", "s"), ("ended", "run ended by", "s"), ("startup_s", "start-up s (median)", ""),
           ("budget_s", "budget s", "")]


def markdown(res: dict) -> str:
    m, load = res["machine"], res["load"]
    during = [x for r in res["runs"] for x in r["load_during"]]
    lines = [f"Command: `{res['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, accelerate {m['accelerate']}, bf16 "
             f"kernels: {m['mkldnn_bf16']}, AMX: {m['amx']}; torch threads per run: "
             f"{sorted({r['threads'] for r in res['runs'] if r['threads'] is not None}) or '-'} "
             "(train.threads; 0 = the cores other processes leave free).",
             f"Load (1-min avg): {load.get('load_before')} before (waited {load.get('waited_s')} s); during the runs "
             + (f"{min(during)}-{max(during)} (median {statistics.median(during):.2f})" if during else "-") + ".", "",
             "Seconds from process start (interpreter, imports, data rendering, model build all count) to the log "
             "time of the first validation epoch that reaches the target; median over seeds with a seed that did "
             "not reach it counted as infinite (so a median needs more than half of the seeds). Each run stops at "
             "the target (train.stop_at) or at its budget.", ""]
    lines.append(common.md_table(res["summary"], COLUMNS))
    lines += [""] + [f"- skipped {k}: {v}" for k, v in res["skipped"].items()]
    lines += [f"- FAILED {r['target']} {r['model']} seed {r['seed']}: {r['error']}" for r in res["runs"] if "error" in r]
    lines += ["", "Targets:"] + [f"- {k}: {v['why']}" for k, v in res["targets"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma list of {', '.join(TARGETS)}; NAME@VALUE for another target value")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (median over them)")
    p.add_argument("--models", default="ours," + ",".join(sorted({x for t in TARGETS.values() for x in t.peers})),
                   help="ours and/or peers (smp_unet_r18: segmentation targets only)")
    p.add_argument("--max-seconds", type=float, help="budget of one run from process start (default: per "
                   "target: " + ", ".join(f"{t.name} {t.max_seconds:g}" for t in TARGETS.values()) + ")")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable), e.g. train.threads=2; NAME:KEY=VALUE for "
                        "one target's runs, e.g. flow:train.fid_samples=128")
    p.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-min load is below this")
    p.add_argument("--no-wait", action="store_true", help="start at once whatever the load")
    p.add_argument("--poll", type=float, default=0.25, help="seconds between reads of a run's metrics.jsonl")
    p.add_argument("--keep-runs", metavar="DIR", help="train under DIR and keep the runs (default: a temp dir, removed)")
    p.add_argument("--out", default="time_to_target", help="results stem under bench/results/")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        from sandbox.engine.stops import RunStopped
        from sandbox.errors import SandboxError

        try:
            return child(json.loads(args.child))
        except SandboxError as exc:  # one line in the run's log, as the commands print it
            raise SystemExit(f"error: {exc}") from None
        except RunStopped as exc:  # --max-seconds: SIGTERM, checkpoints/last saved
            raise SystemExit(exc.exit_code) from None
    targets = parse_targets(args.targets)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: got {args.seeds!r}, expected a comma list of integers")
    if not seeds:
        p.error("--seeds: give at least one seed")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m != "ours" and m not in PEERS]
    if bad:
        p.error(f"--models: unknown {bad}; accepted: ours, {', '.join(PEERS)}")
    quiet = {"load_before": round(common.load1(), 2), "waited_s": 0.0} if args.no_wait \
        else common.wait_for_quiet(args.max_load)
    work = Path(args.keep_runs).resolve() if args.keep_runs else Path(tempfile.mkdtemp(prefix="time_to_target_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        res = bench(targets, seeds, models, work, args.max_seconds, args.set, args.poll)
    finally:
        if not args.keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    res.update(command="python bench/" + " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
               machine={**common.machine_info(), "torch_threads": "per run, see runs[].threads"}, load=quiet,
               seeds=seeds)
    md = markdown(res)
    j, m = common.write_results(args.out, res, md)
    print(md)
    print(f"\nwrote {j} and {m}")


if __name__ == "__main__":
    main()
