"""Runs on disk: the run directory, its checkpoints, loading a trained run and inference with it.

    rundir.py       RunDir (layout, create, discard_if_empty), write_atomic
    checkpoints.py  complete checkpoints, which to resume from, the atomic commit
    load.py         load_run (the one loader), run_config, load_weights, checkpoint_dir
    inference.py    forward, evaluate_dataset, predict_maps
    warm.py         train.init_from: another run's weights into a new run (strict, or the matching tensors)
    stages.py       a staged run's directory: stages.json, each stage's status, the final stage (final_run)
"""
