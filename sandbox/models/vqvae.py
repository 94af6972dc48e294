"""VQ-VAE (van den Oord et al. 2017) on the shared core: ``vqvae``, trained by the reconstruction trainer.

    x ──core Encoder──> flatten ──Linear──> z_e (B, latent_dim) = (B, n_codes, code_dim)
    z_e ──each of the n_codes vectors to its nearest codebook entry──> z_q (straight-through)
    z_q ──Linear──> (C, h, w) ──core Decoder (skip="none")──> 1x1 conv ──> sigmoid ──> x̂

The encoder and decoder are the AE's (:class:`~sandbox.models.autoencoders.AutoEncoder`: the same
:mod:`sandbox.nn.latent` pieces, measured flatten size, ``ema`` of the decoder); the code is a row of
``n_codes = latent_dim / code_dim`` discrete entries of a codebook of ``codebook_size`` vectors.

* **Codebook by EMA** (van den Oord et al. 2017 appendix, Razavi et al. 2019): per entry k, the EMA of its
  cluster size ``N_k <- d N_k + (1 - d) n_k`` and of the sum of the vectors assigned to it
  ``m_k <- d m_k + (1 - d) s_k``; the entry is ``e_k = m_k / N~_k`` with the Laplace-smoothed size
  ``N~_k = (N_k + eps) / (sum N + K eps) * sum N``. No gradient reaches the codebook (its entries are
  buffers). Sizes start at 1 with sums equal to the initial entries (each entry one pseudo-observation of
  itself), so an entry no vector picks stays where it is instead of being divided by a vanishing count.
  ``restart``: an entry whose EMA size falls below it moves to a random encoder vector of the batch
  (dead-code restart, as in Dhariwal et al. 2020), its size reset to 1. Several processes: counts and
  sums are summed over them first, so every copy of the codebook takes the same update.
* **Straight-through estimator**: the decoder sees ``z_e + sg(z_q - z_e)`` (= z_q), so the gradient the
  decoder sends to z_q passes to the encoder unchanged.
* **Loss** ``recon + commitment * ||z_e - sg(z_q)||^2`` (mean over the code values; ``commitment`` is the
  paper's beta, 0.25), parts ``loss/vqvae/commit`` and ``perplexity`` (exp of the entropy of the batch's
  code histogram: how many entries are in use).
* **Sampling** draws every code uniformly from the codebook: a VQ-VAE needs a learned prior over its codes
  (a PixelCNN or a transformer on the code rows) for good samples, which is issue 31's latent stage; the
  uniform draw is what sampling, fid_own and interpolation see until then.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.errors import ConfigError
from sandbox.models.autoencoders import AutoEncoder, GenerativeOptions, register_generative

SMOOTHING = 1e-5  # eps of the Laplace smoothing of the cluster sizes


@dataclass
class VQVAEOptions(GenerativeOptions):
    """The ``model:`` keys of vqvae: the generative ones plus its codebook's."""
    codebook_size: int = field(default=512, metadata={"range": "[2, 65536]"})  # K entries
    # values per code; latent_dim / code_dim codes per image (null: the largest divisor of latent_dim up to 8)
    code_dim: Optional[int] = field(default=None, metadata={"range": "[1, 65536]"})
    commitment: float = field(default=0.25, metadata={"range": "[0, inf)"})  # beta of the commitment term
    codebook_decay: float = field(default=0.99, metadata={"range": "[0, 1)"})  # d of the codebook's EMA
    # dead-code restart: an entry whose EMA cluster size falls below this moves to a batch vector (null: off)
    restart: Optional[float] = field(default=None, metadata={"range": "(0, inf)"})


class Codebook(nn.Module):
    """``forward(z_e: (N, D), update) -> (z_st, codes (N,), z_q)``: nearest entries (float32, autocast off),
    ``z_st = z_e + sg(z_q - z_e)``; with ``update`` the EMA update of the entries follows (see the module doc)."""

    def __init__(self, size: int, dim: int, decay: float = 0.99, restart: float | None = None):
        super().__init__()
        self.decay, self.restart = decay, restart
        entries = torch.randn(size, dim)
        self.register_buffer("entries", entries)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("entry_sum", entries.clone())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The index of the nearest entry of each row of ``z: (N, D)`` (squared Euclidean distance)."""
        d = z.square().sum(1, keepdim=True) - 2 * z @ self.entries.T + self.entries.square().sum(1)
        return d.argmin(1)

    def forward(self, z_e: torch.Tensor, update: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            flat = z_e.detach().float()
            codes = self.nearest(flat)
            z_q = self.entries[codes]  # the entries before this step's update
            if update:
                self.update(flat, codes)
        z_q = z_q.to(z_e.dtype)
        return z_e + (z_q - z_e).detach(), codes, z_q

    @torch.no_grad()
    def update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step of the sizes and sums from the rows ``flat`` assigned to ``codes`` (summed over processes)."""
        onehot = F.one_hot(codes, len(self.entries)).type_as(flat)
        counts, sums = onehot.sum(0), onehot.T @ flat
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        if not torch.isfinite(sums).all():  # a non-finite batch (in any process: the sums are global) is skipped by
            return  # the engine (train.nonfinite); its codes must not poison the codebook before that check
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.entry_sum.lerp_(sums, 1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + SMOOTHING) / (total + len(self.entries) * SMOOTHING) * total
        self.entries.copy_(self.entry_sum / smoothed[:, None])
        if self.restart is not None:
            dead = (self.cluster_size < self.restart).nonzero().squeeze(1)
            if len(dead):  # the same draw in every process: its rows are broadcast from process 0 below
                picked = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.broadcast(picked, 0)
                self.entries[dead], self.entry_sum[dead], self.cluster_size[dead] = picked, picked, 1.0


