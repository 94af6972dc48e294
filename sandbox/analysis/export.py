"""sandbox-export's work: a trained run's network as ONNX or TorchScript, checked against PyTorch before it
is kept, with the preprocessing it expects (preprocessing.json) and a model card (MODEL_CARD.md).

    export_run("runs/unet_dice")                        # -> runs/unet_dice/export/{model.onnx, ...}
    export_run("runs/vae_attractors", fmt="torchscript")  # the decoder: latent -> image

Segmentation runs export the whole net with dynamic batch, height and width (any sides divisible by
2**depth, the pooling the net does); one-pass generative runs (ae, vae, aae, dcgan) their decoder; step
samplers (ddpm, flow) are refused in one line. The files are written into a hidden folder beside the
destination, run with the runtime a user would use (onnxruntime, torch.jit.load: the loader of
:mod:`sandbox.runs.exported`, which predict.py uses too) on images at two input sizes, compared with the
PyTorch model (:func:`compare`), and only then renamed into place: a failed check leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from sandbox.build import target_classes
from sandbox.errors import SandboxError
from sandbox.models import MODELS
from sandbox.runs.exported import EXTRA, FORMAT, PREPROCESSING, RUNTIMES, load_exported, onnxruntime
from sandbox.runs.load import checkpoint_dir, load_run
from sandbox.runs.rundir import inside

#: the agreement an export must reach: max |exported - PyTorch| <= RTOL * max(1, max |PyTorch output|) per
#: output (float32 kernels of another library reorder sums: ~1e-7 relative is usual; 1e-4 leaves room for
#: fused convolution + BatchNorm and still catches a wrong op, a lost channel or a baked-in shape)
RTOL = 1e-4
OPSET = 17
MASK_COLOR = [26, 217, 51]  # predict.py's overlay tint for the one foreground class
CHECK_IMAGES = (2, 3)  # images per check size: the batch axis is exercised too


class _Tuple(nn.Module):
    """The segmentation net with its dict of outputs as a tuple in a fixed order (ONNX names outputs by position).
    Used in eval mode: the exporter traces in the wrapper's mode, and a new module is in train mode
    (BatchNorm on batch statistics: a parity check caught it, logits off by 2)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        return tuple(out[n] for n in self.names)


class _Decode(nn.Module):
    """``z -> model.decode(z)``: a generative model's image generator (EMA copy when kept), images in [0, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


def class_list(specs) -> list[dict]:
    """ClassSpecs -> preprocessing.json's ``[{name, color}]`` (``color`` null: index masks carry the id)."""
    return [{"name": c.name, "color": list(c.color) if c.color is not None else None} for c in specs]


def output_entry(cfg, name: str, channels: int, classes) -> dict:
    """preprocessing.json's record of one output: a class map (``classes``: its ClassSpecs; softmax, or one
    sigmoid per class with data.multilabel), the binary mask, or a regression head (depth)."""
    if classes:
        multi = bool(cfg.data.multilabel)
        entry = {"name": name, "channels": channels, "activation": "sigmoid" if multi else "softmax",
                 "multilabel": multi, "classes": class_list(classes), "meaning": (
                     f"logits of {channels} classes, one independent sigmoid each (multi-label: a class where "
                     "sigmoid(logit) > 0.5)" if multi else
                     f"logits of {channels} classes: each pixel's class id is the argmax (softmax)")}
        if name == "mask":
            entry["threshold"] = 0.5
            if cfg.data.ignore_index is not None:
                entry["ignore_index"] = cfg.data.ignore_index  # the unlabelled value of the masks it was trained on
        return entry
    if name == "mask":
        return {"name": name, "channels": channels, "activation": "sigmoid", "threshold": 0.5,
                "meaning": "logits: foreground where sigmoid(logit) > threshold"}
    return {"name": name, "channels": channels, "activation": "none",
            "meaning": f"{name} in [0, 1] (the sigmoid is inside the net)"}


