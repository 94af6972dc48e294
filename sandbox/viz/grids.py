"""Image grids: sample and reconstruction grids, animated interpolations, captioned panel tables."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sandbox.viz.backend import plt
from sandbox.viz.curves import save_figure


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, scale: int = 2, pad: int = 2,
              title: str = "", row_labels: Sequence[str] = ()) -> Path:
    """``(N, C, H, W)`` in [0, 1] -> one PNG of ``nrow`` images per row (nearest upscaling ``scale``).
    ``title`` goes in a band above the grid, ``row_labels`` (one per row, e.g. inputs / reconstructions)
    in a margin on its left; the grid itself is the same pixels with or without them."""
    from torchvision.utils import make_grid  # here: importing torchvision costs ~2 s

    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=pad, pad_value=1.0)
    arr = (grid.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    im = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    if title or row_labels:
        im = _labelled(im, title, list(row_labels), (images.shape[-2] + pad) * scale, pad * scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _labelled(grid: Image.Image, title: str, row_labels: list[str], row_height: int, pad: int) -> Image.Image:
    """``grid`` on a white canvas with ``title`` above it and ``row_labels`` left of its rows."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid)
    width = max((measure.textbbox((0, 0), t, font=font)[2] for t in row_labels), default=0)
    left = width + 8 if row_labels else 0
    top = measure.textbbox((0, 0), title or "Ag", font=font)[3] + 8 if title else 0
    canvas = Image.new(grid.mode, (grid.width + left, grid.height + top), "white")
    canvas.paste(grid, (left, top))
    draw, ink = ImageDraw.Draw(canvas), "black"
    if title:
        draw.text((left + pad, 4), title, fill=ink, font=font)
    for r, text in enumerate(row_labels):
        y = top + pad + r * row_height + (row_height - pad) // 2
        draw.text((4, y), text, fill=ink, font=font, anchor="lm")
    return canvas


def save_gif(frames: torch.Tensor, path: Path, scale: int = 2, ms: int = 80) -> Path:
    """``(F, C, H, W)`` in [0, 1] -> an endlessly looping GIF."""
    arr = (frames.float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1) * 255).round().astype("uint8")
    ims = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]
    ims = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in ims]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=ms, loop=0)
    return path


def draw_panels(panels: list[list[tuple]], cols: list[str], path: Path) -> Path:
    """A grid of ``(picture, colour map, caption)`` panels, one list per row, titled by ``cols``."""
    fig, axes = plt.subplots(len(panels), len(cols), figsize=(2.1 * len(cols), 2.1 * len(panels) + 0.3), squeeze=False)
    for i, row in enumerate(panels):
        for j, (img, cmap, note) in enumerate(row):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(note, fontsize=7)
            if i == 0:  # long run labels (sweep cells) wrap instead of running into the next column
                ax.set_title("\n".join(textwrap.wrap(cols[j], 26, break_on_hyphens=True)), fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
