import os
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _tiny_overrides(tmp_path):
    """A run small enough for a few seconds on CPU, written under tmp_path."""
    return [f"out_dir={tmp_path}", "name=tiny", "data.size=32", "data.num_train=8", "data.num_val=4",
            "data.batch_size=4", "model.width=4", "model.depth=2", "train.epochs=1", "train.log_every=1",
            "train.num_images=2", "track.wandb=disabled", "train.mixed_precision=no"]


tiny_overrides = pytest.fixture(name="tiny_overrides")(_tiny_overrides)


def copy_run(src: Path, dst: Path) -> Path:
    """A trained run directory copied to ``dst``, its own paths in its text files (config.yaml's out_dir,
    checkpoints' configs, eval json) pointing at the copy, as if it had been trained there."""
    import shutil

    shutil.copytree(src, dst)
    old, new = str(Path(src).parent), str(Path(dst).parent)
    for f in dst.rglob("*"):
        if f.suffix in (".yaml", ".json", ".jsonl") and f.is_file():
            text = f.read_text()
            if old in text:
                f.write_text(text.replace(old, new))
    return dst


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """The run of ``tiny_overrides`` (unet, 1 epoch x 2 steps), trained once for the whole session; tests
    get their own copy from ``tiny_run``."""
    from sandbox import build_trainer, load_config

    out = tmp_path_factory.mktemp("tiny_trained")
    build_trainer(load_config(ROOT / "configs" / "unet_dice.yaml", _tiny_overrides(out))).fit()
    return out / "tiny"


@pytest.fixture
def tiny_run(tiny_trained, tmp_path):
    """``tmp_path/tiny``: a private copy of ``tiny_trained``, as if ``tiny_overrides`` had just been trained here."""
    return copy_run(tiny_trained, tmp_path / "tiny")


def command(name: str):
    """A command's namespace (``command("compare").main()``), loaded from its file as
    ``python sandbox/<name>.py`` loads it: commands are run, never imported by the library."""
    import runpy
    from types import SimpleNamespace

    return SimpleNamespace(**runpy.run_path(str(ROOT / "sandbox" / f"{name}.py"), run_name=f"command_{name}"))


class Ran(NamedTuple):
    code: int
    out: str
    err: str


def run_command(name: str, *args) -> Ran:
    """``python sandbox/<name>.py *args`` in this process: (exit status, stdout, stderr). The one in-process
    command runner of the suite: a subprocess costs a Python + torch start (seconds); tests that are about
    a real process (exit by signal, process groups, a fresh interpreter) start one themselves."""
    import contextlib
    import io
    import sys

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", [f"sandbox/{name}.py", *map(str, args)])
        try:
            command(name).main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


def cli(name: str, args=()) -> tuple[int, list[str]]:
    """``python sandbox/<name>.py *args`` in this process: (exit status, stderr lines)."""
    code, _, err = run_command(name, *args)
    return code, err.strip().splitlines()


def train_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """``python sandbox/train.py *args`` in this process: (exit status, stdout + stderr)."""
    code, out, err = run_command("train", *args)
    return code, out + err


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is faster than two on shared cores. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"  # white, RGBA
                        "0000000d49444154789c63f8ffffff7f0009fb03fd2a86e38a0000000049454e44ae426082")


def _savefig_1px(self, fname, *args, **kwargs):
    if hasattr(fname, "write"):
        fname.write(PNG_1PX)
    else:
        with open(fname, "wb") as f:
            f.write(PNG_1PX)


@contextmanager
def figures(real: bool):
    """matplotlib renders for real (``real``) or draws nothing: ``Figure.savefig`` writes a 1-pixel PNG where
    the figure would go and ``tight_layout`` is skipped. With nothing drawn every line of sandbox's figure
    code still runs and every file lands where it would (names, directories, atomic renames); only the
    rasterising is left out: 2 of the 3 s a tiny run takes on CPU. PIL-written images (masks, grids) are
    always real."""
    from matplotlib.figure import Figure

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", REAL_FIGURE["savefig"] if real else _savefig_1px)
        mp.setattr(Figure, "tight_layout", REAL_FIGURE["tight_layout"] if real else lambda self, *a, **k: None)
        yield


REAL_FIGURE: dict = {}


@pytest.fixture(scope="session", autouse=True)
def cheap_figures_everywhere():
    """No figure is rendered in the suite (fixtures of every scope included), see ``figures``; a test that
    looks at a figure's pixels or file size opts in with ``@pytest.mark.real_figures``, a fixture with
    ``with figures(real=True):``."""
    from matplotlib.figure import Figure

    REAL_FIGURE.update(savefig=Figure.savefig, tight_layout=Figure.tight_layout)
    with figures(real=False):
        yield


@pytest.fixture(autouse=True)
def real_figures_where_marked(request):
    if request.node.get_closest_marker("real_figures"):
        with figures(real=True):
            yield
    else:
        yield


# ----------------------------------------------------------------------------- pytest-xdist
@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """``-n N`` alone distributes with ``loadgroup`` instead of ``load``: as ``load``, except that the tests
    grouped below run on one worker, so that a module-scoped fixture (a trained run, a built wheel) is
    made once, not once per worker. An explicit ``--dist`` is kept."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no":
        config.option.dist = "loadgroup"


def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture defined in their module: one xdist group per module."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = getattr(info, "name2fixturedefs", {}) if info is not None else {}
        module = getattr(item, "module", None)
        if module is None or item.get_closest_marker("xdist_group"):
            continue
        shared = [name for name, fds in defs.items()
                  if fds and fds[-1].scope == "module" and getattr(fds[-1], "baseid", "") == item.nodeid.split("::")[0]]
        if shared:
            item.add_marker(pytest.mark.xdist_group(module.__name__))
