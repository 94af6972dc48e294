"""The training engine, in parts that work alone:

    runtime.py      Accelerator, mixed precision, CPU threads
    optim.py        optimizers and LR schedules (sized in optimizer steps of one process)
    checkpoint.py   save / load / resume end to end, with the checks a resume must pass
    distributed.py  the shared run directory check and data parallelism without DDP
    console.py      the banner and the per-epoch line
    setup.py        loaders, the model and optimizers placed and wrapped, split lists, the banner
    state.py        TrainerState (what checkpoints save), the best epoch, the divergence watch
    sums.py         running sums of the logged scalars
    stops.py        signals, early stopping, what a stop says
    trainer.py      Trainer: fit, the epoch and the step, top to bottom (trainers declare the rest)
"""
