"""Tracking: the run's metrics.jsonl (:mod:`.metrics_log`), the Accelerate trackers (:mod:`.trackers`: W&B,
TensorBoard) and W&B's run, summaries and media (:mod:`.wandb_run`)."""
