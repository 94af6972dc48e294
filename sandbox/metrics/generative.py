"""Sample metrics on the sandbox's own fixed features: ``fid_own`` (Fréchet distance) and diversity.

``fid_own``: the Fréchet distance (Heusel et al. 2017) between Gaussian fits of the
features of two image sets, where the features come from :class:`OwnFeatures`, a small
convolutional network shipped with the sandbox: fixed architecture, weights drawn from a
fixed seed and never trained (random features), nothing downloaded. It ranks image sets by
how close their feature statistics are, which is what a run needs to see progress or
collapse; it is NOT comparable with Inception FID (other features, other scale) and, like
FID, biased by the number of images: compare values computed with equal counts.

``kid``: the Kernel Inception Distance (Bińkowski et al. 2018) on any features: the unbiased
MMD² with the cubic kernel ``k(x, y) = (x·y / d + 1)³``, averaged over random subsets. Unbiased,
so two samples of one distribution score ~0 at any count (slightly negative happens), which
makes it the better grade at a few hundred samples, where FID's bias dominates.

``precision_recall`` (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around
its points whose radius is the distance to the point's k-th nearest neighbour (k = 3); precision is
the share of generated points inside the real manifold (fidelity), recall the share of real points
inside the generated one (coverage). A collapsed generator keeps precision and loses recall.
Compare at equal counts (the radii shrink as a set grows).

``min_distances``: each point's distance to its nearest reference point; its median for samples
against the training images, next to the same for held-out real images, shows memorisation.

``spectrum_scores``: the radially averaged power spectrum of two image sets, compared in pixels, not in
features (the own features resize to 64 px with antialiasing and average over space: they are blind to
blur). ``spectral_l1``: the mean over radii of |log10 P_fake(r) - log10 P_real(r)| (decades; 0 for equal
spectra), ``hf_log_ratio``: the mean of log10 P_fake / P_real over the upper half of the radii (signed:
below 0 the samples lack fine detail, i.e. blur; above 0 they carry extra, e.g. noise or checkerboards).
Durall et al. 2020 show up-sampling generators failing exactly there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.errors import SandboxError

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


def mean_pairwise_distance(features: torch.Tensor, max_n: int = 512) -> float:
    """Mean Euclidean distance between distinct rows of ``(N, D)`` (the first ``max_n``)."""
    f = features[:max_n].double()
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / max(n * (n - 1), 1))


def diversity(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise feature distance of ``fake`` relative to that of ``real`` (both ``(N, D)`` features):
    1 = as varied as the real images, near 0 = collapse."""
    return mean_pairwise_distance(fake) / max(mean_pairwise_distance(real), 1e-12)


KID_SUBSETS = 100  # subsets of up to KID_SUBSET_SIZE per side (torchmetrics' and the KID paper's defaults)
KID_SUBSET_SIZE = 1000
KID_POOL = 4096  # at most this many points per side enter the kernel matrices (memory: POOL² float64)
PR_K = 3  # the k of precision and recall (the paper's recommendation)


