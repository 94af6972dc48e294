"""How the user types a sandbox command in this install, for every command line the sandbox prints
(the ``next:`` lines after a run, how to resume or restart one, a sweep's own command):

    command("evaluate")            # 'python sandbox/evaluate.py' in a source checkout, else 'sandbox-evaluate'
    command("train", processes=2)  # 'accelerate launch --num_processes 2 sandbox/train.py' (or -m sandbox.train)

A checkout (or an editable install of one) runs the command files from the repository root; an
installed wheel has no ``sandbox/<command>.py`` beside the user, only the console scripts that
setup.cfg declares (``sandbox-<command>``, ``_`` spelled ``-``).
"""
from __future__ import annotations

from pathlib import Path

#: the ``sandbox`` package folder this module belongs to
PACKAGE = Path(__file__).resolve().parent
#: files that only a source checkout holds beside the package (an install puts it in site-packages)
CHECKOUT_FILES = ("setup.cfg", "pyproject.toml")


def from_checkout(package: Path | None = None) -> bool:
    """True where ``package`` (the ``sandbox`` folder, this one by default) sits in a source checkout."""
    package = PACKAGE if package is None else Path(package)
    return any((package.parent / name).is_file() for name in CHECKOUT_FILES)


def command(name: str, processes: int = 1, package: Path | None = None) -> str:
    """The command line that runs the command ``name`` (``train``, ``evaluate``, ``lr_find``, ...) in
    this install, with ``accelerate launch`` in front for several processes; ``package`` as above."""
    package = PACKAGE if package is None else Path(package)
    checkout = from_checkout(package) and (package / f"{name}.py").is_file()
    if processes > 1:  # accelerate launches a file, or a module (-m): a console script is neither
        target = f"sandbox/{name}.py" if checkout else f"-m sandbox.{name}"
        return f"accelerate launch --num_processes {processes} {target}"
    return f"python sandbox/{name}.py" if checkout else "sandbox-" + name.replace("_", "-")
