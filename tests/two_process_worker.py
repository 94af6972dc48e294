"""Run by tests/test_reliability.py under ``accelerate launch --num_processes 2`` (gloo, CPU): the
collectives of the trainers without a DDP wrapper (GAN, AAE), then one epoch of the given run.
Each process writes what it saw to ``<out>/rank<i>.json``. Not collected by pytest."""
import json
import sys

import torch

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from sandbox.trainers.processes import all_processes, check_replicas, replicated


def main(out: str, overrides: list[str]) -> None:
    trainer = build_trainer(load_config(None, overrides))
    rank, m = trainer.accelerator.process_index, trainer.unwrapped
    report = {"ddp": trainer.ddp}
    t = torch.full((3,), float(rank + 1))
    all_processes([t], "mean")
    report["mean"] = t.tolist()
    report["draw"] = trainer.shard_draw(lambda n: torch.arange(n), 2).tolist()
    acc = trainer.accelerator
    report["same_start"] = check_replicas(acc, m, trainer.kind, 0) is None  # weights were broadcast at start
    with torch.no_grad():  # one process's weights drift: the epoch-end check must stop every process
        next(m.parameters()).add_(1e-3 * rank)
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
