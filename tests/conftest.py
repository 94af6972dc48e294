import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def tiny_overrides(tmp_path):
    """A run small enough for a few seconds on CPU, written under tmp_path."""
    return [f"out_dir={tmp_path}", "name=tiny", "data.size=32", "data.num_train=8", "data.num_val=4",
            "data.batch_size=4", "model.width=4", "model.depth=2", "train.epochs=1", "train.log_every=1",
            "train.num_images=2", "track.wandb=disabled", "train.mixed_precision=no"]


def command(name: str):
    """A command's namespace (``command("compare").main()``), loaded from its file as
    ``python sandbox/<name>.py`` loads it: commands are run, never imported by the library."""
    import runpy
    from types import SimpleNamespace

    return SimpleNamespace(**runpy.run_path(str(ROOT / "sandbox" / f"{name}.py"), run_name=f"command_{name}"))


def train_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """``python sandbox/train.py *args`` in this process: (exit status, stdout + stderr)."""
    import sys

    monkeypatch.setattr(sys, "argv", ["sandbox/train.py", *args])
    try:
        command("train").main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is faster than two on shared cores. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
