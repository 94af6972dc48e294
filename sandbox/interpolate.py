"""Walk the latent space of a generative run: A -> B -> C (-> A), saved as a PNG strip and a GIF.

    python sandbox/interpolate.py --run runs/vae_attractors --from 3 17 42 --cycle
    python sandbox/interpolate.py --run runs/dcgan_faces --random 4 --mode slerp --steps 12 --cycle
    python sandbox/interpolate.py --run runs/aae_faces --from face_a.jpg face_b.jpg --mode lerp

Endpoints: ``--from`` images (files, fitted to the run's size) or indices into the run's
``--split`` (default val), encoded by the model (VAE: the posterior means); or ``--random K``
draws from the model's prior (the only choice for a GAN, which has no encoder). ``--mode
slerp`` (default) follows the great circle between codes, scaling the radius linearly, and
falls back to lerp for nearly parallel codes; ``lerp`` is the straight line. ``--steps`` frames
per segment; ``--cycle`` closes the path back to the first endpoint (the strip ends on it;
the GIF leaves that duplicate out so the loop is seamless). Writes
``runs/<name>/images/interp_<mode>[_cycle]_<endpoints>.{png,gif}`` and logs them to the run's
W&B (offline unless logged in; ``--no-wandb`` skips it).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from sandbox.errors import SandboxError, cli_entry, setup_cli  # noqa: E402

PARALLEL_EPS = 1e-4  # |sin(angle)| below this: slerp is ill-conditioned, lerp is the same path


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a + (b - a) * t if 0 < t < 1 else (a.clone() if t <= 0 else b.clone())


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of ``(D,)`` codes; the norm goes linearly from |a| to |b|.

    ``t=0`` gives ``a`` and ``t=1`` gives ``b`` exactly; codes at (nearly) the same or opposite
    direction, or zero codes, fall back to :func:`lerp`.
    """
    if t <= 0 or t >= 1:
        return a.clone() if t <= 0 else b.clone()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return lerp(a, b, t)
    ua, ub = a / na, b / nb
    omega = torch.arccos((ua * ub).sum().clamp(-1, 1))
    so = torch.sin(omega)
    if so.abs() < PARALLEL_EPS:
        return lerp(a, b, t)
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / so
    return direction * ((1 - t) * na + t * nb)


def path(codes: torch.Tensor, steps: int, mode: str = "slerp", cycle: bool = False) -> torch.Tensor:
    """``codes: (K, D)`` endpoints -> ``(F, D)`` frames through them in order.

    ``steps`` frames per segment (``steps >= 2``: the start of the segment plus ``steps - 1``
    more); the path ends on the last endpoint, or with ``cycle`` on the first one again, so
    ``F = segments * (steps - 1) + 1``.
    """
    if steps < 2:
        raise SandboxError(f"--steps {steps}: expected at least 2 frames per segment")
    if len(codes) < 2:
        raise SandboxError(f"interpolation needs at least 2 endpoints, got {len(codes)}")
    step = {"slerp": slerp, "lerp": lerp}[mode]
    points = list(codes) + ([codes[0]] if cycle else [])
    frames = []
    for a, b in zip(points[:-1], points[1:]):
        frames += [step(a, b, i / (steps - 1)) for i in range(steps - 1)]
    frames.append(points[-1].clone())
    return torch.stack(frames)


def load_generative(run: str, which: str = "best", device=None):
    """``(cfg, model)`` of a generative run (eval mode); a segmentation run is refused in one line."""
    from sandbox.build import build_model
    from sandbox.models import MODELS
    from sandbox.rundir import WEIGHTS_FILE
    from sandbox.runs import checkpoint_dir, load_weights, run_config

    path_, ckpt = checkpoint_dir(run, which)
    cfg = run_config(run, which)
    if not getattr(MODELS[cfg.model.name], "generative", False):
        raise SandboxError(f"{str(path_)!r} is a {cfg.model.name} run (targets: {', '.join(cfg.loss)}); "
                           f"expected a generative run (ae, vae, dcgan, aae), e.g. from configs/vae_attractors.yaml")
    model = build_model(cfg)
    load_weights(model, ckpt / WEIGHTS_FILE, cfg.source)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return cfg, model.to(device).eval()


