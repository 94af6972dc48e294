"""Measure a generative run: ``fid_own`` and the latent probe (library + CLI).

    python sandbox/probe.py --run runs/vae_attractors          # probe R², trained vs untrained encoder
    python sandbox/probe.py --run runs/dcgan_faces --split test  # fid_own: samples vs noise baselines

Prints a table and writes everything to ``runs/<name>/eval/probe_<split>.json`` (written
atomically; an existing file is replaced: the numbers are a function of the checkpoint).

``fid_own``: the Fréchet distance (Heusel et al. 2017) between Gaussian fits of the
features of two image sets, where the features come from :class:`OwnFeatures`, a small
convolutional network shipped with the sandbox: fixed architecture, weights drawn from a
fixed seed and never trained (random features), nothing downloaded. It ranks image sets by
how close their feature statistics are, which is what a run needs to see progress or
collapse; it is NOT comparable with Inception FID (other features, other scale) and, like
FID, biased by the number of images: compare values computed with equal counts.

Latent probe (attractors): encode images whose true Clifford parameters are known, fit a
linear ridge and an RBF kernel ridge regression from codes to parameters on training
images (regularisation and bandwidth picked by closed-form leave-one-out error) and report
R² on held-out images, macro-averaged over the 4 parameters. The kernel probe is
non-parametric: its R² grows with the number of fitting images (measured on a VAE's codes:
0.76 with 1,000, 0.86 with 4,000), so the CLI fits on up to ``--fit 4000`` while the
per-epoch value in the trainer (``train.probe_samples``, 1,000) is a cheaper progress signal.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not sandbox/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from sandbox.errors import SandboxError, cli_entry, setup_cli  # noqa: E402

FEATURE_SIDE = 64
_FEATURES: dict[str, "OwnFeatures"] = {}


class OwnFeatures(nn.Module):
    """Fixed random features: ``x: (B, 3, H, W) in [0, 1] -> (B, 256)``.

    Resized to 64 px, standardised, then four stages of 3x3 conv (He-scaled Gaussian weights
    from ``seed``) + ReLU + 2x2 average pooling, widths 32, 64, 128, 128; the features are the
    spatial means of the last two stages (texture and layout at two scales).
    """

    def __init__(self, in_channels: int = 3, widths=(32, 64, 128, 128), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        cin = in_channels
        for w in widths:
            # skip_init: nn.Conv2d's default init would draw from the global RNG, so building the
            # features at a run's first evaluation shifted its training noise from then on (a run
            # trained differently after another one in the same process, e.g. in a sweep)
            conv = nn.utils.skip_init(nn.Conv2d, cin, w, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            self.convs.append(conv)
            cin = w
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(FEATURE_SIDE, FEATURE_SIDE), mode="bilinear", align_corners=False, antialias=True)
        x = (x - 0.5) / 0.25
        feats = []
        for conv in self.convs:
            x = F.avg_pool2d(F.relu(conv(x)), 2)
            feats.append(x.mean((2, 3)))
        return torch.cat(feats[-2:], dim=1)


def own_features(images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``(N, C, H, W) in [0, 1] -> (N, 256)`` float32 features on the images' device."""
    key = str(images.device)
    if key not in _FEATURES:
        _FEATURES[key] = OwnFeatures().to(images.device)
    net = _FEATURES[key]
    with torch.autocast(device_type=images.device.type, enabled=False):
        return torch.cat([net(images[i:i + batch]) for i in range(0, len(images), batch)])


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^½)`` for feature sets ``(N, D)``, ``(M, D)`` (float64).

    ``Tr (S_a S_b)^½`` is computed as the sum of square roots of the eigenvalues of the
    symmetric ``S_a^½ S_b S_a^½`` (same eigenvalues, no complex square root needed).
    """
    if len(a) < 2 or len(b) < 2:
        raise SandboxError(f"fid_own needs at least 2 images per set, got {len(a)} and {len(b)}")
    a, b = a.double().cpu(), b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def fid_own(real: torch.Tensor, fake: torch.Tensor) -> float:
    """``fid_own`` between two image sets ``(N, C, H, W)`` in [0, 1] (see the module doc)."""
    return frechet_distance(own_features(real), own_features(fake))


def mean_pairwise_distance(features: torch.Tensor, max_n: int = 512) -> float:
    """Mean Euclidean distance between distinct rows of ``(N, D)`` (the first ``max_n``)."""
    f = features[:max_n].double()
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / max(n * (n - 1), 1))


# ----------------------------------------------------------------------------- probe

def _standardise(fit: torch.Tensor, *others: torch.Tensor):
    mu, sd = fit.mean(0), fit.std(0).clamp_min(1e-8)
    return [(t - mu) / sd for t in (fit, *others)]


def _loo_pick(eig_vals: torch.Tensor, eig_vecs: torch.Tensor, y: torch.Tensor, lams) -> float:
    """The ridge penalty with the smallest closed-form leave-one-out error (hat matrix from an eigenbasis)."""
    proj = eig_vecs.T @ y
    best, best_err = lams[0], math.inf
    for lam in lams:
        shrink = eig_vals / (eig_vals + lam)
        fitted = eig_vecs @ (shrink[:, None] * proj)
        h = (eig_vecs.square() * shrink).sum(1).clamp_max(1 - 1e-9)
        err = float((((y - fitted) / (1 - h)[:, None]) ** 2).mean())
        if err < best_err:
            best, best_err = lam, err
    return best


def r2_score(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Per-column ``1 - SS_res / SS_tot`` for ``(N, K)`` arrays -> ``(K,)``."""
    ss_res = (y - pred).square().sum(0)
    ss_tot = (y - y.mean(0)).square().sum(0).clamp_min(1e-12)
    return 1 - ss_res / ss_tot


