"""What the training skeleton does when it runs as several processes (``accelerate launch``).

* :func:`create_run_dir`: the main process creates the run directory and every process checks
  that it sees it (a checkpoint holds each process's RNG state, so with several machines
  ``out_dir`` must be on a filesystem they all mount); an error on any process stops them all.
* Data parallelism without a DDP wrapper, for trainers that step optimizers on sub-modules called
  outside the model's forward (GAN, AAE; ``Trainer.ddp = False``): :func:`all_processes` (one flat
  all-reduce mean or broadcast), :func:`check_data_parallel`, :func:`replicated`,
  :func:`sync_statistics` (running statistics averaged) and :func:`check_replicas` (every
  process holds process 0's weights).
"""
from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

from sandbox.errors import SandboxError
from sandbox.runs.lock import RunLock
from sandbox.runs.rundir import RunDir


def sees(marker: Path, token: str, patience_s: float = 5.0) -> bool:
    """Whether ``marker`` holds ``token``; retried for a few seconds, since a network filesystem's
    attribute cache can hide a file another machine has just written."""
    deadline = time.time() + patience_s
    while True:
        try:
            if marker.read_text() == token:
                return True
        except OSError:
            pass
        if time.time() >= deadline:
            return False
        time.sleep(0.5)


def create_run_dir(acc: Accelerator, run: RunDir, resume: bool) -> RunLock | None:
    """The main process creates (or, resuming, reuses) the run directory. With several processes
    every one must also see it: a checkpoint holds each process's RNG state (written by that
    process) and a resume reads them all, so on several machines out_dir must be on a filesystem
    they all mount. A failure on any process stops every process with the same message, so none
    is left waiting in a collective (one node's error would otherwise hang the others). The main
    process takes the run's writer lock (one writer per run) and returns it; the others get None."""
    many = acc.num_processes > 1
    token, problem, lock = uuid.uuid4().hex, None, None
    marker = run.path / ".shared_check"
    if acc.is_main_process:
        try:
            if resume or not run.exists():  # a run being written may not be touched: the lock first
                lock = RunLock(run.path) if run.path.is_dir() else None
                if lock is not None:
                    lock.acquire()
            run.create(resume=resume)
            if lock is None:
                lock = RunLock(run.path)
                lock.acquire()
            if many:
                marker.write_text(token)
        except (SandboxError, OSError) as exc:
            if lock is not None:
                lock.release()
            problem = str(exc)
    if not many:
        if problem:
            raise SandboxError(problem)
        return lock
    from accelerate.utils import broadcast_object_list, gather_object

    box = [token, problem]
    broadcast_object_list(box)  # the main process's token and error (also the barrier)
    token, problem = box
    seen = problem is None and sees(marker, token)
    views = gather_object([(acc.process_index, socket.gethostname(), seen)])  # every process gets all
    if acc.is_main_process:
        marker.unlink(missing_ok=True)
    if problem:
        raise SandboxError(problem)
    blind = [f"{rank} on {host}" for rank, host, ok in views if not ok]
    if blind:
        if lock is not None:
            lock.release()
        if acc.is_main_process and not resume:  # leave no empty run behind
            run.discard_if_empty()
        raise SandboxError(
            f"run directory {str(run.path)!r} is not shared: process {', '.join(blind)} "
            f"(of {acc.num_processes}) cannot see what the main process wrote there. Every process "
            f"writes its RNG state into the checkpoints and a resume reads them all: with several "
            f"machines set out_dir= to a filesystem all of them mount (e.g. out_dir=/shared/$USER/runs)")
    return lock


# ----------------------------------------------------------------------------- data parallel without DDP

def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


def all_processes(tensors: list[torch.Tensor], how: str) -> None:
    """In place on every process, through one flat buffer: ``mean`` (all-reduce) or ``broadcast``
    (process 0's values). The tensors must be the same list (shapes, dtypes) on every process."""
    if not tensors:
        return
    with torch.no_grad():
        flat = _flat(tensors)
        if how == "mean":
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
        else:
            dist.broadcast(flat, 0)
        _unflat(flat, tensors)


def check_data_parallel(acc: Accelerator, kind: str) -> None:
    dist_type = acc.distributed_type
    if dist_type.name != "NO" and not dist_type.name.startswith("MULTI_"):
        raise SandboxError(f"the {kind} trainer steps optimizers on sub-modules and runs data-parallel "
                           f"(one process per device, launched with --multi_gpu / --num_processes), not under "
                           f"{dist_type.name}; launch it without that accelerate config")


def _float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


def replicated(model: torch.nn.Module) -> list[torch.Tensor]:
    """What every process holds a copy of: parameters and floating-point buffers."""
    return [*model.parameters(), *_float_buffers(model)]


def sync_statistics(model: torch.nn.Module) -> None:
    """Running statistics (BatchNorm's, the autoencoders' code mean and variance) come from each
    process's own batches: every process gets their mean. Buffers that are equal on all processes
    (constants such as a mixture prior's means) are left as they are: a sum divided by P is not
    always exact, and they would drift by an ulp per sync."""
    bufs = _float_buffers(model)
    if not bufs:
        return
    with torch.no_grad():
        flat = _flat(bufs)
        total, spread = flat.clone(), torch.stack([flat, -flat])
        dist.all_reduce(total)
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)  # the largest and minus the smallest value
        _unflat(torch.where(spread[0] == -spread[1], flat, total / dist.get_world_size()), bufs)


def check_replicas(acc: Accelerator, model: torch.nn.Module, kind: str, epoch: int) -> None:
    """Every process must hold process 0's weights (identical averaged updates keep them equal); a
    difference stops the run instead of evaluating, and saving, one process's model as if it were all of them."""
    with torch.no_grad():
        mine = _flat(list(model.parameters()))
        ref = mine.clone()
        dist.broadcast(ref, 0)
        diff = torch.stack([(mine - ref).abs().max(), ref.abs().max()])
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    if diff[0] > 1e-6 * max(float(diff[1]), 1.0):
        raise SandboxError(f"after epoch {epoch + 1} the {acc.num_processes} processes hold different weights "
                           f"(largest difference {float(diff[0]):.3g}): the {kind} trainer's gradient "
                           f"averaging did not keep them in sync")
