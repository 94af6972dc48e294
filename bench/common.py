"""Shared pieces of the benchmarks: machine info, load check, matmul peaks, models, the
training step, FLOP counting, timing and result files. Not part of the test suite.

The training step is the sandbox trainer's (``Trainer.train_step``: ``model.loss`` +
``Trainer.backward_and_step``) without the run-directory plumbing: forward (under bf16
autocast when asked), outputs cast to fp32, Dice + 0.5 BCE from ``sandbox.losses``, backward,
gradient clipping at 1.0, AdamW step, ``zero_grad(set_to_none=True)``. bf16 is
``torch.autocast(<device>, dtype=torch.bfloat16)`` around the forward only: exactly the context
manager Accelerate's ``prepare``-wrapped forward enters for ``mixed_precision="bf16"`` (CPU or CUDA)
(``accelerate.utils.get_mixed_precision_context_manager``), followed, like Accelerate, by
casting the outputs to fp32 before the loss.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/X.py` from anywhere
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

OURS = ("simpleconv", "hourglass", "unet")
PEERS = ("smp_unet_r18", "monai_basicunet")
MODES = ("fp32", "fp32+cl", "bf16", "bf16+cl", "bf16+cl+compile", "fp32+cl+compile")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(n: int = 0) -> int:
    """``torch.set_num_threads(n or cores)``; returns the count used."""
    n = n or cores()
    torch.set_num_threads(n)
    return n


def device_of(name: str) -> torch.device:
    """``--device`` as a torch device; CUDA asked for but absent is an error, not a silent CPU run.
    On CUDA cuDNN picks its algorithms once per shape (``cudnn.benchmark``, as the trainer does)."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: accepted: cpu, cuda, cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise SystemExit(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s): cuda:0..")
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        # torch runs fp32 convolutions in TF32 by default (cudnn.allow_tf32) but fp32 matmuls not:
        # measure the fp32 peak the way the step's convolutions run, or fp32 MFU would pass 100 %
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    return dev


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float = 1.5, max_wait_s: float = 1200, poll_s: float = 60) -> dict:
    """Sleep until the 1-minute load average is <= ``max_load`` (other jobs share the cores), at
    most ``max_wait_s``; returns ``{"load_before": ..., "waited_s": ...}`` for the results."""
    t0 = time.time()
    while load1() > max_load and time.time() - t0 < max_wait_s:
        print(f"load {load1():.2f} > {max_load}: waiting {poll_s:.0f} s", flush=True)
        time.sleep(poll_s)
    return {"load_before": round(load1(), 2), "waited_s": round(time.time() - t0, 1)}


def machine_info() -> dict:
    import accelerate

    model = platform.processor()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return {"cpu": model, "cores": cores(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "accelerate": accelerate.__version__, "python": platform.python_version(),
            "mkldnn_bf16": bf16, "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags,
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "tf32": torch.backends.cudnn.allow_tf32 if torch.cuda.is_available() else None, "load_avg": [round(v, 2) for v in os.getloadavg()]}


class Timer:
    """Wall seconds and "owned" seconds of a block: process CPU seconds / torch threads, an
    estimate of the wall time with the cores to ourselves. Other jobs on the cores stretch wall
    time more than CPU time, though not zero: a descheduled OpenMP thread leaves its sibling
    spinning at a barrier, burning CPU without work. On a quiet machine the two agree (torch's
    OpenMP threads spin while waiting, so a busy process burns both cores).
    On CUDA the block is bracketed by ``torch.cuda.synchronize`` and owned = wall (the host's CPU
    time says nothing about the GPU's)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def __enter__(self):
        sync(self.device)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall = time.perf_counter() - self.t0
        self.owned = self.wall if self.device.type == "cuda" else \
            (time.process_time() - self.c0) / torch.get_num_threads()


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 0, reps: int = 12,
                device: torch.device | str = "cpu") -> tuple[float, float]:
    """``(wall, owned)`` median GFLOP/s of ``torch.mm`` on two ``(n, n)`` matrices (2 n^3 FLOPs) in
    ``dtype`` (owned: see :class:`Timer`); n defaults to 2048 on CPU, 8192 on a GPU (where 2048 is
    too small to fill it). fp32 on CUDA uses TF32 like the step's convolutions (see :func:`device_of`)."""
    n = n or (8192 if torch.device(device).type == "cuda" else 2048)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))  # a CPU generator
    for _ in range(2):
        torch.mm(a, b)
    walls, owned = [], []
    for _ in range(reps):
        with Timer(device) as t:
            torch.mm(a, b)
        walls.append(t.wall)
        owned.append(t.owned)
    return 2 * n**3 / statistics.median(walls) / 1e9, 2 * n**3 / statistics.median(owned) / 1e9


