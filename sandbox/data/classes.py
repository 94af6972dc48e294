"""Classes as data: the classes of a class-map target, their colours, and how a sample stores them.

A target with K > 1 classes is a class map. A sample holds it as ``(1, H, W)`` float class ids in
``0 .. K-1`` with :data:`IGNORE` (-1) on unlabelled pixels (single-label: one softmax over K logits),
or, with ``data.multilabel``, as ``(K, H, W)`` in {0, 1}, one channel per class, channels free to
overlap (independent sigmoids). Losses and metrics tell the two apart by the target's channels, so
multi-label is a property of the data, not a second code path. A target with one class (``mask``)
is the binary path, unchanged.

``data.classes`` (folders) names the classes of the ``mask`` target in id order; an entry is a name
(index masks: the pixel value is the id) or ``{name: colour}`` (palette and RGB colour masks: the
colour is the class), a colour being ``'#rrggbb'`` or ``[r, g, b]`` in 0..255. Built-in datasets
declare their class targets (``Dancers.classes = {"parts": ...}``). Classes without a colour are
drawn with :data:`PALETTE`, a fixed order, so a class keeps its colour in every picture.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from sandbox.errors import ConfigError, short

IGNORE = -1  # the class id of unlabelled pixels inside the sandbox (data.ignore_index is the files' value)

# fixed legend colours (tab10 without grey, then more), by class id, for classes that bring none
PALETTE = ((0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148))


class ClassSpec(NamedTuple):
    name: str
    color: Optional[tuple[int, int, int]]  # the colour in palette / RGB masks; None: index masks


def _color(value: Any, where: str) -> tuple[int, int, int]:
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    elif (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return tuple(value)  # type: ignore[return-value]
    raise ConfigError(f"{where}: colour {short(value)}; expected '#rrggbb' or [r, g, b] with values in 0..255")


def parse_classes(entries: Any, where: str = "data.classes") -> tuple[ClassSpec, ...]:
    """``["background", "person"]`` or ``[{background: "#000000"}, {person: [255, 0, 0]}]`` -> ClassSpecs.

    At least two classes, unique names, unique colours; either every class has a colour or none."""
    if not isinstance(entries, (list, tuple)) or len(entries) < 2:
        raise ConfigError(f"{where}: got {short(entries)}, expected a list of at least 2 classes in id order, "
                          "each a name or {name: colour}")
    specs = []
    for i, e in enumerate(entries):
        if isinstance(e, str) and e:
            specs.append(ClassSpec(e, None))
        elif isinstance(e, dict) and len(e) == 1 and isinstance(next(iter(e)), str):
            name, colour = next(iter(e.items()))
            specs.append(ClassSpec(name, _color(colour, f"{where}[{i}]")))
        else:
            raise ConfigError(f"{where}[{i}]: got {short(e)}, expected a class name or {{name: colour}}")
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise ConfigError(f"{where}: class names repeat ({', '.join(names)}); expected each once")
    coloured = [s.color for s in specs if s.color is not None]
    if coloured and len(coloured) < len(specs):
        raise ConfigError(f"{where}: some classes have a colour and some not; expected a colour for every class "
                          "(palette or RGB masks) or for none (index masks)")
    if len(set(coloured)) < len(coloured):
        raise ConfigError(f"{where}: two classes share a colour; expected one colour per class")
    return tuple(specs)


def colors(specs: tuple[ClassSpec, ...]) -> np.ndarray:
    """``(K, 3) uint8``: each class's own colour, else :data:`PALETTE` by id (cycled)."""
    return np.array([s.color if s.color is not None else PALETTE[i % len(PALETTE)] for i, s in enumerate(specs)],
                    np.uint8)


def describe(specs: tuple[ClassSpec, ...]) -> str:
    """``"0 background #000000, 1 person #ff0000"``: the known classes, for messages."""
    return ", ".join(f"{i} {s.name}" + (f" #{bytes(s.color).hex()}" if s.color else "") for i, s in enumerate(specs))


def target_classes(dataset_cls: type, data_classes: Any = None) -> dict[str, tuple[ClassSpec, ...]]:
    """``{target: (ClassSpec, ...)}``, the class-map targets (K > 1 logits each) of a dataset class: its own
    (``Dancers.classes``: ``parts``) and ``mask`` when ``data.classes`` names the classes of its masks."""
    out = dict(getattr(dataset_cls, "classes", {}))
    if data_classes:
        out["mask"] = parse_classes(data_classes)
    return out
