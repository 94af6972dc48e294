"""Latent probe: how much of a dataset's known generating parameters a model's codes hold.

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

import torch

from sandbox.data.loader import collate
from sandbox.data.render import progress


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
def encode_dataset(model, dataset, indices, batch: int = 64, device=None,
                   desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes (N, D), params (N, 4))`` of ``dataset[indices]`` (eval mode; VAE: the means; ddpm/flow: the
    inverted noise, flattened to ``D = C * S * S``); ``desc``: a progress bar (terminals only) counting the images."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    codes, params = [], []
    bar = progress(None, desc, total=len(indices)) if desc else None
    for i in range(0, len(indices), batch):
        b = collate([dataset[j] for j in indices[i:i + batch]])
        if bar is not None:
            bar.update(len(b["image"]))
        codes.append(model.encode(b["image"].to(device)).float().flatten(1).cpu())
        params.append(b["params"])
    model.train(was)
    if bar is not None:
        bar.close()
    return torch.cat(codes), torch.cat(params)

