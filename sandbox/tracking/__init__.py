"""Tracking: the run's metrics.jsonl (:mod:`.metrics_log`) and W&B (:mod:`.wandb_run`)."""
