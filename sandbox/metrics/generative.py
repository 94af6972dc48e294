"""Sample metrics on the sandbox's own fixed features: ``fid_own`` (Fréchet distance) and diversity.

``fid_own``: the Fréchet distance (Heusel et al. 2017) between Gaussian fits of the
features of two image sets, where the features come from :class:`OwnFeatures`, a small
convolutional network shipped with the sandbox: fixed architecture, weights drawn from a
fixed seed and never trained (random features), nothing downloaded. It ranks image sets by
how close their feature statistics are, which is what a run needs to see progress or
collapse; it is NOT comparable with Inception FID (other features, other scale) and, like
FID, biased by the number of images: compare values computed with equal counts.
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
