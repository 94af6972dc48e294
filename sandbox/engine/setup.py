"""What a trainer sets up before its first step: the sharded loaders, the model and its optimizers placed
and wrapped (DDP, or the replicas of ``ddp = False`` trainers), the split lists of folder data, and the
banner the run prints at its start."""
from __future__ import annotations

import logging

import torch

from sandbox.config import Config
from sandbox.data.loader import make_loader
from sandbox.engine import distributed
from sandbox.engine.console import banner

log = logging.getLogger("sandbox")


def make_loaders(acc, cfg: Config, datasets: dict):
    """``(train, val or None)`` loaders, sharded across processes first (an epoch is counted in THIS
    process's batches)."""
    d = cfg.data
    train = acc.prepare(make_loader(datasets["train"], d.batch_size, cfg.seed, True, d.num_workers))
    val = acc.prepare(make_loader(datasets["val"], d.batch_size, cfg.seed, False, d.num_workers)) \
        if len(datasets.get("val", [])) else None
    return train, val


def shape_model(acc, cfg: Config, model: torch.nn.Module, ddp: bool, kind: str) -> torch.nn.Module:
    """SyncBatchNorm (several GPUs, ``train.sync_bn``), channels_last and ``torch.compile`` as configured,
    before the optimizers are made."""
    t = cfg.train
    if t.sync_bn and acc.num_processes > 1 and acc.device.type == "cuda":  # SyncBatchNorm is GPU-only
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        model = torch.compile(model)
        if not ddp:
            log.warning("train.compile: the %s trainer calls its sub-modules directly, mostly outside the "
                        "compiled forward, so compiling does little or nothing for it", kind)
    return model


def place(acc, model: torch.nn.Module, optimizers: list, ddp: bool, kind: str):
    """``(model, optimizers)`` placed by Accelerate: DDP-wrapped for ``ddp`` trainers; else placed and
    autocast but not wrapped, and with several processes process 0's weights broadcast (as DDP does).
    Schedulers are stepped by the trainer once per optimizer step and saved by engine/checkpoint.py as
    plain state dicts (Accelerate's register_for_checkpointing would pickle them, loaded with code)."""
    if ddp:
        prepared = acc.prepare(model, *[o for o, _ in optimizers])
    else:
        distributed.check_data_parallel(acc, kind)
        prepared = [acc.prepare_model(model, evaluation_mode=True), *[acc.prepare_optimizer(o) for o, _ in optimizers]]
        if acc.num_processes > 1:
            distributed.all_processes(distributed.replicated(model), "broadcast")
    return prepared[0], [(o, s) for o, (_, s) in zip(prepared[1:], optimizers)]


def write_splits(acc, datasets: dict, run, resumed: bool) -> None:
    """Folder data: the file lists of each split go to runs/<name>/splits/ (reusable as data.splits)."""
    from sandbox.data import splits_of
    from sandbox.data.splits import write_splits as write

    lists = splits_of(datasets["train"])
    if lists is None or not acc.is_main_process:
        return
    if run.splits.exists() and resumed:
        return  # the resumed config already points data.splits at them
    write(lists, run.splits)


def threads_said(threads: int, governor) -> str:
    """The banner's thread count, and where it follows the free cores, how many it may grow to."""
    if governor is None:
        return str(threads)
    gov = governor
    busy = (f"; other processes keep {len(gov.load.cpus) - gov.threads} of the {len(gov.load.cpus)} cores busy"
            if gov.threads < gov.most else "")
    return f"{gov.threads} torch threads (at most {gov.most}{busy}; they follow the free cores)"


def say_banner(tr) -> None:
    """The run's first console line (main process): model, device, data, steps, where it writes."""
    acc, cfg = tr.accelerator, tr.cfg
    acc.print(banner(cfg.model.name, sum(p.numel() for p in tr.unwrapped.parameters()), acc.device.type,
                     acc.num_processes, threads_said(tr.threads, tr.governor) if acc.device.type == "cpu" else None,
                     tr.mixed_precision, cfg.train.channels_last, cfg.data.name, len(tr.datasets["train"]),
                     len(tr.datasets.get("val", [])), cfg.data.size, cfg.data.batch_size, cfg.train.epochs,
                     tr.steps_per_epoch, str(tr.run.path)))