def plan(cfg, model: nn.Module, run: Path) -> tuple[nn.Module, dict, Callable, list[torch.Tensor]]:
    """``(module to export, preprocessing.json without its runtime, PyTorch reference fn, check inputs)``."""
    task = MODELS[cfg.model.name].task
    if task == "segmentation":
        r = model.encoder.reduction
        s = cfg.data.size
        if cfg.model.in_channels != 3:
            raise SandboxError(f"{run}: model.in_channels is {cfg.model.in_channels}; sandbox-export exports RGB "
                               "segmentation nets (in_channels 3)")
        with torch.no_grad():
            probe = model(torch.zeros(1, 3, s, s))
        classes = target_classes(cfg)
        outputs = [output_entry(cfg, k, int(v.shape[1]), classes.get(k)) for k, v in probe.items()]
        first = next((o for o in outputs if o["name"] == "mask"), None) or next(
            (o for o in outputs if "classes" in o), None)  # the output predict.py scores: its classes are the file's
        if first is None:
            raise SandboxError(f"{run}: the {cfg.model.name} run predicts {', '.join(probe)} only; sandbox-export "
                               "exports segmentation nets with a mask head or a class-map target (e.g. parts)")
        spec = {"kind": "segmentation", "input": {
            "name": "image", "layout": "NCHW", "dtype": "float32", "channels": ["R", "G", "B"], "range": [0, 1],
            "size": s, "multiple_of": r, "resize": cfg.data.resize,
            "note": f"fit each image to size x size as training did (data.resize: {cfg.data.resize}); the net "
                    f"also runs at any height and width divisible by multiple_of (2**model.depth)"},
            "outputs": outputs, "classes": first.get("classes") or [{"name": "mask", "color": MASK_COLOR}]}
        return model, spec, lambda x: model(x), check_images(cfg, s, r)
    if getattr(model, "sample_steps", None) is not None or not hasattr(model, "decode"):
        raise SandboxError(f"{run}: a {cfg.model.name} run samples by running its denoising net over many steps "
                           "from noise, which is not one network to export; sandbox-export exports segmentation "
                           "nets (unet, hourglass, simpleconv) and one-pass decoders (ae, vae, aae, dcgan)")
    gen = torch.Generator().manual_seed(0)
    zs = [model.prior(n, gen).float() for n in CHECK_IMAGES]
    spec = {"kind": "decoder", "input": {
        "name": "latent", "layout": "NC", "dtype": "float32", "latent_dim": int(zs[0].shape[1]),
        "note": "codes from the model's prior (N(0, I) for ae/vae/dcgan; the aae's chosen prior)"},
        "outputs": [{"name": "image", "channels": cfg.model.in_channels, "activation": "none",
                     "size": int(model.size), "meaning": "images (B, C, size, size) in [0, 1]"}], "classes": []}
    return _Decode(model).eval(), spec, lambda z: {"image": model.decode(z)}, zs


def check_images(cfg, size: int, r: int) -> list[torch.Tensor]:
    """Images for the parity check at two sizes: the run's first val images (seeded random images where the
    split is empty or its data is gone), at ``size x size`` and resized to a non-square ``size+r x size+2r``."""
    from sandbox.build import build_data

    n = max(CHECK_IMAGES)
    try:
        val = build_data(cfg, ("val",))["val"]
        x = torch.stack([val[i]["image"].float() for i in range(min(n, len(val)))]) if len(val) else None
    except (SandboxError, OSError):  # a folder run whose data moved: the net is checked all the same
        x = None
    if x is None or x.shape[-2:] != (size, size):
        x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, x.flip(0)])[:n]  # at least n images: mirrored order where the split is short
    other = torch.nn.functional.interpolate(x, size=(size + r, size + 2 * r), mode="bilinear", align_corners=False)
    return [x[:CHECK_IMAGES[0]].contiguous(), other[:CHECK_IMAGES[1]].clamp(0, 1).contiguous()]


def write_network(net: nn.Module, spec: dict, fmt: str, example: torch.Tensor, file: Path) -> None:
    """``net`` traced on ``example`` into ``file``: ONNX (the TorchScript-based exporter, ``dynamo=False``:
    the dynamo exporter needs onnxscript and a shape-guarded torch.export) or a TorchScript trace."""
    names = [o["name"] for o in spec["outputs"]]
    seg = spec["kind"] == "segmentation"
    with warnings.catch_warnings():  # the deprecation notes of both tracers, and the trace's note on the net's
        warnings.simplefilter("ignore")  # side check (constant in a trace; the loader checks sides itself)
        if fmt == "onnx":
            try:
                import onnx
            except ImportError:
                raise SandboxError(f"--format onnx needs the onnx package, which is not installed: {EXTRA}") from None
            axes = {0: "batch", 2: "height", 3: "width"} if seg else {0: "batch"}
            torch.onnx.export(_Tuple(net, names).eval() if seg else net, (example,), str(file), dynamo=False,
                              input_names=[spec["input"]["name"]], output_names=names, opset_version=OPSET,
                              dynamic_axes={spec["input"]["name"]: axes, **{n: {0: "batch", 2: "height", 3: "width"}
                                                                           if seg else {0: "batch"} for n in names}})
            onnx.checker.check_model(str(file))
        else:
            torch.jit.save(torch.jit.trace(net, example, strict=False, check_trace=False), str(file))