def endpoint_images(cfg, items: list[str], split: str) -> tuple[torch.Tensor, list[str]]:
    """``--from`` items (image files or split indices) -> ``(K, C, S, S)`` in [0, 1] and short labels."""
    import numpy as np

    from sandbox.data.folders import open_image, to_rgb
    from sandbox.data.transforms import fit_to_size

    dataset, images, labels = None, [], []
    for item in items:
        if item.lstrip("-").isdigit():
            if dataset is None:
                from sandbox.build import build_data

                dataset = build_data(cfg, (split,))[split]
            i = int(item)
            if not 0 <= i < len(dataset):
                raise SandboxError(f"--from {item}: index out of range; the {split} split has {len(dataset)} images "
                                   f"(0..{len(dataset) - 1})")
            images.append(dataset[i]["image"])
            labels.append(f"{split}{i}")
        else:
            p = Path(item)
            if not p.is_file():
                raise SandboxError(f"--from {item!r}: no such file; expected an image file or an index into "
                                   f"the {split} split")
            img, _ = fit_to_size(to_rgb(open_image(p)), cfg.data.size, cfg.data.resize, "image")
            images.append(torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0))
            labels.append(p.stem.split(".")[0][:16])
    return torch.stack(images), labels


def save_gif(frames: torch.Tensor, path: Path, scale: int = 2, ms: int = 80) -> Path:
    """``(F, C, H, W)`` in [0, 1] -> an endlessly looping GIF."""
    from PIL import Image

    arr = (frames.float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1) * 255).round().astype("uint8")
    ims = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]
    ims = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in ims]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=ms, loop=0)
    return path


def log_to_wandb(cfg, run_dir: Path, files: list[Path]) -> None:
    """Attach the files to the run's W&B run (same id, offline unless logged in); never raises."""
    import json
    import logging

    from sandbox.tracking import resolve_wandb_mode

    log = logging.getLogger("sandbox")
    mode = resolve_wandb_mode(cfg.track.wandb)
    if mode == "disabled":
        return
    try:
        import wandb

        state = json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())
        run = wandb.init(project=cfg.track.project, entity=cfg.track.entity, id=state.get("wandb_id"),
                         resume="allow", dir=str(run_dir), mode=mode,
                         settings=wandb.Settings(init_timeout=20, silent=True, console="off"))
        run.log({f"interpolation/{f.suffix[1:]}": (wandb.Video(str(f)) if f.suffix == ".gif" else wandb.Image(str(f)))
                 for f in files})
        run.finish()
    except Exception as exc:  # W&B must never stop the command
        log.warning("W&B logging skipped (%s: %s)", type(exc).__name__, exc)


@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", required=True, help="a generative run directory, e.g. runs/vae_attractors")
    parser.add_argument("--which", default="best", help="checkpoint: best, last or epoch_NNN")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--from", dest="items", nargs="+", help="image files or indices into --split")
    src.add_argument("--random", type=int, help="K endpoints drawn from the prior (default 3)")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--mode", default="slerp", choices=["slerp", "lerp"])
    parser.add_argument("--steps", type=int, default=8, help="frames per segment (>= 2)")
    parser.add_argument("--cycle", action="store_true", help="close the path back to the first endpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random")
    parser.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    args = parser.parse_args()
    from sandbox.trainers.generative import save_grid

    cfg, model = load_generative(args.run, args.which)
    dev = next(model.parameters()).device
    with torch.no_grad():
        if args.items:
            images, labels = endpoint_images(cfg, args.items, args.split)
            codes = model.encode(images.to(dev)).float()
        else:
            k = 3 if args.random is None else args.random
            if k < 2:
                raise SandboxError(f"--random {k}: expected at least 2 endpoints")
            codes = model.prior(k, torch.Generator().manual_seed(args.seed)).float()
            labels = [f"random{k}", f"seed{args.seed}"]
        frames = model.decode(path(codes.cpu(), args.steps, args.mode, args.cycle).to(dev)).float().cpu()
    out = Path(args.run) if (Path(args.run) / "config.yaml").is_file() else Path(args.run).parent.parent
    stem = f"interp_{args.mode}{'_cycle' if args.cycle else ''}_{'-'.join(labels)}"
    png = save_grid(frames, out / "images" / f"{stem}.png", nrow=len(frames))
    gif = save_gif(frames[:-1] if args.cycle else frames, out / "images" / f"{stem}.gif")
    if not args.no_wandb:
        log_to_wandb(cfg, out, [png, gif])
    print(f"{len(frames)} frames ({args.mode}{', cycle' if args.cycle else ''}): {png}  {gif}")


if __name__ == "__main__":
    main()
