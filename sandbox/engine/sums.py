"""Running sums of the scalars a training step returns, kept on the device between log lines (no
per-step host sync), and their means over every process."""
from __future__ import annotations

import torch


class RunningSums:
    """``add(scalars)`` once per batch; ``means(accelerator)``: ``{"train/<key>": sum / batches}`` over every
    process. A key missing from some batches (the GAN's generator losses off its ``n_critic`` batches) is
    still divided by every batch."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0, device=None):
        self.sums = {k: torch.tensor(v, device=device) for k, v in (sums or {}).items()}
        self.count = count

    def add(self, scalars: dict[str, torch.Tensor]) -> None:
        for k, v in scalars.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def __bool__(self) -> bool:
        return bool(self.sums)

    def saved(self) -> tuple[dict[str, float], int]:
        """``(sums as floats, batches)``: what a mid-epoch checkpoint keeps."""
        return {k: float(v) for k, v in self.sums.items()}, self.count

    def means(self, accelerator) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] for k in keys]) / max(self.count, 1)
        vec = accelerator.reduce(vec, reduction="mean")
        return {f"train/{k}": float(v) for k, v in zip(keys, vec.tolist())}
