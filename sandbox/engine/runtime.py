"""The process a run trains in: the Accelerator, mixed precision, CPU threads and the seed.

Usable alone: ``make_accelerator("auto", grad_accum=1)`` gives what a trainer would run on.
"""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator


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


def set_threads(acc: Accelerator, threads: int) -> int:
    """CPU runs: ``threads`` torch threads, or for 0 the cores divided by the processes on this machine
    (``accelerate launch`` pins a single process to ONE thread otherwise). Returns the count."""
    if acc.device.type != "cpu":
        return torch.get_num_threads()
    if threads == 0:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        # processes on THIS machine (torchrun sets LOCAL_WORLD_SIZE; with several machines
        # num_processes counts them all)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        threads = max(1, cores // max(1, local))
    torch.set_num_threads(threads)
    return threads
