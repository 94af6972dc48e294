"""What a checkpoint directory holds (issue 17): the weights once (model.safetensors), optimizer and RNG
state only where a resume reads them (last, epoch_NNN), best the weights alone; runs of earlier
versions (model.pt beside or instead of model.safetensors) still load."""
import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import read_state, read_weights
from sandbox.runs.load import load_run
from tests.conftest import ROOT

CFG = ROOT / "configs" / "unet_dice.yaml"


def train(overrides, until_epoch=None):
    trainer = build_trainer(load_config(CFG, overrides))
    trainer.fit(until_epoch=until_epoch)
    return trainer


def test_best_holds_the_weights_alone_and_is_never_resumed_from(tmp_path, tiny_overrides):
    train(tiny_overrides)
    ck = tmp_path / "tiny" / "checkpoints"
    assert sorted(p.name for p in (ck / "best").iterdir()) == ["config.yaml", "model.safetensors", "trainer_state.json"]
    assert read_state(ck / "best")["weights_only"] is True and "weights_only" not in read_state(ck / "last")
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= {p.name for p in (ck / "last").iterdir()}
    assert not list(ck.glob("*/model.pt"))  # the weights once
    with pytest.raises(SandboxError, match=r"best' holds weights only .*checkpoints/last"):
        train(tiny_overrides + [f"train.resume={ck / 'best'}"])


def test_a_kill_between_best_and_last_resumes_from_last_exactly(tmp_path, tiny_overrides, monkeypatch):
    """best is saved before last: a kill between them leaves best one epoch ahead. best cannot be
    resumed from (no optimizer state), so the resume takes last and redoes the epoch: the same weights."""
    base = [o for o in tiny_overrides if not o.startswith(("name=", "train.epochs="))] + ["train.epochs=2"]
    straight = train(base + ["name=straight"])
    from sandbox.engine.checkpoint import Checkpoints

    real = Checkpoints.save

    def killed_before_last(self, which, model, state, schedulers=()):
        if which == "last" and state["epoch"] == 2:
            raise KeyboardInterrupt("killed between best and last")
        return real(self, which, model, state, schedulers)

    monkeypatch.setattr(Checkpoints, "save", killed_before_last)
    with pytest.raises(KeyboardInterrupt):
        train(base + ["name=killed"])
    monkeypatch.setattr(Checkpoints, "save", real)
    ck = tmp_path / "killed" / "checkpoints"
    assert (read_state(ck / "best")["epoch"], read_state(ck / "last")["epoch"]) == (2, 1)
    resumed = train(base + ["name=ignored", f"train.resume={tmp_path / 'killed'}"])
    assert resumed.state.epoch == 2
    for which in ("last", "best"):
        a, b = (read_weights(d / "checkpoints" / which / "model.safetensors") for d in (straight.run.path, ck.parent))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), which


def test_a_run_of_an_earlier_version_with_model_pt_still_loads(tmp_path, tiny_overrides):
    train(tiny_overrides)
    best = tmp_path / "tiny" / "checkpoints" / "best"
    _, model = load_run(tmp_path / "tiny", device="cpu")
    state = read_weights(best / "model.safetensors")
    # both files (as earlier versions wrote): model.safetensors is read, model.pt never opened
    (best / "model.pt").write_bytes(b"not even a torch file")
    _, again = load_run(tmp_path / "tiny", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # model.pt alone (a pickled state_dict, keys of a compiled model): read through load_safely
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, best / "model.pt")
    (best / "model.safetensors").unlink()
    _, legacy = load_run(tmp_path / "tiny", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), legacy.state_dict().values()))