def _cubic_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """KID of feature sets ``(N, D)``, ``(M, D)``: mean and std over ``subsets`` of the unbiased MMD²

        (Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)) / (m (m - 1)) - 2 Σ_{i,j} k(x_i, y_j) / m²

    on ``m = min(subset_size, N, M)`` points drawn per side without replacement (as torchmetrics'
    KernelInceptionDistance). The kernel matrices are computed once (on at most ``KID_POOL`` points per
    side) and every subset's sums read from them; the draws come from their own generator (``seed``), so training's random stream is untouched. When
    every subset is the whole of both sets (``N == M <= subset_size``), there is one term and std 0.
    """
    if len(real) < 2 or len(fake) < 2:
        raise SandboxError(f"KID needs at least 2 images per set, got {len(real)} and {len(fake)}")
    g = torch.Generator().manual_seed(seed)
    a, b = (f[torch.randperm(len(f), generator=g)[:KID_POOL]] if len(f) > KID_POOL else f
            for f in (real.double().cpu(), fake.double().cpu()))
    m = min(subset_size, len(a), len(b))
    n_sub = 1 if m == len(a) == len(b) else subsets
    # subset s as a 0/1 column of W: the sum of K over its pairs is w_s' K w_s, all subsets at once as
    # ((K W) * W).sum(0) (a matmul; indexing m x m blocks out of K per subset was 30x slower)
    wa, wb = (torch.zeros(len(f), n_sub, dtype=torch.float64) for f in (a, b))
    for s in range(n_sub):
        wa[torch.randperm(len(a), generator=g)[:m], s] = 1
        wb[torch.randperm(len(b), generator=g)[:m], s] = 1
    kaa, kbb = _cubic_kernel(a, a), _cubic_kernel(b, b)
    within = sum(((k @ w) * w).sum(0) - k.diagonal() @ w for k, w in ((kaa, wa), (kbb, wb)))
    cross = ((_cubic_kernel(a, b) @ wb) * wa).sum(0)
    v = within / (m * (m - 1)) - 2 * cross / m ** 2
    return float(v.mean()), float(v.std(unbiased=False))


def min_distances(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``(N,)`` Euclidean distance (float64) of each row of ``queries (N, D)`` to its nearest row of ``reference``."""
    ref = reference.double().cpu()
    return torch.cat([torch.cdist(q.double().cpu(), ref).amin(1) for q in queries.split(chunk)])


def _knn_radii(f: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the (k+1)-th smallest counts the row itself)."""
    return torch.cdist(f, f).kthvalue(k + 1, dim=1).values


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    return float((torch.cdist(points, centres) <= radii[None]).any(1).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets ``(N, D)``, ``(M, D)``:
    NaN when a set has ``k`` points or fewer (no k-th neighbour)."""
    if len(real) <= k or len(fake) <= k:
        return math.nan, math.nan
    a, b = real.double().cpu(), fake.double().cpu()
    return _inside(b, a, _knn_radii(a, k)), _inside(a, b, _knn_radii(b, k))


def sample_scores(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Every sample metric of features ``fake`` against ``real`` (both ``(N, D)``, features computed
    once by the caller): ``fid_own``, ``kid_own``, ``kid_own_std``, ``precision``, ``recall``, ``diversity``."""
    kid_mean, kid_std = kid(real, fake, seed=seed)
    precision, recall = precision_recall(real, fake)
    return {"fid_own": frechet_distance(real, fake), "kid_own": kid_mean, "kid_own_std": kid_std,
            "precision": precision, "recall": recall, "diversity": diversity(fake, real)}


def radial_power(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, S, S) -> (S // 2,)``: the mean power of the images' (channel-averaged, per-image mean
    removed) 2-D spectrum in each ring of integer radius 1 .. S // 2 (cycles per image), float64."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise SandboxError(f"spectrum: expected square images (N, C, S, S), got {tuple(images.shape)}")
    x = images.double().mean(1)
    x = x - x.mean((1, 2), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(0)
    side = x.shape[-1]
    f = torch.fft.fftfreq(side, d=1.0 / side)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).round().long()
    rings = torch.arange(1, side // 2 + 1)
    return torch.stack([power[radius == r].mean() for r in rings])


def spectrum_scores(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """``spectral_l1`` and ``hf_log_ratio`` (see the module notes) of images ``fake`` against ``real``,
    both ``(N, C, S, S)`` in [0, 1] at the same size."""
    if real.shape[1:] != fake.shape[1:]:
        raise SandboxError(f"spectrum: the two image sets differ in shape: {tuple(real.shape[1:])} vs "
                           f"{tuple(fake.shape[1:])}; compare images of one size")
    tiny = torch.finfo(torch.float64).tiny
    log_ratio = torch.log10(radial_power(fake).clamp_min(tiny)) - torch.log10(radial_power(real).clamp_min(tiny))
    upper = log_ratio[len(log_ratio) // 2:]
    return {"spectral_l1": float(log_ratio.abs().mean()), "hf_log_ratio": float(upper.mean())}