class VQVAE(AutoEncoder):
    """``forward(x) -> {"image": x̂, "z": z_q straight-through (B, latent_dim), "z_e", "codes" (B, n_codes),
    "commit"}``; ``encode(x)`` gives the quantised code ``z_q`` (for probes and interpolation)."""

    def __init__(self, *args: Any, codebook_size: int = 512, code_dim: int = 8, commitment: float = 0.25,
                 codebook_decay: float = 0.99, restart: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.code_dim, self.n_codes, self.commitment = code_dim, self.latent_dim // code_dim, commitment
        self.codebook = Codebook(codebook_size, code_dim, codebook_decay, restart)

    def quantise(self, z_e: torch.Tensor, update: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z_e: (B, latent_dim) -> (z_st, codes (B, n_codes), z_q)``, each code vector quantised on its own;
        ``update``: the codebook's EMA step on these vectors (the training forward's, never ``encode``'s)."""
        z_st, codes, z_q = self.codebook(z_e.reshape(-1, self.code_dim), update)
        return z_st.reshape(z_e.shape), codes.reshape(len(z_e), self.n_codes), z_q.reshape(z_e.shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantise(self.encoder(x))[2]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z_e = self.encoder(x)
        z, codes, z_q = self.quantise(z_e, update=self.training)
        commit = F.mse_loss(z_e.float(), z_q.detach().float())
        return {"image": self.decode(z), "z": z, "z_e": z_e, "codes": codes, "commit": commit}

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` rows of codes drawn uniformly from the codebook: ``(n, latent_dim)`` (see the module doc)."""
        codes = torch.randint(len(self.codebook.entries), (n, self.n_codes), generator=generator)
        return self.codebook.entries[codes.to(self.codebook.entries.device)].reshape(n, self.latent_dim)

    def objective(self, out: dict, batch: dict, recon: Callable, weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """Reconstruction + ``commitment * ||z_e - sg(z_q)||^2``; parts ``loss/vqvae/commit`` and ``perplexity``."""
        total, parts = super().objective(out, batch, recon)
        counts = torch.bincount(out["codes"].flatten(), minlength=len(self.codebook.entries)).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # the global batch's code histogram, not a mean of local ones
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        parts.update({"loss/vqvae/commit": out["commit"].detach(), "perplexity": perplexity})
        return total + self.commitment * out["commit"], parts

    def validation_terms(self, out: dict, x: torch.Tensor, eps: Callable, weight: float) -> tuple[Any, dict]:
        """Per image: the commitment term (added to the loss at ``commitment``)."""
        commit = (out["z_e"].float() - out["z"].detach().float()).square().mean(1)
        return self.commitment * commit, {"commit": commit}


def default_code_dim(latent_dim: int) -> int:
    """The largest divisor of ``latent_dim`` up to 8 (8 values per code for latent_dim 64: 8 codes)."""
    return max(d for d in range(1, 9) if latent_dim % d == 0)


def _check_vqvae(options: dict[str, Any]) -> None:
    latent_dim, code_dim = options.get("latent_dim") or 64, options.get("code_dim")
    if code_dim is not None and latent_dim % code_dim:
        raise ConfigError(f"model.code_dim: {code_dim} does not divide model.latent_dim={latent_dim}; the code is "
                          f"latent_dim / code_dim vectors of code_dim values (or leave code_dim unset)")


@register_generative("vqvae", "autoencoder", VQVAEOptions, check=_check_vqvae)
def build_vqvae(latent_dim: int = 64, codebook_size: int = 512, code_dim: int | None = None,
                commitment: float = 0.25, codebook_decay: float = 0.99, restart: float | None = None,
                **core: Any) -> VQVAE:
    """VQ-VAE with an EMA codebook: ``MODELS["vqvae"](latent_dim=64, codebook_size=512, code_dim=8, size=64, ...)``."""
    return VQVAE(latent_dim=latent_dim, codebook_size=codebook_size, code_dim=code_dim or default_code_dim(latent_dim),
                 commitment=commitment, codebook_decay=codebook_decay, restart=restart, **core)