def ridge_probe(x_fit, y_fit, x_test, lams=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)) -> torch.Tensor:
    """Linear ridge from codes to targets (standardised, penalty by LOO); predictions for ``x_test``."""
    x_fit, x_test = _standardise(x_fit.double(), x_test.double())
    y_mu = y_fit.double().mean(0)
    y = y_fit.double() - y_mu
    u, s, _ = torch.linalg.svd(x_fit, full_matrices=False)
    lam = _loo_pick(s.square(), u, y, lams)
    w = torch.linalg.solve(x_fit.T @ x_fit + lam * torch.eye(x_fit.shape[1], dtype=x_fit.dtype), x_fit.T @ y)
    return x_test @ w + y_mu


def kernel_probe(x_fit, y_fit, x_test, lams=(1e-3, 1e-2, 1e-1, 1.0), scales=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """RBF kernel ridge (bandwidth = scale x median distance; scale and penalty by LOO); predictions for ``x_test``.

    Codes are centred and divided by ONE global scale (not per dimension): a latent dimension
    the model left unused (a VAE's collapsed ones) keeps its near-zero spread and cannot
    dominate the distances once blown up to unit variance.
    """
    x_fit, x_test = x_fit.double(), x_test.double()
    mu, scale = x_fit.mean(0), x_fit.var(0).mean().sqrt().clamp_min(1e-12)
    x_fit, x_test = (x_fit - mu) / scale, (x_test - mu) / scale
    y_mu = y_fit.double().mean(0)
    y = y_fit.double() - y_mu
    d2 = torch.cdist(x_fit, x_fit).square()
    med = d2[d2 > 0].median().sqrt() if (d2 > 0).any() else torch.tensor(1.0, dtype=d2.dtype)
    best = (math.inf, None)
    for scale in scales:
        h2 = (scale * med) ** 2
        vals, vecs = torch.linalg.eigh(torch.exp(-d2 / (2 * h2)))
        vals = vals.clamp_min(0)
        lam = _loo_pick(vals, vecs, y, lams)
        shrink = vals / (vals + lam)
        hdiag = (vecs.square() * shrink).sum(1).clamp_max(1 - 1e-9)
        err = float((((y - vecs @ (shrink[:, None] * (vecs.T @ y))) / (1 - hdiag)[:, None]) ** 2).mean())
        if err < best[0]:
            best = (err, (h2, lam, vals, vecs))
    h2, lam, vals, vecs = best[1]
    alpha = vecs @ ((vecs.T @ y) / (vals + lam)[:, None])
    return torch.exp(-torch.cdist(x_test, x_fit).square() / (2 * h2)) @ alpha + y_mu


def latent_probe(codes_fit, params_fit, codes_test, params_test) -> dict:
    """``{"linear": R², "kernel": R², "linear_per_param": [...], "kernel_per_param": [...]}`` on the test set."""
    out = {}
    for name, probe in (("linear", ridge_probe), ("kernel", kernel_probe)):
        r2 = r2_score(params_test.double(), probe(codes_fit, params_fit, codes_test))
        out[name], out[f"{name}_per_param"] = float(r2.mean()), [round(float(v), 4) for v in r2]
    return out


@torch.no_grad()
def encode_dataset(model, dataset, indices, batch: int = 64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes (N, latent_dim), params (N, 4))`` of ``dataset[indices]`` (eval mode; VAE: the means)."""
    from sandbox.trainers.base import collate

    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    codes, params = [], []
    for i in range(0, len(indices), batch):
        b = collate([dataset[j] for j in indices[i:i + batch]])
        codes.append(model.encode(b["image"].to(device)).float().cpu())
        params.append(b["params"])
    model.train(was)
    return torch.cat(codes), torch.cat(params)


# ----------------------------------------------------------------------------- CLI

@cli_entry
def main() -> None:
    parser = setup_cli(__doc__)
    parser.add_argument("--run", required=True, help="a generative run directory, e.g. runs/vae_attractors")
    parser.add_argument("--which", default="best", help="checkpoint: best, last or epoch_NNN")
    parser.add_argument("--split", default="val", choices=["val", "test"], help="held-out images")
    parser.add_argument("--samples", type=int, default=512, help="generated images for fid_own")
    parser.add_argument("--fit", type=int, default=4000,
                        help="attractors: training images the probes are fitted on (at most the split's size)")
    args = parser.parse_args()
    import json

    from sandbox.build import build_data, build_model
    from sandbox.data.transforms import unaugmented
    from sandbox.rundir import write_atomic
    from sandbox.interpolate import load_generative

    cfg, model = load_generative(args.run, args.which)
    data = build_data(cfg, ("train", args.split))
    held = data[args.split]
    g = torch.Generator().manual_seed(cfg.seed)
    real = torch.stack([held[i]["image"] for i in range(len(held))])
    fake = torch.cat([model.sample(min(256, args.samples - i), g).float().cpu() for i in range(0, args.samples, 256)])
    # baselines: Gaussian noise matched to the data's per-channel mean and variance (no layout at all), and
    # to its per-pixel mean and variance (the "mean image + noise", a much stronger one); the floor:
    # as many training images, real against real
    shape = (args.samples, *real.shape[1:])
    per_channel = real.mean((0, 2, 3), keepdim=True)[0], real.std((0, 2, 3), keepdim=True)[0]
    baselines = {"noise_channel": per_channel, "noise_pixel": (real.mean(0), real.std(0))}
    fr, ff = own_features(real), own_features(fake)
    spread = mean_pairwise_distance(fr)
    res = {"run": str(args.run), "split": args.split, "n_real": len(real), "n_generated": args.samples,
           "fid_own_samples": frechet_distance(fr, ff), "diversity_samples": mean_pairwise_distance(ff) / spread}
    for name, (mean, std) in baselines.items():
        fn = own_features((mean + std * torch.randn(shape, generator=g)).clamp(0, 1))
        res[f"fid_own_{name}"], res[f"diversity_{name}"] = frechet_distance(fr, fn), mean_pairwise_distance(fn) / spread
    train = unaugmented(data["train"])  # the images as stored
    # a seeded random subset: folder datasets list files sorted by name, and UTKFace's names start
    # with the age, so the first N training images are the youngest faces (floor 1.57 instead of 0.11)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:len(real)]
    other = torch.stack([train[int(i)]["image"] for i in pick])
    res["fid_own_real_train_vs_heldout"] = frechet_distance(fr, own_features(other))
    if "params" in held[0] and hasattr(model, "encoder"):
        fit_idx = list(range(min(len(train), args.fit)))
        for label, net in (("trained", model), ("untrained", build_model(cfg).to(next(model.parameters()).device))):
            cf, pf = encode_dataset(net, train, fit_idx)
            ct, pt = encode_dataset(net, held, list(range(len(held))))
            res[f"probe_{label}"] = latent_probe(cf, pf, ct, pt)
        res["probe_fit_images"] = len(fit_idx)
    out = Path(args.run) / "eval" / f"probe_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(res, indent=2))
    print(report(res))
    print(f"wrote {out}")


def report(res: dict) -> str:
    """The probe.py result as a short table: fid_own of the samples against its baselines and floor,
    and the latent probe R² of the trained against the untrained encoder."""
    w = 66

    def row(label: str, *values: float) -> str:
        return f"  {label:<{w}}" + "".join(f"{v:>11.3f}" for v in values)

    lines = [f"{res['run']}: {res['n_real']} held-out {res['split']} images, {res['n_generated']} samples",
             f"{'fid_own (own features, NOT Inception FID; lower is better)':<{w + 2}}{'fid_own':>11}{'diversity':>11}",
             row("samples", res["fid_own_samples"], res["diversity_samples"]),
             row("Gaussian noise, per-channel mean/std (baseline)", res["fid_own_noise_channel"],
                 res["diversity_noise_channel"]),
             row("Gaussian noise, per-pixel mean/std (baseline)", res["fid_own_noise_pixel"],
                 res["diversity_noise_pixel"]),
             row("training images vs held-out (the floor)", res["fid_own_real_train_vs_heldout"])]
    if "probe_trained" in res:
        lines += [f"{'latent probe R² on held-out images, fitted on %d training images' % res['probe_fit_images']:<{w + 2}}"
                  f"{'linear':>11}{'kernel':>11}"]
        lines += [row(f"{label} encoder", res[f"probe_{label}"]["linear"], res[f"probe_{label}"]["kernel"])
                  for label in ("trained", "untrained")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
