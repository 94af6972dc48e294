"""Measure a generative run: ``fid_own``, ``kid_own``, precision/recall of its samples, their distance to the
nearest training image, and the latent probe.

    python sandbox/probe.py --run runs/vae_attractors            # test split: probe R², trained vs untrained encoder
    python sandbox/probe.py --run runs/dcgan_faces --split val   # fid_own: samples vs noise baselines
    python sandbox/probe.py --run runs/dcgan_faces --inception-weights ~/pt_inception-2015-12-05-6726825d.pth

Prints a table and writes everything to ``runs/<name>/eval/probe_<split>.json`` (written
atomically; an existing file is replaced: the numbers are a function of the checkpoint) and into
the summary of the run's W&B run as ``probe/<split>/<number>``.
``fid_own`` is a Fréchet distance on the sandbox's own fixed random features: it ranks runs, it is
NOT Inception FID. ``--inception-weights`` adds real Inception FID/KID from torch-fidelity's weights
file (needs torch-fidelity; nothing is downloaded). The kernel probe's R² grows with ``--fit``.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import add_number, cli_entry, setup_cli  # noqa: E402


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", required=True, help="a generative run directory, e.g. runs/vae_attractors")
    parser.add_argument("--which", default="best", help="checkpoint: best, last or epoch_NNN")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="held-out images (default test)")
    add_number(parser, "--samples", within="train.fid_samples", low=2, default=512,
               help="generated images for fid_own, kid_own, ...")
    add_number(parser, "--fit", within="train.probe_samples", default=4000,
               help="attractors: training images the probes are fitted on (at most the split's size)")
    parser.add_argument("--inception-weights", metavar="PATH",
                        help="torch-fidelity's pt_inception-2015-12-05-6726825d.pth: adds Inception FID/KID")
    add_number(parser, "--steps", within="model.sample_steps",
               help="ddpm/flow: sampling (and inversion) steps (default: the run's model.sample_steps)")
    args = parser.parse_args()
    import json

    from sandbox.analysis.probe import probe_run, report
    from sandbox.metrics.inception import load_inception
    from sandbox.runs.load import checkpoint_dir, load_run
    from sandbox.runs.rundir import inside, write_atomic
    from sandbox.tracking.wandb_run import flat, to_summary

    inception = load_inception(args.inception_weights) if args.inception_weights else None  # fail before sampling
    run, _ = checkpoint_dir(args.run, args.which)
    cfg, model = load_run(args.run, args.which, task="generative")
    model.set_sample_steps(args.steps)
    res = probe_run(cfg, model, args.split, args.samples, args.fit, label=str(args.run), inception=inception)
    out = inside(run, run / "eval" / f"probe_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(res, indent=2))
    to_summary(cfg.track, run, flat(f"probe/{args.split}", res))  # the run's own W&B run, summary only
    print(report(res))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
