"""Reading YAML the sandbox can trust: bounded before and while it is parsed.

A config file is at most :data:`MAX_BYTES`, UTF-8, a regular file (a directory is named as one,
with the YAML files it holds). Its YAML 1.2 scalars (:class:`_Loader`) are composed into nodes
that are counted as they come, *every alias as a full copy of its anchor*: PyYAML shares an
anchored node among its aliases, so "billion laughs" costs nothing to compose, but everything
that later walks the value (type checks, messages) would pay for every copy. Over
:data:`MAX_NODES` such values, nesting deeper than :data:`MAX_DEPTH`, or an alias inside its own
anchor is one :class:`ConfigError` line naming the file and line, raised before the rest of the
file is even parsed. So is a key given twice in one mapping (``train:`` twice, a stage ``{name: b,
name: c}``), with its key path and both lines: YAML keeps the last silently, dropping the first's
settings. Merge keys (``<<: *base``) still merge, and a key set beside them overrides the merged one.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sandbox.errors import ConfigError, short, short_key

MAX_BYTES = 1 << 20  # a config is a few KiB; a bigger file is a wrong path (a dataset, a checkpoint)
MAX_NODES = 10_000  # scalars, lists and mappings, aliases expanded (the largest config in configs/ has 98)
MAX_DEPTH = 64  # nesting of lists and mappings (PyYAML composes recursively: deeper would hit Python's limit)
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``1e-3`` is a float, only true/false are booleans and an
    integer is what it looks like (PyYAML's 1.1 rules read ``1e-3`` as a string, ``no``/``off`` as
    False, which would turn ``mixed_precision: no`` into a boolean, ``010`` as 8 and ``1:30`` as 90);
    composing is bounded and each key of a mapping given once, as the module says."""

    def __init__(self, stream):
        super().__init__(stream)
        self._values = 0  # nodes so far, each alias counted as the expanded size of its anchor
        self._aliased = False  # whether an alias was expanded (then the count says so)
        self._open: list = []  # anchors of the nodes being composed (None for a node without one)
        self._path: list = []  # where each of them sits: a key, [index], or None (a key node, the root)
        self._sizes: dict[int, int] = {}  # expanded sizes of anchored nodes, memoised

    def _refuse(self, mark, what: str) -> None:
        raise ConfigError(f"line {mark.line + 1}: {what}")

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                self._refuse(event.start_mark, f"alias *{event.anchor} inside its own anchor &{event.anchor} "
                                               "(a value of infinite size); expected a tree of keys and values")
            node = super().compose_node(parent, index)
            self._values += expanded_size(node, self._sizes)
            self._aliased = True
        else:
            self._values += 1
            if len(self._open) >= MAX_DEPTH:
                self._refuse(event.start_mark, f"lists and mappings nested more than {MAX_DEPTH} deep")
            self._open.append(getattr(event, "anchor", None))
            self._path.append(_segment(index))
            try:
                node = super().compose_node(parent, index)
                if isinstance(node, yaml.MappingNode):
                    self._check_keys(node)
            finally:
                self._open.pop()
                self._path.pop()
        if self._values > MAX_NODES:
            self._refuse(event.start_mark, f"over {MAX_NODES:,} values" + (
                " with its aliases (*name) expanded; a config holds a few hundred: expected a smaller file, or "
                "aliases not nested in each other" if self._aliased else
                " (keys, items, lists and mappings); a config holds a few hundred: expected a smaller file"))
        return node

    def _check_keys(self, node: yaml.MappingNode) -> None:
        """Each key once per mapping: the mapping's own keys (merged ones, ``<<: *base``, may be
        overridden), compared as the values they load as (``1`` and ``0x1`` are one key)."""
        seen: dict = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue  # a mapping key is a scalar in safe YAML; a list key fails when constructed
            value = self.construct_object(key, deep=True)
            first = seen.setdefault(value, key)
            if first is not key:
                where = _dotted([*self._path, short_key(key.value)])
                a, b = first.start_mark, key.start_mark
                lines = (f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line else
                         f"both on line {a.line + 1}, columns {a.column + 1} and {b.column + 1}")
                self._refuse(b, f"key {where} given twice in one mapping ({lines}); YAML would keep the last "
                                "silently: expected each key once")


def _segment(index) -> str | None:
    """How a node composed at ``index`` (PyYAML's: the key node of a mapping value, an int in a
    list, None for a key or the root) extends the key path."""
    if isinstance(index, yaml.ScalarNode):
        return short_key(index.value)
    return f"[{index}]" if isinstance(index, int) else None


