"""Batches for training and evaluation: a resumable shuffle, the collate function and the loader.

The shuffle is a pure function of ``(seed, epoch)``: the same on every process, and resumable at
any batch (see DESIGN field notes: a seedable sampler + ``set_epoch`` + an explicitly seeded
generator were what made mid-epoch resume exact).
"""
from __future__ import annotations

import atexit
import signal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffle(Sampler):
    """A permutation that is a pure function of ``(seed, epoch)``: resumable and identical on every process.

    With ``keys=True`` it yields ``(epoch, index)`` so that a dataset can derive its
    augmentation randomness from (seed, epoch, index) alone (exact resume, any worker count).
    """

    def __init__(self, n: int, seed: int, keys: bool = False):
        self.n, self.seed, self.epoch, self.keys = n, seed, 0, keys

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        return iter([(self.epoch, i) for i in order] if self.keys else order)

    def __len__(self) -> int:
        return self.n


def collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return out


def _worker_ignores_sigterm(worker_id: int) -> None:
    """A DataLoader worker ignores SIGTERM: a scheduler (Slurm) signals every process of the job, and a
    worker ended by it would stop the main process in torch's "worker killed" error before the main
    process (which handles the signal: save, then exit 143) could save. Workers still end: on the
    loader's shutdown sentinel, at exit (:func:`_stop_workers_at_exit`), or by torch's watchdog
    when the main process is gone. (Telling the parent's SIGTERM apart by its sender, as torch's own
    handler does, cannot be done from Python for every thread of the worker.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop_workers_at_exit() -> None:
    """At interpreter exit, before multiprocessing's own clean-up (which ends daemon processes with
    SIGTERM, ignored by our workers, and then waits for them for ever): shut down the DataLoader
    iterators an error or a stop left open as torch does, and SIGKILL a worker still alive after that
    (a stuck one: the SIGTERM torch would send is ignored). Workers only read data. The iterators are found by type: Accelerate rebuilds the
    loaders we make, so no reference kept here would reach them."""
    import gc

    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    for obj in gc.get_objects():
        if type(obj) is _MultiProcessingDataLoaderIter:  # type(), not isinstance: no proxy object is asked
            try:
                obj._shutdown_workers()  # torch's own: sentinel, join, forget the pids (no SIGCHLD error)
            finally:
                for w in getattr(obj, "_workers", []):
                    if w.is_alive():
                        w.kill()


def make_loader(ds: Dataset, batch_size: int, seed: int, train: bool, num_workers: int = 0) -> DataLoader:
    """The trainer's loader: ``train`` shuffles with :class:`EpochShuffle` (yielding ``(epoch, index)``
    keys for datasets with ``epoch_keys``, whose augmentation derives from them) and drops a last
    partial batch; evaluation keeps the order and every sample."""
    keys = bool(getattr(ds, "epoch_keys", False))
    loader = DataLoader(ds, batch_size=batch_size,
                        sampler=EpochShuffle(len(ds), seed, keys) if train else None,
                        # its own generator: each new iterator draws a base seed, which must not
                        # come from the global RNG (a resumed run creates one more iterator)
                        generator=torch.Generator().manual_seed(seed),
                        shuffle=False, num_workers=num_workers, collate_fn=collate,
                        worker_init_fn=_worker_ignores_sigterm if num_workers > 0 else None,
                        drop_last=train and len(ds) > batch_size,
                        pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
    if num_workers > 0:  # registered after multiprocessing's exit hook, so it runs first (once)
        import multiprocessing.util  # noqa: F401  (its hook is registered on import, which may not have happened)

        atexit.unregister(_stop_workers_at_exit)
        atexit.register(_stop_workers_at_exit)
    return loader


def size_at(size: int, schedule: dict[int, int] | None, epoch: int) -> int:
    """The side at ``epoch`` (from 0) under progressive resizing ``{epoch: size}``: the entry with the
    last key <= epoch, else ``size``."""
    if not schedule:
        return size
    keys = [k for k in sorted(schedule) if k <= epoch]
    return schedule[keys[-1]] if keys else size


def resize_batch(batch: dict, size: int) -> dict:
    """Image-like tensors ``(B, C, H, W)`` of ``batch`` at ``size x size``: masks and class maps (every
    target but image and depth: labels stay labels) nearest, image and depth bilinear (antialiased);
    everything else as it is."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[-1] != size:
            if k not in ("image", "depth"):
                v = torch.nn.functional.interpolate(v, size=(size, size), mode="nearest")
            else:
                v = torch.nn.functional.interpolate(v, size=(size, size), mode="bilinear",
                                                    align_corners=False, antialias=True)
        out[k] = v
    return out
