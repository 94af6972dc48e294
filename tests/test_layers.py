"""The layering of docs/architecture.md holds: no import cycle, no import of a command, no import up
the layer order. Every module under sandbox/ is parsed with ``ast``; imports inside functions count."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sandbox"


def read_layers(doc: str) -> dict[str, int]:
    """``{module prefix: layer}`` from the ```layers block of docs/architecture.md."""
    block = re.search(r"```layers\n(.*?)```", doc, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    layers = {}
    for line in block.group(1).strip().splitlines():
        number, _name, *prefixes = line.split()
        layers.update({p: int(number) for p in prefixes})
    return layers


LAYERS = read_layers((ROOT / "docs" / "architecture.md").read_text())
COMMANDS = {p for p, n in LAYERS.items() if n == max(LAYERS.values())}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ("sandbox",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The sandbox modules ``path`` imports anywhere in its body (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m == "sandbox" or m.startswith("sandbox.")}


def layer_of(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert prefix is not None, f"{module} is in no layer of docs/architecture.md"
    return LAYERS[prefix]


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = all_modules(root)
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def violations(g: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in sorted(g.items()):
        for dst in sorted(targets):
            if dst in COMMANDS:
                out.append(f"{src} imports the command {dst}")
            elif layer_of(dst) > layer_of(src) and dst != "sandbox":
                out.append(f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})")
            elif dst == "sandbox" and layer_of(src) < layer_of("sandbox"):
                out.append(f"{src} (layer {layer_of(src)}) imports the package API sandbox")
    return out


def test_every_module_has_a_layer():
    for m in all_modules():
        layer_of(m)


def test_no_import_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_no_import_of_a_command_and_none_up_the_layers():
    assert violations(graph()) == []


def test_the_checks_catch_a_re_added_cycle_and_an_upward_import(tmp_path):
    """Today's old cycles, planted in a copy of the package: trainers importing the probe command, and
    the core importing the model registry; each must be reported."""
    import shutil

    copy = tmp_path / "sandbox"
    shutil.copytree(PACKAGE, copy)
    assert graph(copy) == graph() and find_cycle(graph(copy)) is None
    rec = copy / "trainers" / "reconstruction.py"
    rec.write_text(rec.read_text() + "\n\ndef _late():\n    from sandbox.probe import main  # noqa\n")
    core = copy / "nn" / "core.py"
    core.write_text(core.read_text() + "\n\ndef _late():\n    from sandbox.models import MODELS  # noqa\n")
    models = copy / "models" / "spec.py"
    models.write_text(models.read_text() + "\n\ndef _late():\n    from sandbox.trainers import TRAINERS  # noqa\n")
    g = graph(copy)
    bad = violations(g)
    assert "sandbox.trainers.reconstruction imports the command sandbox.probe" in bad
    assert "sandbox.nn.core (layer 1) imports sandbox.models (layer 2)" in bad
    assert find_cycle(g) is not None  # models -> trainers -> ... -> models


@pytest.mark.parametrize("layer_line", ["0  base        sandbox.errors"])
def test_the_layer_block_is_read(layer_line):
    assert read_layers(f"```layers\n{layer_line}\n```") == {"sandbox.errors": 0}
