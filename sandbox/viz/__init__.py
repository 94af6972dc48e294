"""Every figure of the sandbox (headless: the Agg backend, :mod:`sandbox.viz.backend`).

    panels.py  segmentation panels and error overlays (TP green, FP red, FN blue)
    curves.py  training curves, sweep/comparison curves, the generative panel, the LR range test
    grids.py   sample / reconstruction grids, interpolation GIFs, captioned panel tables
"""