def compare(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], spec: dict, where: str) -> list[dict]:
    """One record per output: max |got - ref| and its tolerance; decisions (mask > threshold, the argmax of
    several classes) must agree except on pixels within the tolerance of the decision boundary. Raises
    one line with the measured difference when they do not."""
    records = []
    for o in spec["outputs"]:
        a, b = ref[o["name"]].detach().float().numpy(), got[o["name"]].detach().float().numpy()
        tol = RTOL * max(1.0, float(np.abs(a).max()))
        if a.shape != b.shape:
            raise SandboxError(f"export check failed: output {o['name']!r} at {where} has shape {b.shape} in the "
                               f"export and {a.shape} in PyTorch")
        diff, flipped = float(np.abs(a - b).max()), 0
        if o["activation"] == "sigmoid":  # the binary mask, or multi-label classes: each channel's decision
            t = float(np.log(o.get("threshold", 0.5) / (1 - o.get("threshold", 0.5))))
            flipped = int((((a > t) != (b > t)) & (np.abs(a - t) > tol)).sum())
        elif o["activation"] == "softmax":
            top2 = np.sort(a, axis=1)[:, -2:]
            flipped = int(((a.argmax(1) != b.argmax(1)) & (top2[:, 1] - top2[:, 0] > 2 * tol)).sum())
        if not diff <= tol or flipped:
            raise SandboxError(f"export check failed: output {o['name']!r} at {where} differs from PyTorch by "
                               f"{diff:.3g} (tolerance {tol:.3g}; {flipped} decided pixel(s) flipped); nothing was exported")
        records.append({"output": o["name"], "input": where, "max_abs_diff": diff, "tolerance": tol})
    return records


def sandbox_version() -> str:
    """The installed sandbox's version (the package API, which holds ``__version__``, is a layer above)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sandbox")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
        return "unknown (not installed)"


def free_name(path: Path) -> Path:
    """``path``, or ``path_2``, ``path_3``, ...: the first that does not exist or is an empty folder
    (removed, so the finished export can be renamed onto it). An existing export is never overwritten."""
    cand, k = path, 1
    while cand.exists() and not (cand.is_dir() and not any(cand.iterdir())):
        k += 1
        cand = path.with_name(f"{path.name}_{k}")
    if cand.exists():
        cand.rmdir()
    return cand


def export_run(run_arg: str, which: str = "best", fmt: str = "onnx", out_arg: str | None = None,
               say: Callable[[str], None] = lambda line: None) -> Path:
    """sandbox-export's work: the run's network as ``fmt`` (onnx | torchscript) into ``out_arg`` (default
    ``runs/<name>/export``; ``_2``, ... when taken), checked, with preprocessing.json and MODEL_CARD.md."""
    from sandbox.analysis.model_card import model_card

    if fmt not in RUNTIMES:
        raise SandboxError(f"--format {fmt!r}: expected {' or '.join(RUNTIMES)}")
    if fmt == "onnx":
        onnxruntime()  # the one-line hint before any work
    run, ckpt = checkpoint_dir(run_arg, which)
    cfg, model = load_run(run_arg, which, device="cpu")
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    net, spec, reference, inputs = plan(cfg, model, run)
    spec = {"format": FORMAT, **spec, "runtime": fmt, "file": f"model{RUNTIMES[fmt]}",
            "source": {"run": str(run), "checkpoint": ckpt.name, "model": cfg.model.name, "sandbox_version":
                       sandbox_version(), "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    final = Path(out_arg) if out_arg else inside(run, run / "export")
    final.parent.mkdir(parents=True, exist_ok=True)
    final = free_name(final)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    if not out_arg:
        inside(run, tmp)
    started = time.perf_counter()
    try:
        tmp.mkdir()
        write_network(net, spec, fmt, inputs[0], tmp / spec["file"])
        (tmp / PREPROCESSING).write_text(json.dumps(spec, indent=2) + "\n")
        _, exported = load_exported(tmp / spec["file"])  # the loader predict.py uses, on the files as written
        checks = []
        for x in inputs:
            with torch.no_grad():
                checks += compare(reference(x), exported(x), spec, "x".join(map(str, x.shape)))
        (tmp / "MODEL_CARD.md").write_text(model_card(run, ckpt, cfg, spec, checks, RTOL))
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    worst = max(checks, key=lambda c: c["max_abs_diff"] / c["tolerance"])
    sizes = ", ".join(dict.fromkeys(c["input"] for c in checks))
    say(f"exported {run} ({cfg.model.name}, checkpoints/{ckpt.name}) as {fmt} into {final} in "
        f"{time.perf_counter() - started:.1f} s; checked against PyTorch at {sizes}: max abs diff "
        f"{worst['max_abs_diff']:.2g} (tolerance {worst['tolerance']:.2g})")
    return final
