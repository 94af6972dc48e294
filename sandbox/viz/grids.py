"""Image grids: sample and reconstruction grids, animated interpolations, captioned panel tables."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sandbox.viz.backend import plt
from sandbox.viz.curves import save_figure


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, scale: int = 2, pad: int = 2) -> Path:
    """``(N, C, H, W)`` in [0, 1] -> one PNG of ``nrow`` images per row (nearest upscaling ``scale``)."""
    from torchvision.utils import make_grid  # here: importing torchvision costs ~2 s

    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=pad, pad_value=1.0)
    arr = (grid.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    im = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


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
