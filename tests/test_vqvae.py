"""The VQ-VAE family (sandbox/models/vqvae.py): straight-through gradient, exact quantisation on its own entries,
the EMA codebook update by hand, the commitment term, its options, and a tiny run of its committed config."""
import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.errors import ConfigError
from sandbox.models import MODELS
from sandbox.models.objective import Step
from sandbox.models.vqvae import SMOOTHING, Codebook
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**kw):
    torch.manual_seed(0)
    return MODELS["vqvae"](size=16, width=4, depth=2, **{"latent_dim": 8, "code_dim": 2, "codebook_size": 16, **kw})


def test_straight_through_gradient_equals_the_decoders_gradient_at_the_quantised_code():
    model = tiny().eval()
    z_e = (torch.randn(3, 8) * 2).requires_grad_()
    z_st, _, z_q = model.quantise(z_e)
    assert torch.allclose(z_st.detach(), z_q, atol=1e-6)  # the decoder sees the quantised code (to rounding)
    target = torch.rand(3, 3, 16, 16)
    (model.decode(z_st) - target).square().sum().backward()
    at_code = z_q.detach().clone().requires_grad_()
    (model.decode(at_code) - target).square().sum().backward()
    assert at_code.grad.abs().sum() > 0 and torch.allclose(z_e.grad, at_code.grad)


def test_a_codebook_equal_to_the_inputs_quantises_them_without_error():
    book = Codebook(size=5, dim=3)
    inputs = torch.randn(5, 3) * 3
    book.entries.copy_(inputs)
    z_st, codes, z_q = book(inputs)
    assert torch.equal(codes, torch.arange(5)) and torch.equal(z_q, inputs) and torch.equal(z_st, inputs)
    assert torch.nn.functional.mse_loss(inputs, z_q) == 0


def test_the_ema_update_of_a_code_matches_a_hand_computation():
    """Two entries e0 = (0, 0), e1 = (10, 10); three vectors near e0, decay 0.9. Sizes start at 1 with sums =
    entries: N0 = 0.9 * 1 + 0.1 * 3 = 1.2, m0 = 0.9 * (0, 0) + 0.1 * (2, 2) = (0.2, 0.2); N1 = 0.9, m1 = (9, 9);
    Laplace: N~k = (Nk + eps) / (2.1 + 2 eps) * 2.1; e0 = m0 / N~0 ~ (1/6, 1/6), e1 = m1 / N~1 ~ (10, 10)."""
    book = Codebook(size=2, dim=2, decay=0.9).train()
    book.entries.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    book.entry_sum.copy_(book.entries)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    _, codes, z_q = book(x, update=True)
    assert codes.tolist() == [0, 0, 0] and torch.equal(z_q, torch.zeros(3, 2))  # the entries before the update
    eps = SMOOTHING
    n0 = (1.2 + eps) / (2.1 + 2 * eps) * 2.1
    n1 = (0.9 + eps) / (2.1 + 2 * eps) * 2.1
    assert torch.allclose(book.cluster_size, torch.tensor([1.2, 0.9]))
    assert torch.allclose(book.entries[0], torch.tensor([0.2 / n0, 0.2 / n0]), atol=1e-6)
    assert torch.allclose(book.entries[0], torch.full((2,), 1 / 6), atol=1e-4)
    assert torch.allclose(book.entries[1], torch.tensor([9 / n1, 9 / n1]), atol=1e-5)
    assert torch.allclose(book.entries[1], torch.full((2,), 10.0), atol=1e-3)  # unused: stays where it was


def test_dead_codes_restart_at_encoder_vectors():
    book = Codebook(size=3, dim=2, decay=0.5, restart=0.6).train()
    book.entries.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [-50.0, -50.0]]))
    book.entry_sum.copy_(book.entries)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    book(x, update=True)  # sizes 0.5 * 1 + 0.5 * (2, 0, 0) = (1.5, 0.5, 0.5): entries 1 and 2 are dead
    assert book.cluster_size.tolist() == [1.5, 1.0, 1.0]
    assert all(any(torch.equal(book.entries[k], row) for row in x) for k in (1, 2))


def test_the_loss_adds_the_commitment_term_at_its_weight():
    """z_e = (0.5, 0) against the entry (0, 0): ||z_e - z_q||² averaged over the 2 values is 0.125."""
    book = Codebook(size=1, dim=2)
    book.entries.zero_()
    z_e = torch.tensor([[0.5, 0.0]])
    _, _, z_q = book(z_e)
    assert torch.nn.functional.mse_loss(z_e, z_q) == 0.125
    model = tiny(commitment=0.4).train()
    batch = {"image": torch.rand(2, 3, 16, 16)}
    total, parts = model.loss(batch, Step(criterion=lambda out, target: (torch.tensor(1.0), {"image/mse": 1.0})))
    commit = parts["loss/vqvae/commit"]
    assert commit > 0 and torch.allclose(total, 1.0 + 0.4 * commit)
    assert 1 <= parts["perplexity"] <= 2 * 4  # at most the 8 code vectors of the batch in use


def test_sampling_draws_codebook_entries_and_options_are_checked():
    model = tiny().eval()
    z = model.prior(5, torch.Generator().manual_seed(0))
    rows = z.reshape(-1, 2)
    assert all((model.codebook.entries == r).all(1).any() for r in rows)  # every code an entry
    assert model.sample(2).shape == (2, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"^model\.code_dim: 3 does not divide model\.latent_dim=8"):
        tiny(code_dim=3)
    with pytest.raises(ConfigError, match=r"^model\.commitment: got -1, expected a value in \[0, inf\)$"):
        tiny(commitment=-1)
    with pytest.raises(ConfigError, match=r"^model\.codebook_size: unknown option for vae"):
        MODELS["vae"](size=16, codebook_size=8)


def test_the_committed_config_trains_a_tiny_run(tmp_path, tiny_overrides):
    cfg = load_config(ROOT / "configs" / "vqvae_attractors.yaml", tiny_overrides + [
        "data.size=16", "model.latent_dim=8", "model.code_dim=4", "train.fid_samples=8", "train.probe_samples=8"])
    trainer = build_trainer(cfg)
    before = trainer.unwrapped.codebook.entries.clone()
    trainer.fit()
    assert not torch.equal(trainer.unwrapped.codebook.entries.cpu(), before)  # the EMA moved the used entries
    from sandbox.tracking.metrics_log import read_metrics

    rows = read_metrics(tmp_path / "tiny" / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert {"train/loss/vqvae/commit", "train/perplexity", "train/loss/image/mse"} <= set(train[0])
    val = [r for r in rows if r["split"] == "val"][0]
    assert {"val/commit", "val/fid_own", "val/probe_r2_linear"} <= set(val)
