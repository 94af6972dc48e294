"""Walk the latent space of a generative run: A -> B -> C (-> A), saved as a PNG strip and a GIF.

    python sandbox/interpolate.py --run runs/vae_attractors --from 3 17 42 --cycle
    python sandbox/interpolate.py --run runs/dcgan_faces --random 4 --mode slerp --steps 12 --cycle
    python sandbox/interpolate.py --run runs/aae_faces --from face_a.jpg face_b.jpg --mode lerp
    python sandbox/interpolate.py --run runs/flow_attractors_cond --factor a --from -1.5 --to 1.5 --frames 8

Endpoints: ``--from`` images (files, fitted to the run's size) or indices into the run's
``--split`` (default test), encoded by the model (VAE: the posterior means); or ``--random K``
draws from the model's prior (the only choice for a GAN, which has no encoder). ``--mode
slerp`` (default) follows the great circle between codes, scaling the radius linearly, and
falls back to lerp for nearly parallel codes; ``lerp`` is the straight line (refused for ddpm/flow,
whose codes are Gaussian noise: inverted images or draws; ``--sample-steps`` sets their sampling
steps). ``--steps`` frames per segment; ``--cycle`` closes the path back to the first endpoint (the strip ends on it;
the GIF leaves that duplicate out so the loop is seamless). Writes
``runs/<name>/images/interp_<mode>[_cycle]_<endpoints>.{png,gif}`` and puts them in the summary of
the run's W&B run (no new history segment; ``--no-wandb`` skips it).

A conditional run (``data.condition``) walks a factor at fixed noise: ``--factor NAME --from V --to V``
holds the other factors at those of ``--split`` sample ``--at`` (default 0) and samples ``--frames`` values
(a class factor: each class id between them) at ``--guidance`` (default the run's model.guidance), written
as ``images/walk_<factor>_<from>_to_<to>_<split><at>_seed<seed>.{png,gif}``.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sandbox.cli import add_number, cli_entry, setup_cli  # noqa: E402
from sandbox.errors import SandboxError  # noqa: E402

MAX_ENDPOINTS = 32  # --random K and --from: every frame of the path is decoded in one batch
ENDPOINTS = f"[2, {MAX_ENDPOINTS}]"
FRAMES = "[2, 100]"  # --steps per segment: (K - 1) x steps frames in one strip and one GIF


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", required=True, help="a generative run directory, e.g. runs/vae_attractors")
    parser.add_argument("--which", default="best", help="checkpoint: best, last or epoch_NNN")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--from", dest="items", nargs="+", help="image files or indices into --split")
    add_number(src, "--random", within=ENDPOINTS, help="K endpoints drawn from the prior (default 3)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="the split --from indices point into (default test)")
    parser.add_argument("--mode", default="slerp", choices=["slerp", "lerp"])
    add_number(parser, "--steps", within=FRAMES, default=8, help="frames per segment")
    parser.add_argument("--cycle", action="store_true", help="close the path back to the first endpoint")
    add_number(parser, "--seed", within="seed", default=0, help="seed of --random (--factor: of the noise)")
    add_number(parser, "--sample-steps", within="model.sample_steps", help="ddpm/flow: sampling and inversion steps "
               "(default: the run's model.sample_steps; --steps is the frames)")
    parser.add_argument("--factor", help="conditional runs: the factor to walk from --from V to --to V")
    add_number(parser, "--to", within="(-inf, inf)", kind=float, help="--factor: the last value")
    add_number(parser, "--frames", within=FRAMES, default=8, help="--factor: frames of the walk")
    add_number(parser, "--at", within="[0, inf)", default=0, help="--factor: the --split sample fixing the others")
    add_number(parser, "--guidance", within="model.guidance", kind=float, help="--factor: guidance w")
    parser.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    args = parser.parse_args()
    if args.items and len(args.items) > MAX_ENDPOINTS:
        raise SandboxError(f"--from: got {len(args.items):,} endpoints, expected at most {MAX_ENDPOINTS} (as --random)")
    from sandbox.analysis.interpolation import interpolate, save_factor_walk, strip, walk_endpoints
    from sandbox.runs.load import checkpoint_dir, load_run
    from sandbox.tracking.wandb_run import to_summary
    from sandbox.viz.grids import save_gif, save_grid

    walk = walk_endpoints(args.factor, args.items, args.to, args.random)
    out, _ = checkpoint_dir(args.run, args.which)
    cfg, model = load_run(args.run, args.which, task="generative")
    model.set_sample_steps(args.sample_steps, "--sample-steps")
    if walk is not None:
        n, png, gif = save_factor_walk(model, cfg, out / "images", args.factor, *walk, args.frames, args.split,
                                       args.at, args.seed, args.guidance)
        if not args.no_wandb:
            to_summary(cfg.track, out, {}, media={"factor_walk/png": png, "factor_walk/gif": gif})
        print(f"{n} frames ({args.factor} {walk[0]:g} -> {walk[1]:g}): {png}  {gif}")
        return
    frames, labels, images = interpolate(model, cfg, args.items, args.random, args.split, args.steps, args.mode,
                                         args.cycle, args.seed)
    stem = f"interp_{args.mode}{'_cycle' if args.cycle else ''}_{'-'.join(labels)}"
    tiles = strip(frames, images, args.cycle)  # with the real endpoint images at both ends, where there are some
    png = save_grid(tiles, out / "images" / f"{stem}.png", nrow=len(tiles))
    gif = save_gif(frames[:-1] if args.cycle else frames, out / "images" / f"{stem}.gif")
    if not args.no_wandb:
        to_summary(cfg.track, out, {}, media={"interpolation/png": png, "interpolation/gif": gif})
    print(f"{len(frames)} frames ({args.mode}{', cycle' if args.cycle else ''}): {png}  {gif}")


if __name__ == "__main__":
    main()
