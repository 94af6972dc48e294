"""MODEL_CARD.md of an export, written from the run's own files: its config, splits/, the checkpoint's
trainer_state.json and eval/test.json (when the run was evaluated), plus the export's parity check."""
from __future__ import annotations

import json
from pathlib import Path

from sandbox.data.classes import ClassSpec, colors
from sandbox.data.splits import read_splits
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import read_state

MAX_EVAL_BYTES = 1 << 20


def split_sizes(run: Path, data) -> str:
    """``train N, val N, test N``: from the run's splits/ (folder runs), else the config's synthetic counts."""
    if (run / "splits" / "train.csv").is_file():
        try:
            splits = read_splits(run / "splits")
            return ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f" images (listed in {run / 'splits'})"
        except SandboxError as exc:
            return f"unknown ({exc})"
    return (f"train {data.num_train}, val {data.num_val}, test {data.num_test} images (rendered from seeds; "
            "data.num_*)")


def test_metrics(run: Path, ckpt: Path) -> list[str]:
    """Lines for the test metrics of eval/test.json, or one line saying how to get them."""
    path = run / "eval" / "test.json"
    try:
        record = json.loads(path.read_bytes()[:MAX_EVAL_BYTES]) if path.is_file() else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("means"), dict):
        return [f"Not evaluated on the test split yet (no readable {path}): run `sandbox-evaluate --run {run}` "
                "and export again."]
    lines = [f"From `{path}` ({record.get('n', '?')} test images, checkpoint {record.get('checkpoint', '?')}, "
             f"mask threshold {record.get('threshold', '?')}, evaluated {record.get('created', '?')}):", "",
             "| metric | mean |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in record["means"].items() if isinstance(v, (int, float))]
    if Path(str(record.get("checkpoint", ""))).name not in ("", ckpt.name):
        lines += ["", f"Note: those metrics are of another checkpoint than the one exported ({ckpt.name})."]
    return lines


def model_card(run: Path, ckpt: Path, cfg, spec: dict, checks: list[dict], rtol: float) -> str:
    """The card's Markdown text."""
    from sandbox.runs.exported import PREPROCESSING

    try:
        state = read_state(ckpt)
    except (OSError, ValueError):
        state = {}
    m, d, t, inp = cfg.model, cfg.data, cfg.train, spec["input"]
    model_opts = ", ".join(f"{k}={v}" for k, v in vars(m).items() if v is not None and k != "name")
    seg = spec["kind"] == "segmentation"
    data = f"`{d.name}`" + (f" from `{d.root}`" if d.root else "")
    lines = [
        f"# Model card: {run.name}", "",
        f"Exported {spec['source']['exported']} by sandbox {spec['source']['sandbox_version']} from `{ckpt}` "
        f"(epoch {state.get('epoch', '?')}, best {t.monitor} {state.get('best', '?')} at epoch "
        f"{state.get('best_epoch', '?')}) as `{spec['file']}` ({spec['runtime']}).", "",
        "## Model", "",
        f"- {m.name} ({model_opts})",
        f"- input: {'RGB images, float32 NCHW in [0, 1]' if seg else 'latent codes (batch, latent_dim)'}; " + (
            f"trained at {inp['size']}x{inp['size']} (data.resize: {inp['resize']}); any height and width "
            f"divisible by {inp['multiple_of']} run" if seg else f"latent_dim {inp['latent_dim']}"),
        "- outputs: " + "; ".join(f"`{o['name']}` ({o['meaning']})" for o in spec["outputs"]),
    ]
    class_maps = [o for o in spec["outputs"] if o.get("classes")]
    for o in class_maps:  # id, name, and the colour predict.py and the panels draw it in (sandbox.data.classes)
        specs = tuple(ClassSpec(c["name"], tuple(c["color"]) if c["color"] else None) for c in o["classes"])
        lines.append(f"- classes of `{o['name']}` (id, name, colour in predict.py's maps and the panels"
                     f"{'' if specs[0].color else '; the masks hold the ids'}): " + ", ".join(
                         f"{i} {s.name} #{bytes(c).hex()}" for i, (s, c) in enumerate(zip(specs, colors(specs)))))
    if spec["classes"] and not class_maps:
        lines.append("- classes: " + ", ".join(f"{c['name']} {tuple(c['color']) if c['color'] else ''}".strip()
                                               for c in spec["classes"]))
    lines += [f"- the preprocessing a caller must do is in `{PREPROCESSING}`", "",
              "## Data", "", f"- dataset: {data}, at {d.size} px", f"- splits: {split_sizes(run, d)}", "",
              "## Training", "",
              f"- loss: {cfg.loss}; optimizer {t.optimizer}, lr {t.lr}, scheduler {t.scheduler}, {t.epochs} "
              f"epoch(s), batch {d.batch_size}, seed {cfg.seed}", f"- the full config: `{run / 'config.yaml'}`", "",
              "## Test metrics", "", *(test_metrics(run, ckpt) if seg else
                                       ["Generative run: see `sandbox-probe` for its sample quality."]), "",
              "## Export check", "",
              f"The exported file, run by {spec['runtime']}, against the PyTorch model on the same inputs: "
              f"max |difference| <= {rtol:g} x max(1, max |PyTorch output|) per output"
              + (", and thresholded masks and class maps (argmax) identical except on pixels within that tolerance "
                 "of the decision."
                 if seg else "."), "", "| input | output | max abs diff | tolerance |", "|---|---|---|---|",
              *(f"| {c['input']} | {c['output']} | {c['max_abs_diff']:.2g} | {c['tolerance']:.2g} |" for c in checks),
              "", "## Intended use and limits", "",
              f"- A research model from the sandbox, trained on {data} only: it is meant for images like those "
              "(same kind of scene, size and colours); on other images its output is unvalidated.",
              "- The test metrics above are its only measured quality; it was not checked for fairness, "
              "robustness or calibration. Do not use it for decisions about people, or for medical or "
              "safety-critical work."]
    return "\n".join(lines) + "\n"
