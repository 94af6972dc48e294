"""Analysis: what the commands compute from trained runs and configs (import-free: each module alone).

    measure.py          parameters, FLOPs, bottleneck, receptive field, activation memory (summary.py)
    tables.py           markdown tables of measured rows
    reports.py          runs read back from disk and their statistics (compare, sweeps)
    compare.py          the table, curves and predictions of several runs side by side
    evaluation.py       a trained run scored on a split: its config, the result files, the table
    prediction.py       a trained run on image files: outputs, ground truth, one picture per image
    probe.py            a generative run's samples against noise baselines, the latent probe, score_run
    interpolation.py    lerp, slerp and multi-point paths through a latent space
    lr_find.py          the LR range test on a trainer's own step and its suggestion
    sweep.py            a grid of config values x seeds planned as runs, executed resumably
    sweep_report.py     a sweep's or study's summary.md / report.md, CSVs, plots and compare/
    study.py            the study protocol: select on val, report on test
    study_report.py     a study's answer: means, CIs, paired tests, wall times
    significance.py     confidence intervals, paired t-tests, effect sizes, the paired bootstrap

Without this file the package was a namespace package in a checkout and missing from the wheel
(setuptools' find_packages lists only folders with an ``__init__.py``); tests/test_packaging.py
installs the wheel and runs every command.
"""
