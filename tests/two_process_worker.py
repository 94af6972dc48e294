"""Run by tests/test_reliability.py under ``accelerate launch --num_processes 2`` (gloo, CPU): the
collectives of the trainers without a DDP wrapper (GAN, AAE), then one epoch of the given run.
Each process writes what it saw to ``<out>/rank<i>.json``. Not collected by pytest."""
import json
import os
import sys

import torch

from sandbox import load_config
from sandbox.build import build_data, build_loss, build_model
from sandbox.errors import SandboxError
from sandbox.models import MODELS
from sandbox.trainers import TRAINERS
from sandbox.engine.distributed import all_processes, check_replicas, replicated, sync_statistics


def main(out: str, overrides: list[str]) -> None:
    cfg = load_config(None, overrides)
    model = build_model(cfg)
    first = next(model.parameters())
    if os.environ.get("RANK") == "1":  # built from the same seed; the broadcast at start must undo this
        with torch.no_grad():
            first.add_(1.0)
    trainer = TRAINERS[MODELS[cfg.model.name].trainer](cfg, model, build_data(cfg, ("train", "val")),
                                                       loss=build_loss(cfg))
    acc, m = trainer.accelerator, trainer.unwrapped
    rank = acc.process_index
    report = {"ddp": trainer.ddp, "first": float(first.double().sum())}
    t = torch.full((3,), float(rank + 1))
    all_processes([t], "mean")
    report["mean"] = t.tolist()
    report["draw"] = trainer.shard_draw(lambda n: torch.arange(n), 2).tolist()
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm))
    saved = [b.clone() for b in m.buffers()]
    bn.running_mean.fill_(rank + 1.0)  # as if each process had seen other batches
    sync_statistics(m)
    report["running_mean"] = bn.running_mean.unique().tolist()
    for b, v in zip(m.buffers(), saved):
        b.copy_(v)
    with torch.no_grad():  # one process's weights drift: the epoch-end check must stop every process
        first.add_(1e-3 * rank)
    try:
        check_replicas(acc, m, trainer.kind, 0)
        report["drift"] = "not detected"
    except SandboxError as exc:
        report["drift"] = str(exc)
    all_processes(replicated(m), "broadcast")
    trainer.fit()
    report["params"] = [float(p.double().sum()) for p in m.parameters()]
    report["buffers"] = {k: float(b.double().sum()) for k, b in m.named_buffers() if b.is_floating_point()}
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
