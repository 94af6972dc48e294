"""The configs that ship with the package: where they are and copying them out (``sandbox-init``).

A checkout (or an editable install) reads the repository's ``configs/``. A wheel (``pip install .``)
holds the same files as ``sandbox/packaged_configs/``: setup.py maps the repository's ``configs/``
onto that package at build time (``package_dir``; ``package_data`` in setup.cfg lists the files,
MANIFEST.in puts them in an sdist), so nothing is moved or duplicated in the repository.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sandbox.errors import SandboxError

PACKAGED = "packaged_configs"
#: the files that ship (setup.cfg's package_data must match: tests/test_console.py checks it)
PATTERNS = ("*.yaml", "studies/*.yaml")


def configs_dir(package: Path | None = None) -> Path:
    """The shipped configs: ``sandbox/packaged_configs`` in an installed wheel, else the checkout's
    ``configs/`` (``package``: the ``sandbox`` package folder, this module's by default)."""
    package = Path(package) if package else Path(__file__).resolve().parents[1]
    for cand in (package / PACKAGED, package.parent / "configs"):
        if config_files(cand):
            return cand
    raise SandboxError(f"no packaged configs under {package} (expected {PACKAGED}/ or ../configs/ with YAML "
                       "files); reinstall the sandbox: pip install .")


def config_files(folder: Path) -> list[Path]:
    """The shipped config files under ``folder``, relative to it, sorted."""
    folder = Path(folder)
    return sorted({p.relative_to(folder) for pat in PATTERNS for p in folder.glob(pat) if p.is_file()})


def copy_configs(dest: str | Path, force: bool = False, package: Path | None = None) -> list[Path]:
    """Copy the shipped configs into ``dest`` (created), keeping sub-folders; returns the files written.
    A file already there with other content (an edited config) is refused, naming it, unless ``force``;
    identical files are left alone, so running it twice writes nothing the second time."""
    src, dest = configs_dir(package), Path(dest)
    if dest.resolve() == src.resolve():
        return []
    files = config_files(src)
    check_inside(dest, files)
    differ = [f for f in files if (dest / f).is_file() and (dest / f).read_bytes() != (src / f).read_bytes()]
    if differ and not force:
        raise SandboxError(f"{dest / differ[0]} differs from the packaged config ({len(differ)} file(s) in {dest} "
                           "do): keep your edits and pick another folder, or overwrite them with --force")
    written = []
    for f in files:
        target = dest / f
        if target.is_file() and target.read_bytes() == (src / f).read_bytes():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / f, target)
        written.append(target)
    return written


def check_inside(dest: Path, files: list[Path]) -> None:
    """``sandbox-init`` writes only inside ``dest``: a symlink at ``dest`` or on the way to a file it
    would write (a planted ``configs/unet_dice.yaml -> ~/.bashrc``, a linked ``studies/``) is refused,
    naming it, before anything is written, and so is a destination that resolves outside ``dest``;
    ``--force`` overwrites files, never what a link points to."""
    dest = Path(dest)
    for f in files:
        for part in [dest, *(dest / p for p in reversed(f.parents[:-1])), dest / f]:
            if part.is_symlink():
                raise SandboxError(f"{part} is a symbolic link: sandbox-init writes only inside {dest}, never "
                                   "through a link; remove the link or pick another folder")
        if not (dest / f).resolve().is_relative_to(dest.resolve()):
            raise SandboxError(f"{dest / f} resolves to {(dest / f).resolve()}, outside {dest}: sandbox-init "
                               "writes only inside its folder; pick another folder")
