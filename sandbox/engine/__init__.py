"""The training engine, in parts that work alone:

    runtime.py      Accelerator, mixed precision, CPU threads
    optim.py        optimizers and LR schedules (sized in optimizer steps of one process)
    checkpoint.py   save / load / resume end to end, with the checks a resume must pass
    distributed.py  the shared run directory check and data parallelism without DDP
    console.py      the banner and the per-epoch line
    loop.py         the epoch/step loop, logging, best and last
    trainer.py      Trainer: the skeleton the trainers in sandbox/trainers fill in
"""
