"""Markdown tables of measured rows (summary.py, compare and sweep reports)."""
from __future__ import annotations

from typing import Any

LABELS = {
    "model": "model", "size": "input (px)", "params": "params", "trainable": "trainable",
    "gflops": "GFLOPs/img (fwd)", "bottleneck_predicted": "bottleneck side (predicted)",
    "bottleneck": "bottleneck C x h x w (measured)", "rf": "receptive field (px)", "rf_at": "RF measured at (px)",
    "rf_lower_bound": "RF is a lower bound", "activation_mb": "activations (MB, batch)",
}


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, (tuple, list)):
        return " x ".join(str(v) for v in value)
    return "" if value is None else str(value).replace("|", "\\|")


def format_table(rows: list[dict[str, Any]], labels: dict[str, str] | None = None) -> str:
    """A Markdown table: one row per dict, columns = keys in order of first appearance.

    Headers come from ``labels`` (default :data:`LABELS`, else the key itself); ints get thousands
    separators, floats 3 significant digits, tuples ``a x b x c``, booleans yes/no, missing cells stay empty.
    """
    labels = {**LABELS, **(labels or {})}
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(labels.get(k, k) for k in keys) + " |",
             # numbers right-aligned, text left-aligned
             "|" + "|".join("---:" if all(isinstance(r.get(k), (int, float, tuple, list, type(None)))
                                          for r in rows) else "---" for k in keys) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)
