"""The process a run trains in: the Accelerator, mixed precision, CPU threads and the seed.

Usable alone: ``make_accelerator("auto", grad_accum=1)`` gives what a trainer would run on.
"""
from __future__ import annotations

import logging
import os
import time

import torch
from accelerate import Accelerator

log = logging.getLogger("sandbox")


def resolve_mixed_precision(setting: str, cpu: bool) -> str:
    """``auto``: what ``accelerate launch --mixed_precision`` asked for, else bf16 where the device
    has fast bf16 (measured ~1.9x on 2-core CPUs; bench/README.md), else fp32 (``no``)."""
    if setting != "auto":
        return setting
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched in ("fp16", "bf16"):
        return launched
    if cpu or not torch.cuda.is_available():
        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
        except (AttributeError, RuntimeError):
            return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "no"


def on_cpu() -> bool:
    """Whether this process trains on the CPU (``ACCELERATE_USE_CPU`` set, or no CUDA device)."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()


def make_accelerator(mixed_precision: str, grad_accum: int = 1, log_with: str | list | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """An Accelerator for an already resolved precision (``no`` | ``fp16`` | ``bf16``); ``log_with``: its
    trackers (:func:`sandbox.tracking.trackers.log_with`)."""
    acc = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                      log_with=log_with, project_dir=project_dir)
    if acc.device.type == "cuda":  # fixed input sizes: let cuDNN time its algorithms once per shape
        torch.backends.cudnn.benchmark = True
    return acc


def my_cores() -> list[int]:
    """The CPUs this process may run on (its affinity: a cpuset, taskset or a container's share)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def set_threads(acc: Accelerator, threads: int) -> tuple[int, "ThreadGovernor | None"]:
    """CPU runs: ``threads`` torch threads; for 0 the cores divided by the processes on this machine
    (``accelerate launch`` pins a single process to ONE thread otherwise), fewer where other processes keep
    some of those cores busy, and a :class:`ThreadGovernor` that follows them during the run. Returns
    (the count, the governor or None)."""
    if acc.device.type != "cpu":
        return torch.get_num_threads(), None
    governor = None
    if threads == 0:
        # processes on THIS machine (torchrun sets LOCAL_WORLD_SIZE; with several machines
        # num_processes counts them all)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        threads = max(1, len(my_cores()) // max(1, local))
        governor = ThreadGovernor.open(threads)  # its first look: ThreadGovernor.settle, once set-up is done
    torch.set_num_threads(threads)
    return threads, governor


class CpuLoad:
    """How many of this process's cores OTHER processes keep busy, between two calls: the kernel's per-CPU
    busy time (/proc/stat, the CPUs of :func:`my_cores`) minus this process's own CPU time (all its threads).
    Linux only: :meth:`open` returns None elsewhere. Why: torch's OpenMP threads spin while they wait, so a
    run with as many threads as cores beside a busy neighbour loses far more than its share (measured on the
    main job's step, 2 cores, one busy neighbour: 2 threads 2.7x the idle step, 1 thread 1.9x)."""

    def __init__(self, cpus: list[int]):
        self.cpus, self.tick = {f"cpu{c}" for c in cpus}, os.sysconf("SC_CLK_TCK")
        self.last = self._read()

    @classmethod
    def open(cls) -> "CpuLoad | None":
        try:
            return cls(my_cores())
        except (OSError, ValueError, AttributeError):
            return None

    def _read(self) -> tuple[float, float, float]:
        """(busy seconds of the CPUs, wall seconds, own CPU seconds)."""
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name in self.cpus:  # user nice system idle iowait irq softirq steal ...
                    v = [int(x) for x in fields[:8]]
                    busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        return busy / self.tick, time.monotonic(), time.process_time()

    def others(self) -> float:
        """Cores kept busy by other processes since the previous call (0 .. len(cpus))."""
        now = self._read()
        busy, wall, own = (a - b for a, b in zip(now, self.last))
        self.last = now
        return min(len(self.cpus), max(0.0, (busy - own) / wall)) if wall > 0 else 0.0


class ThreadGovernor:
    """A CPU run's torch threads (``train.threads: 0``) follow the cores other processes leave free: at most
    ``most`` (the run's share of its cores), at least 1, ``round(cores - others)`` in between. Checked every
    ``every`` seconds from the training loop (:meth:`tick`); a change needs two checks that agree, so a
    passing burst does not flap it. ``train.threads: N`` fixes the count instead."""

    every = 10.0

    def __init__(self, load: CpuLoad, most: int):
        self.load, self.most, self.threads = load, most, most
        self.checked, self.pending = time.monotonic(), None

    @classmethod
    def open(cls, most: int) -> "ThreadGovernor | None":
        """A governor starting at ``most`` threads (None where the load cannot be read: the count stays)."""
        load = CpuLoad.open()
        return None if load is None else cls(load, most)

    def settle(self, window: float = 0.2) -> int:
        """The first count, from the machine since :meth:`open` (the run's set-up in between: its own CPU time
        is not counted), at least ``window`` seconds of it; set and returned."""
        waited = time.monotonic() - self.load.last[1]
        if waited < window:
            time.sleep(window - waited)
        self.threads = self.wanted(self.load.others())
        self.checked = time.monotonic()
        torch.set_num_threads(self.threads)
        return self.threads

    def wanted(self, others: float) -> int:
        return max(1, min(self.most, round(len(self.load.cpus) - others)))

    def tick(self) -> str | None:
        """Called every step; every ``every`` seconds it looks at the machine and, where two looks in a row
        want another count, sets it and returns the line to log (else None)."""
        if time.monotonic() - self.checked < self.every:
            return None
        self.checked = time.monotonic()
        others = self.load.others()
        want = self.wanted(others)
        if want == self.threads or want != self.pending:
            self.pending = want if want != self.threads else None
            return None
        old, self.threads, self.pending = self.threads, want, None
        torch.set_num_threads(want)
        return (f"torch threads {old} -> {want}: other processes keep {others:.1f} of this run's "
                f"{len(self.load.cpus)} cores busy (train.threads=N fixes the count)")