def _dotted(parts: list) -> str:
    """``["stages", "[0]", "name"]`` -> ``stages[0].name``."""
    out = ""
    for part in parts:
        if part is not None:
            out += part if part.startswith("[") or not out else f".{part}"
    return out or "(top level)"


_YAML11 = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:int")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)
# integers as YAML 1.2 reads them: a leading zero is decimal and a colon makes a string. PyYAML's 1.1
# rules read `seed: 010` as 8 (octal) and `train.epochs: 1:30` as 90 (base 60), silently; 0o/0x/0b
# prefixes and _ separators are explicit and stay
_INT = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0o[0-7][0-7_]*|0x[0-9a-fA-F][0-9a-fA-F_]*|0b[01][01_]*)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if not _INT.match(text):  # an explicit !!int tag on something else
        raise yaml.constructor.ConstructorError(None, None, f"not an integer: {short(text)}", node.start_mark)
    digits = text.replace("_", "").lstrip("+-")
    base = {"0o": 8, "0x": 16, "0b": 2}.get(digits[:2].lower(), 10)
    return (-1 if text.startswith("-") else 1) * int(digits[2:] if base != 10 else digits, base)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes a string wherever either reading would take it for something else: YAML
    1.1's (other tools) or :class:`_Loader`'s (``'08'``, ``'0o10'``, ``'1e3'`` were written bare, as 1.1
    sees strings there, and read back as numbers: a run named 08 could not be resumed)."""

    def resolve(self, kind, value, implicit):
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == "tag:yaml.org,2002:str":
            table = _Loader.yaml_implicit_resolvers
            for ours, regexp in table.get(value[:1] if value else "", []) + table.get(None, []):
                if regexp.match(value):
                    return ours
        return tag


def dump_yaml(data: Any) -> str:
    """``data`` as YAML that :func:`load_yaml_text` reads back equal (keys in their order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _line(text: str, limit: int = 150) -> str:
    """A library's message as part of one line: whitespace collapsed, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def expanded_size(root: yaml.Node, sizes: dict[int, int] | None = None) -> int:
    """Nodes under ``root`` counting each alias as a full copy of its anchor, linear in the
    *distinct* nodes (``sizes`` memoises by node id; the composer refuses cycles before this)."""
    sizes = {} if sizes is None else sizes
    stack = [(root, False)]
    while stack:
        node, closing = stack.pop()
        if closing:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
        elif id(node) not in sizes:
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def load_yaml_text(text: str, where: str = "YAML") -> Any:
    """Parse YAML 1.2 text, bounded as the module says. Syntax errors stay :class:`yaml.YAMLError`;
    a bound or a value that cannot be built is a :class:`ConfigError` starting with ``where``."""
    loader = _Loader(text)
    try:
        try:
            return loader.get_single_data()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (ValueError, OverflowError) as exc:  # a date like 2024-13-01, an int of over 4300 digits
            raise ConfigError(f"{where}: a value cannot be read ({_line(str(exc))})") from None
    finally:
        loader.dispose()


def _check_file(path: Path) -> None:
    if path.is_dir():
        try:
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        except OSError:
            found = []
        listed = ", ".join(str(path / n) for n in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(f"config file {short(str(path))} is a directory; expected a YAML file"
                          + (f", e.g. {listed}" if found else " (it holds no .yaml file)"))
    if not path.exists():
        configs = sorted(Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
        hint = "; available: " + ", ".join(str(c) for c in configs) if configs else ""
        raise ConfigError(f"config file {short(str(path))} not found{hint}")
    if not path.is_file():
        raise ConfigError(f"config file {short(str(path))} is not a regular file; expected a YAML file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size / 2**20:.1f} MiB; a config file is at most {MAX_BYTES >> 20} MiB "
                          "(a few KiB is usual): is it the right file?")


def parse_yaml_file(path: str | Path) -> Any:
    """The YAML value of a config file (None when it is empty), every failure one ConfigError line."""
    path = Path(path)
    _check_file(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # never more, even for a file that grew since the check
    except OSError as exc:
        raise ConfigError(f"config file {short(str(path))} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: over {MAX_BYTES >> 20} MiB; a config file is at most that: is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "expected a UTF-8 encoded YAML file") from None
    try:
        return load_yaml_text(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}:{where} is not valid YAML ({_line(problem)})") from None


def as_mapping(data: Any, path: str | Path) -> dict:
    """A parsed config file's top level: a mapping (an empty file is ``{}``)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def read_yaml(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping (configs, run configs, studies), bounded as above."""
    return as_mapping(parse_yaml_file(path), path)
