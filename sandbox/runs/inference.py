"""Inference with a loaded run: the steps evaluate.py, predict.py and compare.py share.

    records = evaluate_dataset(model, build_data(cfg, ("test",))["test"], channels_last=cfg.train.channels_last)
    maps = predict_maps(model, [rgb_uint8_hw3, ...], cfg.data.size, cfg.data.resize)  # [{"mask": P, ...}]
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from sandbox.data.loader import collate
from sandbox.data.transforms import fit_to_size, unfit
from sandbox.metrics import class_metrics, depth_metrics, segmentation_metrics


def forward(model: nn.Module, x: torch.Tensor, channels_last: bool = True, flip: bool = False
            ) -> dict[str, torch.Tensor]:
    """``x: (B, C, S, S)`` in [0, 1] -> ``{name: tensor}``, the model's outputs in fp32, fed as the trainer
    feeds it (channels_last when the run trained so; no autocast: the reference precision).

    ``flip``: test-time augmentation by the horizontal mirror: the net also sees ``x`` mirrored, its maps are
    mirrored back and averaged with the plain ones (a mask head as probabilities, returned as their logits, so
    the output keeps its meaning; other heads as values). Two forward passes; for nets trained with flips."""
    out = _forward(model, x, channels_last)
    if flip:
        mirrored = _forward(model, x.flip(-1), channels_last)
        for k, v in out.items():
            m = mirrored[k].flip(-1)
            if v.shape[1] > 1:  # class logits: the mean of the two softmaxes, as log-probabilities
                out[k] = torch.log((torch.softmax(v, 1) + torch.softmax(m, 1)) / 2 + 1e-12)
            else:
                out[k] = torch.logit((torch.sigmoid(v) + torch.sigmoid(m)) / 2, eps=1e-7) if k == "mask" else (v + m) / 2
    return out


def _forward(model: nn.Module, x: torch.Tensor, channels_last: bool) -> dict[str, torch.Tensor]:
    first = next(model.parameters(), None)  # none in an exported model (sandbox.runs.exported): it takes cpu input
    x = x.to(first.device if first is not None else "cpu", non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
    out = out._asdict() if hasattr(out, "_asdict") else out  # NamedTuple outputs are allowed too
    return {k: v.float() for k, v in out.items() if isinstance(v, torch.Tensor)}


def _at_original_size(dataset, index: int, logits: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Mask metrics of one folder sample at its image's own size: P(mask) ``(1, S, S)`` mapped back as
    predict.py does, the truth read at full size (resized to its image with nearest, as the dataset does)."""
    from sandbox.data.folders import open_image
    from sandbox.data.masks import fit_mask, to_mask

    meta = dataset.meta(index)
    truth = to_mask(open_image(dataset.path(index, "mask")), dataset.mask_threshold).mask
    truth = fit_mask(truth, meta["orig_hw"], dataset.path(index, "mask"), dataset.path(index), dataset.mask_resize)
    prob = unfit(torch.sigmoid(logits.float().cpu()), meta)
    hard = (prob > threshold).float() * 40 - 20  # the decision as logits of +-20: exact for any threshold
    return segmentation_metrics(hard[None], torch.from_numpy(truth)[None, None].float(), threshold)


def class_records(logits: torch.Tensor, target: torch.Tensor, prefix: str, names: Sequence[str],
                  confusion: Optional[dict] = None, key: str = "") -> list[dict]:
    """Per image of a class target: ``<prefix>miou``, ``pixel_acc``, the worst class present in the truth
    (``worst_class``, ``worst_iou``), ``iou_<class>`` and ``boundary_f1_<class>`` (NaN: the class is in
    neither truth nor prediction). ``confusion``: ``{key: (K, K) tensor}`` summed into, single-label only."""
    m = {k: v.cpu() for k, v in class_metrics(logits, target.to(logits.device)).items()}
    if confusion is not None and "confusion" in m:
        confusion[key] = confusion.get(key, 0) + m["confusion"].sum(0)
    present = (m["tp"] + m["fn"]) > 0
    worst = torch.where(present, m["iou"].nan_to_num(2.0), torch.full_like(m["iou"], 2.0)).min(1)
    recs = []
    for j in range(logits.shape[0]):
        rec = {f"{prefix}miou": float(m["miou"][j]), f"{prefix}pixel_acc": float(m["pixel_acc"][j]),
               f"{prefix}worst_class": names[int(worst.indices[j])] if present[j].any() else "",
               f"{prefix}worst_iou": float(worst.values[j]) if present[j].any() else float("nan")}
        rec.update({f"{prefix}iou_{n}": float(m["iou"][j, c]) for c, n in enumerate(names)})
        rec.update({f"{prefix}boundary_f1_{n}": float(m["boundary_f1"][j, c]) for c, n in enumerate(names)})
        recs.append(rec)
    return recs


