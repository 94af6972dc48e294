"""Load a model exported by ``sandbox-export``: the network file and the ``preprocessing.json`` beside it.

    cfg, model = load_exported("runs/unet_dice/export/model.onnx")   # or model.pt (TorchScript)
    model(x)    # x: (B, 3, H, W) float32 in [0, 1] -> {"mask": logits, ...}, as the trained torch model

``model`` has the call signature of the run's torch model, so predict.py's path (:mod:`sandbox.runs.inference`)
runs it unchanged; ``cfg`` is a default Config carrying what preprocessing.json says of the data (size,
resize). Nothing in an export folder is ever executed as Python: ONNX is data run by onnxruntime; a
``.pt`` must be a TorchScript archive (``torch.jit.save``: TorchScript code and tensors, read by
``torch.jit.load``), and a plain pickle or a ``torch.save`` file is refused before anything reads it.
preprocessing.json is checked field by field (:func:`check_preprocessing`): a bad field is one line.
"""
from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sandbox.config import Config
from sandbox.errors import SandboxError, short

FORMAT = "sandbox-export/1"
PREPROCESSING = "preprocessing.json"
RUNTIMES = {"onnx": ".onnx", "torchscript": ".pt"}
KINDS = ("segmentation", "decoder")
ACTIVATIONS = ("sigmoid", "softmax", "none")
OUTPUT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # a loss target's name; never a path
MAX_BYTES = 1 << 20  # a preprocessing.json is a few KiB
EXTRA = "pip install 'sandbox[export]' (onnx, onnxruntime)"