# ----------------------------------------------------------------------------- models
def peer_available(name: str) -> str | None:
    """None when the peer can be built, else why not (install the `bench` extra)."""
    mod = {"smp_unet_r18": "segmentation_models_pytorch", "monai_basicunet": "monai"}[name]
    try:
        __import__(mod)
    except ImportError as exc:
        return f"{mod} not installed ({exc.__class__.__name__}); pip install -e '.[bench]'"
    return None


def build(name: str, width: int = 16, depth: int = 3) -> nn.Module:
    """A benchmark model with one output channel: ours (``MODELS[name](width, depth)``) or a peer."""
    torch.manual_seed(0)
    if name == "smp_unet_r18":
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=1)
    if name == "monai_basicunet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)  # features (32, 32, 64, 128, 256, 32)
    from sandbox.models import MODELS

    return MODELS[name](width=width, depth=depth)


def as_dict(out) -> dict[str, torch.Tensor]:
    return out if isinstance(out, dict) else {"mask": out}


def batch_for(size: int, batch: int = 16, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A random image batch ``(B, 3, S, S)`` in [0, 1] and a binary mask ``(B, 1, S, S)``."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(batch, 3, size, size, generator=g).to(device),
            "mask": (torch.rand(batch, 1, size, size, generator=g) > 0.7).float().to(device)}


def make_step(model: nn.Module, mode: str, clip: float = 1.0,
              device: torch.device | str = "cpu") -> Callable[[dict], torch.Tensor]:
    """``step(batch) -> loss`` for ``mode`` in :data:`MODES` (see the module docstring) on
    ``device``; a batch from a CPU loader is copied over first (``non_blocking``: pinned memory)."""
    from sandbox.engine.optim import make_optimizer
    from sandbox.losses import build_loss

    device = torch.device(device)
    cl, bf16 = "cl" in mode.split("+"), mode.startswith("bf16")
    model.to(device).train()
    if cl:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if "compile" in mode else model
    loss_fn = build_loss({"mask": {"dice": 1.0, "bce": 0.5}})
    opt = make_optimizer(model.parameters(), "adamw", lr=1e-3, weight_decay=1e-4)  # the trainer's factory

    def step(batch: dict) -> torch.Tensor:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        x = batch["image"].contiguous(memory_format=torch.channels_last) if cl else batch["image"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = as_dict(fwd(x))
        out = {k: v.float() for k, v in out.items()}
        total, _ = loss_fn(out, batch)
        total.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total.detach()

    return step


def step_flops(name: str, width: int, size: int, batch: int = 16,
               device: torch.device | str = "cpu") -> tuple[int, int]:
    """``(forward FLOPs, forward + backward FLOPs)`` of one fp32 training step on ``batch`` images,
    counted by ``torch.utils.flop_counter.FlopCounterMode`` on a fresh model (2 FLOPs per
    multiply-add of convs and matmuls; element-wise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(name, width).to(device).train()
    data = batch_for(size, batch, device=device)
    with FlopCounterMode(display=False) as fwd_counter:
        out = as_dict(model(data["image"]))
    with FlopCounterMode(display=False) as bwd_counter:
        sum(v.float().mean() for v in out.values()).backward()
    f, b = int(fwd_counter.get_total_flops()), int(bwd_counter.get_total_flops())
    return f, f + b


def md_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table from ``rows`` with ``columns = [(key, header, format), ...]``."""
    out = ["| " + " | ".join(h for _, h, _ in columns) + " |",
           "|" + "|".join("---" if f == "s" else "---:" for _, _, f in columns) + "|"]
    for r in rows:
        cells = []
        for k, _, f in columns:
            v = r.get(k)
            cells.append("" if v is None else (str(v) if f == "s" else format(v, f)))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_results(stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """``bench/results/<stem>.json`` and ``.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    j, m = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    j.write_text(json.dumps(payload, indent=1) + "\n")
    m.write_text(markdown + "\n")
    return j, m
