"""A packaged, non-editable install works: every package folder ships, the built wheel installed in a fresh
venv runs every ``sandbox-*`` command's real path on tiny runs from an empty directory, and what the
sandbox prints to run next is a command that exists in the user's install (``sandbox-evaluate`` there,
``python sandbox/evaluate.py`` in a checkout). ``sandbox-init`` writes only inside its folder.

The install test builds the wheel once per session (module fixtures) into a venv without pip that
reuses this interpreter's installed dependencies through a ``.pth`` file, so nothing is downloaded.
"""
import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox.errors import SandboxError
from tests.conftest import ROOT

SLOW = pytest.mark.slow
TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4",
        "model.width=4", "model.depth=2", "train.epochs=1", "train.num_images=1", "track.wandb=disabled",
        "train.mixed_precision=no"]
VAE = ["model.latent_dim=4", "train.fid_samples=8", "train.probe_samples=8"]


def console_scripts() -> dict[str, str]:
    """setup.cfg's console_scripts: ``{"sandbox-lr-find": "lr_find", ...}`` (script -> command module)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines()]
    pairs = [line.split("=") for line in lines if line and not line.startswith("#")]
    return {script.strip(): target.strip().removeprefix("sandbox.").removesuffix(":main") for script, target in pairs}


def fake_install(tmp_path: Path) -> Path:
    """A ``sandbox`` package folder as a wheel installs it: the command files, no setup.cfg beside it."""
    package = tmp_path / "site-packages" / "sandbox"
    package.mkdir(parents=True)
    for name in console_scripts().values():
        (package / f"{name}.py").write_text("")
    return package


# ----------------------------------------------------------------------------- the command form

def test_the_command_form_is_the_file_in_a_checkout_and_the_console_script_installed(tmp_path):
    from sandbox.invocation import command, from_checkout

    package = fake_install(tmp_path)
    assert from_checkout(ROOT / "sandbox") and not from_checkout(package)
    for script, name in console_scripts().items():  # every script setup.cfg declares, "_" spelled "-"
        assert command(name, package=ROOT / "sandbox") == f"python sandbox/{name}.py"
        assert command(name, package=package) == script
    assert command("train", 2, package=ROOT / "sandbox") == "accelerate launch --num_processes 2 sandbox/train.py"
    assert command("train", 2, package=package) == "accelerate launch --num_processes 2 -m sandbox.train"
    # in a checkout whose command file is gone, the file form would not run either
    assert command("nonesuch", package=ROOT / "sandbox") == "sandbox-nonesuch"


def test_the_printed_hints_follow_the_install(tmp_path, monkeypatch):
    """The next: lines, resume and restart lines say sandbox-* where the package is installed (fails on
    the hard-coded ``python sandbox/...``) and python sandbox/... in this checkout."""
    import sandbox.invocation
    from sandbox.engine.console import run_summary, stages_summary
    from sandbox.runs.rundir import resume_line, restart_line

    run = tmp_path / "my run"
    run.mkdir()
    (run / "config.yaml").write_text("name: r\n")
    quoted = f"'{run}'"
    checkout = run_summary(str(run), 3, "val/dice", 0.5, 1, "segmentation")
    assert f"  python sandbox/evaluate.py --run {quoted}  " in checkout
    assert resume_line(run) == f"python sandbox/train.py --resume {quoted}"

    monkeypatch.setattr(sandbox.invocation, "PACKAGE", fake_install(tmp_path))
    seg = run_summary(str(run), 3, "val/dice", 0.5, 1, "segmentation").splitlines()
    gen = stages_summary(str(run), 3, [], "generative").splitlines()
    assert seg[1:] == ["next:", f"  sandbox-evaluate --run {quoted}                  # scores on the test split",
                       f"  sandbox-predict --run {quoted} --input <images>  # masks for your images",
                       f"  sandbox-compare --run {quoted} <other runs>      # side by side"]
    assert [line.split()[0] for line in gen[-3:]] == ["sandbox-probe", "sandbox-interpolate", "sandbox-compare"]
    assert resume_line(run) == f"sandbox-train --resume {quoted}"
    assert resume_line(run, 2) == f"accelerate launch --num_processes 2 -m sandbox.train --resume {quoted}"
    assert restart_line(run) == f"sandbox-train --config '{run / 'config.yaml'}' --restart"


# ----------------------------------------------------------------------------- what ships

def test_every_package_folder_is_a_package_that_setuptools_finds():
    """find_packages (setup.py) skips a folder without __init__.py: the wheel then lacks it (sandbox/analysis
    did: every command but train and init failed with ModuleNotFoundError in a non-editable install)."""
    from setuptools import find_packages

    folders = {p.parent for p in (ROOT / "sandbox").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"package folders without __init__.py: {missing}"
    found = set(find_packages(str(ROOT), include=["sandbox", "sandbox.*"]))
    assert {".".join(f.relative_to(ROOT).parts) for f in folders} <= found


# ----------------------------------------------------------------------------- sandbox-init stays inside

def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("plant", ["config_file", "studies_folder", "the_target"])
def test_init_never_writes_through_a_symlink(tmp_path, plant):
    """``sandbox-init --force`` with a planted link refuses in one line naming it, and no file outside its
    folder changes (today --force overwrote the file a linked config pointed to)."""
    from sandbox.config.packaged import copy_configs

    outside = tmp_path / "outside"
    (outside / "studies").mkdir(parents=True)
    (outside / "unet_dice.yaml").write_text("precious\n")
    (outside / "studies" / "models.yaml").write_text("precious too\n")
    dest = tmp_path / "configs"
    if plant == "the_target":
        dest.symlink_to(outside, target_is_directory=True)
        link = dest
    else:
        dest.mkdir()
        link = dest / ("unet_dice.yaml" if plant == "config_file" else "studies")
        link.symlink_to(outside / link.name, target_is_directory=plant == "studies_folder")
    before = tree_hash(outside)
    with pytest.raises(SandboxError, match="^" + re.escape(f"{link} is a symbolic link: sandbox-init writes only inside")):
        copy_configs(dest, force=True)
    assert tree_hash(outside) == before
    assert link.is_symlink()


def test_init_still_copies_into_a_real_folder_under_a_linked_parent(tmp_path):
    """Only links at or under the target are refused: the target's own parents are the user's business."""
    from sandbox.config.packaged import config_files, configs_dir, copy_configs

    (tmp_path / "real").mkdir()
    (tmp_path / "home").symlink_to(tmp_path / "real", target_is_directory=True)
    written = copy_configs(tmp_path / "home" / "configs", force=True)
    assert len(written) == len(config_files(configs_dir())) and (tmp_path / "real" / "configs" / "unet_dice.yaml").is_file()


# ----------------------------------------------------------------------------- the wheel, installed

class Installed:
    """The wheel installed in a fresh venv; ``run`` runs one of its console scripts in an empty folder."""

    def __init__(self, venv: Path, work: Path):
        self.venv, self.work = venv, work
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        self.env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", WANDB_MODE="disabled")

    def run(self, script: str, *args: str, code: int = 0, timeout: float = 300) -> str:
        proc = subprocess.run([str(self.venv / "bin" / script), *args], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        assert proc.returncode == code, f"{script} {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}"
        assert "Traceback" not in out, out[-4000:]
        return out


def _check(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """Build the wheel from a copy of the sources (a stale build/ in the checkout could hide a missing
    package), install it without its dependencies into a venv that sees this interpreter's."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("sandbox", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _check(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(base / "dist"), str(src)])
    venv = base / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    purelib = subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                       "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib) / "_sandbox_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    (wheel,) = (base / "dist").glob("sandbox-*.whl")
    _check(pip + ["--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel)])
    work = base / "work"
    work.mkdir()
    return Installed(venv, work)


@pytest.fixture(scope="module")
def seg_run(installed) -> str:
    """sandbox-init, then one tiny segmentation run from its configs; the output of both."""
    out = installed.run("sandbox-init")
    return out + installed.run("sandbox-train", "--config", "configs/unet_dice.yaml", "name=seg", *TINY)


@pytest.fixture(scope="module")
def vae_run(installed, seg_run) -> str:
    return installed.run("sandbox-train", "--config", "configs/vae_attractors.yaml", "name=vae", *TINY, *VAE)


@pytest.fixture(scope="module")
def sweep(installed, seg_run) -> str:
    """A 2-cell grid, each cell a child process that runs the installed sandbox/train.py."""
    return installed.run("sandbox-sweep", "--config", "configs/unet_dice.yaml", "--grid", "model.width=4,6",
                         "--name", "sw", "--out-dir", "runs", "--jobs", "2", *TINY)


@SLOW
def test_the_venv_imports_the_installed_package_not_the_checkout(installed):
    out = installed.run("python", "-c", "import sandbox, sandbox.analysis.measure; print(sandbox.__file__)")
    assert Path(out.strip()).is_relative_to(installed.venv), out
    shipped = Path(out.strip()).parent
    folders = {p.parent.relative_to(ROOT / "sandbox") for p in (ROOT / "sandbox").rglob("*.py")}
    assert all((shipped / f / "__init__.py").is_file() for f in folders)
    assert (shipped / "packaged_configs" / "unet_dice.yaml").is_file()


@SLOW
def test_init_and_train_print_installed_commands(installed, seg_run, vae_run):
    w = installed.work
    assert (w / "configs" / "unet_dice.yaml").is_file() and (w / "configs" / "studies" / "models.yaml").is_file()
    assert "e.g. sandbox-train --config configs/unet_dice.yaml" in seg_run
    for run in ("seg", "vae"):
        assert (w / "runs" / run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert "python sandbox/" not in seg_run + vae_run
    assert "\n  sandbox-evaluate --run runs/seg " in seg_run and "\n  sandbox-predict --run runs/seg " in seg_run
    assert "\n  sandbox-probe --run runs/vae " in vae_run and "\n  sandbox-interpolate --run runs/vae " in vae_run
    again = installed.run("sandbox-train", "--config", "configs/unet_dice.yaml", "name=seg", *TINY, code=2)
    assert "continue it with: sandbox-train --resume runs/seg," in again, again


@SLOW
def test_evaluate_and_predict(installed, seg_run):
    w = installed.work
    installed.run("sandbox-evaluate", "--run", "runs/seg")
    assert (w / "runs" / "seg" / "eval" / "test.json").is_file()
    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(w / f"photo{i}.png")
    out = installed.run("sandbox-predict", "--run", "runs/seg", "--input", "photo0.png", "photo1.png", "--out", "pred")
    assert "predicted 2 image(s)" in out
    assert all((w / "pred" / f"photo{i}_mask.png").is_file() for i in range(2))


@SLOW
def test_probe_and_interpolate(installed, vae_run):
    w = installed.work
    installed.run("sandbox-probe", "--run", "runs/vae", "--samples", "8", "--fit", "8")
    assert (w / "runs" / "vae" / "eval" / "probe_test.json").is_file()
    installed.run("sandbox-interpolate", "--run", "runs/vae", "--random", "2", "--steps", "3", "--no-wandb")
    assert list((w / "runs" / "vae" / "images").glob("interp_*.png"))


@SLOW
def test_sweep_and_compare(installed, sweep):
    w = installed.work
    assert sweep.count("finished in") == 2
    assert "Command: `sandbox-sweep --config configs/unet_dice.yaml" in (w / "runs" / "sw" / "summary.md").read_text()
    log = (w / "runs" / "sw" / "logs" / "width-4_s0.log").read_text()
    assert "\n  sandbox-evaluate --run " in log and "python sandbox/" not in log
    installed.run("sandbox-compare", "--run", "runs/seg", "runs/sw/width-6_s0", "--out", "cmp")
    assert (w / "cmp" / "report.md").is_file()


@SLOW
def test_summary_and_lr_find(installed, seg_run):
    out = installed.run("sandbox-summary", "--config", "configs/unet_dice.yaml", "data.size=32", "model.width=4",
                        "model.depth=2")
    assert "| unet | 32 |" in out
    installed.run("sandbox-lr-find", "--config", "configs/unet_dice.yaml", *TINY, "--steps", "10", "--out", "lr")
    assert (installed.work / "lr" / "lr_find.png").is_file()