def onnxruntime():
    """The onnxruntime module, or one line naming the extra that installs it (imported only when needed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SandboxError(f"ONNX export and ONNX models need onnxruntime, which is not installed: {EXTRA}") from None
    return ort


def _field(spec: dict, key: str, path: Path, ok, expected: str) -> Any:
    """``spec[a][b]`` for ``key = "a.b"``, checked by ``ok(value)``; else one line naming the field."""
    value: Any = spec
    for part in key.split("."):  # a number steps into a list: outputs.0.name
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)] if int(part) < len(value) else KeyError
        else:
            value = value.get(part, KeyError) if isinstance(value, dict) else KeyError
    if value is KeyError:
        raise SandboxError(f"{path}: field {key} is missing; expected {expected} (the file sandbox-export writes)")
    try:
        good = ok(value)
    except (TypeError, ValueError):
        good = False
    if not good:
        raise SandboxError(f"{path}: field {key}: got {short(value)}, expected {expected}")
    return value


def _is_int(v, lo: int = 1, hi: int = 1 << 16) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check_preprocessing(spec: Any, path: Path) -> dict:
    """``spec`` (a parsed preprocessing.json) checked field by field; returns it. One line per bad field."""
    if not isinstance(spec, dict):
        raise SandboxError(f"{path}: holds a {type(spec).__name__}; expected a JSON object written by sandbox-export")
    _field(spec, "format", path, lambda v: v == FORMAT, repr(FORMAT))
    kind = _field(spec, "kind", path, lambda v: v in KINDS, " or ".join(KINDS))
    _field(spec, "runtime", path, lambda v: v in RUNTIMES, " or ".join(RUNTIMES))
    _field(spec, "input.name", path, lambda v: isinstance(v, str) and v, "the network's input name")
    _field(spec, "input.dtype", path, lambda v: v == "float32", "'float32'")
    if kind == "segmentation":
        _field(spec, "input.layout", path, lambda v: v == "NCHW", "'NCHW'")
        _field(spec, "input.channels", path, lambda v: v == ["R", "G", "B"], '["R", "G", "B"]')
        _field(spec, "input.range", path, lambda v: v == [0, 1], "[0, 1]")
        size = _field(spec, "input.size", path, lambda v: _is_int(v, 8, 4096), "an integer in [8, 4096]")
        _field(spec, "input.multiple_of", path, lambda v: _is_int(v) and size % v == 0,
               f"a positive integer dividing input.size ({size})")
        _field(spec, "input.resize", path, lambda v: v in ("stretch", "pad"), "stretch or pad")
    else:
        _field(spec, "input.layout", path, lambda v: v == "NC", "'NC' (batch, latent)")
        _field(spec, "input.latent_dim", path, _is_int, "a positive integer")
    outputs = _field(spec, "outputs", path, lambda v: isinstance(v, list) and 0 < len(v) <= 16,
                     "a list of 1 to 16 outputs")
    for i in range(len(outputs)):
        _field(spec, f"outputs.{i}", path, lambda v: isinstance(v, dict), "an object {name, activation, channels}")
        _field(spec, f"outputs.{i}.name", path, lambda v: isinstance(v, str) and OUTPUT_NAME.fullmatch(v),
               "an output name of letters, digits and _ (it names predict.py's files)")
        _field(spec, f"outputs.{i}.activation", path, lambda v: v in ACTIVATIONS, " | ".join(ACTIVATIONS))
        _field(spec, f"outputs.{i}.channels", path, _is_int, "a positive integer")
        if "classes" in outputs[i]:  # a class map: one class per channel
            k = outputs[i]["channels"]
            _field(spec, f"outputs.{i}.classes", path, lambda v: _classes(v) and len(v) == k >= 2,
                   f"a list of {k} classes (one per channel), each {{name, color: [r, g, b] in 0..255 or null}}")
            _field(spec, f"outputs.{i}.activation", path, lambda v: v != "none", "softmax or sigmoid (multi-label)")
        if "ignore_index" in outputs[i]:
            _field(spec, f"outputs.{i}.ignore_index", path, lambda v: _is_int(v, 0, 65535), "an integer in 0..65535")
    names = [o["name"] for o in outputs]
    if kind == "segmentation":
        _field(spec, "outputs", path, lambda v: "mask" in names or any("classes" in o for o in v),
               "a list that holds the mask output or a class-map output (with its classes)")
        if "mask" in names:
            _field(spec, f"outputs.{names.index('mask')}.threshold", path,
                   lambda v: isinstance(v, float) and 0 < v < 1, "a probability in (0, 1)")
    _field(spec, "classes", path, _classes, "a list of {name, color: [r, g, b] in 0..255 or null}")
    return spec


def _classes(v) -> bool:
    """A list of ``{name, color}``, ``color`` null or ``[r, g, b]`` in 0..255."""
    return isinstance(v, list) and all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and (c.get("color") is None or (
            isinstance(c["color"], list) and len(c["color"]) == 3 and all(_is_int(x, 0, 255) for x in c["color"])))
        for c in v)


def read_preprocessing(folder: Path) -> dict:
    """``folder/preprocessing.json``, bounded, parsed and checked (:func:`check_preprocessing`)."""
    path = Path(folder) / PREPROCESSING
    if not path.is_file() or path.is_symlink():
        raise SandboxError(f"{path}: missing (or not a plain file); an exported model is read with the "
                           f"{PREPROCESSING} that sandbox-export writes beside it")
    if path.stat().st_size > MAX_BYTES:
        raise SandboxError(f"{path}: over {MAX_BYTES >> 20} MiB; expected the few KiB sandbox-export writes")
    try:
        spec = json.loads(path.read_bytes()[:MAX_BYTES])
    except (ValueError, UnicodeDecodeError) as exc:
        raise SandboxError(f"{path}: not valid JSON ({short(str(exc), 80)}); expected the file "
                           "sandbox-export writes") from None
    return check_preprocessing(spec, path)


def check_torchscript(path: Path) -> None:
    """Refuse a ``.pt`` that is not a TorchScript archive before anything opens it as one: a plain pickle
    or a ``torch.save`` file could run code when unpickled, and the sandbox never unpickles user files."""
    why = "a TorchScript archive written by sandbox-export (torch.jit.save); the sandbox never unpickles a file"
    if not zipfile.is_zipfile(path):
        raise SandboxError(f"{path}: not a TorchScript archive (a plain pickle?); expected {why}")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not any(n.endswith("/constants.pkl") for n in names) or not any("/code/" in n for n in names):
        raise SandboxError(f"{path}: a zip without TorchScript code (a torch.save checkpoint?); expected {why}")


class ExportedModel(nn.Module):
    """An exported network behind the torch model's call: ``forward(x) -> {output name: tensor}``
    (float32, on the cpu). Segmentation: ``x (B, 3, H, W)`` in [0, 1] with H, W divisible by
    ``input.multiple_of``; decoder: ``z (B, latent_dim)`` -> ``{"image": (B, C, S, S)}``."""

    def __init__(self, path: Path, spec: dict):
        super().__init__()
        self.path, self.spec = Path(path), spec
        self.names = [o["name"] for o in spec["outputs"]]
        if spec["runtime"] == "onnx":
            ort = onnxruntime()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()  # the sandbox's thread policy, not all cores
            try:  # from bytes: an external-data reference in the file can point nowhere on disk
                self.session = ort.InferenceSession(self.path.read_bytes(), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types (Fail, InvalidProtobuf, ...)
                raise SandboxError(f"{path}: onnxruntime cannot load it ({short(str(exc), 160)}); expected the "
                                   "model.onnx sandbox-export writes") from None
        else:
            check_torchscript(self.path)
            try:
                with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; it still loads
                    warnings.simplefilter("ignore", FutureWarning)
                    self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
            except RuntimeError as exc:
                raise SandboxError(f"{path}: torch.jit.load cannot read it ({short(str(exc), 160)}); expected "
                                   "the model.pt sandbox-export writes") from None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        inp = self.spec["input"]
        if self.spec["kind"] == "segmentation":
            r = inp["multiple_of"]
            if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % r or x.shape[-1] % r:
                raise SandboxError(f"{self.path}: input of shape {tuple(x.shape)}; expected (B, 3, H, W) with H "
                                   f"and W divisible by {r} (see {PREPROCESSING})")
        if self.spec["runtime"] == "onnx":
            arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
            outs = self.session.run(None, {inp["name"]: arr})
            return {n: torch.from_numpy(np.asarray(o)) for n, o in zip(self.names, outs)}
        with torch.no_grad():
            out = self.module(x.detach().cpu().float().contiguous())
        out = out if isinstance(out, dict) else {self.names[0]: out}
        return {n: out[n].float() for n in self.names}


def load_exported(path: str | Path, kind: str | None = None) -> tuple[Config, ExportedModel]:
    """``(cfg, model)`` of an exported file (``.onnx`` or a TorchScript ``.pt``) and its preprocessing.json.
    ``cfg``: the defaults, with ``data.size``, ``data.resize`` and ``data.ignore_index`` (a class-map mask's unlabelled
    value) from preprocessing.json (what predict reads; the classes are in ``model.spec``).
    ``kind``: the kind of export the caller needs (segmentation | decoder); another is refused in one line."""
    path = Path(path)
    runtime = {v: k for k, v in RUNTIMES.items()}.get(path.suffix.lower())
    if runtime is None or not path.is_file():
        raise SandboxError(f"--model {str(path)!r}: {'no such file' if runtime else 'unknown kind of file'}; "
                           "expected model.onnx or model.pt written by sandbox-export (runs/<name>/export/)")
    spec = read_preprocessing(path.parent)
    if spec["runtime"] != runtime:
        raise SandboxError(f"{path.parent / PREPROCESSING}: field runtime: got {spec['runtime']!r}, but "
                           f"{path.name} is {runtime}; expected the preprocessing.json exported with it")
    if kind is not None and spec["kind"] != kind:
        raise SandboxError(f"--model {str(path)!r} is a {spec['kind']} export ({spec['input']['name']} -> "
                           f"{', '.join(o['name'] for o in spec['outputs'])}); expected a {kind} export")
    cfg = Config()
    if spec["kind"] == "segmentation":
        cfg.data.size, cfg.data.resize = spec["input"]["size"], spec["input"]["resize"]
        cfg.data.ignore_index = next((o["ignore_index"] for o in spec["outputs"] if "ignore_index" in o), None)
    cfg.train.channels_last = False
    return cfg, ExportedModel(path, spec)