def evaluate_dataset(model: nn.Module, dataset, threshold: float = 0.5, batch_size: int = 16,
                     channels_last: bool = True, progress: Optional[str] = None,
                     original_size: bool = False, flip: bool = False, classes: Optional[dict] = None,
                     confusion: Optional[dict] = None) -> list[dict]:
    """Per-image metrics, one dict per sample in dataset order: ``{"index", ["stem", "path" (folders)],
    "dice", "iou", "pixel_acc", "boundary_f1", ["depth_l1", "depth_rmse", "depth_ssim", "depth_delta1",
    "depth_edge_f1"]}``.

    At the net's resolution, with the same functions, threshold convention and batching as the
    trainer's validation; ``original_size`` (folder datasets): the mask metrics at each image's own
    size instead (depth stays at the net's). ``progress``: a tqdm label (shown on terminals only).
    ``flip``: with the mirror as test-time augmentation (:func:`forward`). ``classes``: ``{target: [class
    names]}`` of the class-map targets, scored by :func:`class_records` (``mask``'s columns bare, the
    others' prefixed ``<target>_``), their confusion matrices summed into ``confusion`` by target.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    items = getattr(dataset, "items", None)
    records: list[dict] = []
    for batch in tqdm(loader, desc=progress, disable=None if progress else True, leave=False):
        out = forward(model, batch["image"], channels_last, flip)
        indices = batch["index"].tolist()
        classes = classes or {}
        if "mask" in classes or "mask" not in out:  # a class map is scored below, per class
            values = {}
        elif original_size:
            per = [_at_original_size(dataset, i, out["mask"][j], threshold) for j, i in enumerate(indices)]
            values = {k: torch.cat([p[k] for p in per]) for k in per[0]}
        else:
            values = segmentation_metrics(out["mask"], batch["mask"].to(out["mask"].device), threshold)
        if "depth" in out and "depth" in batch:
            depth = depth_metrics(out["depth"], batch["depth"].to(out["depth"].device))
            values.update({f"depth_{k}": v for k, v in depth.items()})
        cols = {k: v.cpu().tolist() for k, v in values.items()}
        per_class = [class_records(out[t], batch[t], "" if t == "mask" else f"{t}_", names, confusion, t)
                     for t, names in classes.items() if t in out and t in batch]
        for j, index in enumerate(indices):
            rec: dict = {"index": index}
            if items is not None:
                rec.update(stem=items[index].stem, path=str(dataset.path(index)))
            for recs in per_class:
                rec.update(recs[j])
            rec.update({k: float(v[j]) for k, v in cols.items()})
            records.append(rec)
    return records


def predict_maps(model: nn.Module, images: Sequence[np.ndarray], size: int, resize: str = "stretch",
                 channels_last: bool = True, flip: bool = False) -> list[dict[str, np.ndarray]]:
    """``[(H_i, W_i, 3) uint8] -> [{"mask": P(mask), "depth": depth, ...}]``, each ``(H_i, W_i) float32``:
    each image fitted to ``size`` with the run's ``data.resize`` policy (as the folder dataset does),
    predicted, and mapped back to its original size (bilinear). ``mask`` heads go through the
    sigmoid; a head of K > 1 classes gives its class ids ``(H_i, W_i) int64`` (argmax, nearest); other heads (``depth``) are regressions, clipped to [0, 1] as the trainer's panels show them.
    ``flip``: with the mirror as test-time augmentation (:func:`forward`)."""
    if not images:
        return []
    fitted, metas = zip(*(fit_to_size(im, size, resize, "image") for im in images))
    x = torch.from_numpy(np.stack(fitted).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    # K > 1 logits: the class ids (argmax; integer, so unfit maps them back with nearest neighbour)
    out = {k: (v.argmax(1, keepdim=True) if v.shape[1] > 1 else torch.sigmoid(v) if k == "mask" else v.clamp(0, 1)).cpu()
           for k, v in forward(model, x, channels_last, flip).items()}  # (B, 1, S, S)
    return [{k: unfit(v[i, 0], meta).numpy() for k, v in out.items()} for i, meta in enumerate(metas)]

