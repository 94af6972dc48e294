"""Built-in synthetic data: ``dancers`` (segmentation + depth).

``dancers``: person-like figures (head, torso, thin two-segment arms and legs) whose pose
changes smoothly along short dance sequences of ``seq_len`` frames, drawn over cluttered
backgrounds: low-frequency colour fields, texture noise and distractor shapes that share
the dancers' palette, including loose "limbs" (sticks and blobs) that look like a dancer
locally and can only be told apart by global context. Each sample has an RGB image, a
binary person mask, a depth map (0 = near, 1 = far) and a second target, ``parts``: the body
parts as a class map (background, head, torso, arms, legs; the limbs are a few pixels thin, the
head small: they need the fine detail that skips carry), or with ``multilabel`` one channel per
class, a part hidden behind another still in its own channel.

Everything is a pure function of ``(seed, split, index)``: sequences of different splits
come from different random streams, so no pose leaks from train into val or test.
``difficulty`` (0 easy .. 2 hard) scales clutter, noise, limb thinness and how close the
dancer's colours are to the background's.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sandbox.data.classes import parse_classes
from sandbox.data.splits import generated_splits

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 px precision
_FIX = float(1 << _SHIFT)
# the parts target's classes in id order, each with the colour its pictures use
PART_CLASSES = parse_classes([{"background": "#000000"}, {"head": "#e6194b"}, {"torso": "#3cb44b"},
                              {"arms": "#ffe119"}, {"legs": "#4363d8"}], "dancers parts")
HEAD, TORSO, ARMS, LEGS = 1, 2, 3, 4


def _pt(p) -> tuple[int, int]:
    return int(round(p[0] * _FIX)), int(round(p[1] * _FIX))


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency random field in [0, 1]: ``(size, size, channels)``."""
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels).clip(0, 1)


class _Canvas:
    """Paints parts front-to-back-aware: RGB, alpha coverage of the dancer, and depth."""

    def __init__(self, image: np.ndarray, depth: np.ndarray):
        self.image, self.depth = image, depth
        self.size = image.shape[0]
        self.mask = np.zeros(image.shape[:2], np.float32)
        # the parts: the front-most part per pixel, and each part's own extent (multi-label)
        self.part = 0  # the body part the next person shape belongs to (set by Dancers._dancer)
        self.parts = np.zeros(image.shape[:2], np.uint8)
        self.layers = np.zeros((len(PART_CLASSES), *image.shape[:2]), np.uint8)

    def paint(self, draw, color, z: float, person: bool) -> None:
        a8 = np.zeros((self.size, self.size), np.uint8)
        draw(a8)
        x, y, w, h = cv2.boundingRect(a8)  # blend only where the shape is: ~5x faster than full-canvas
        if w == 0 or h == 0:
            return
        box = (slice(y, y + h), slice(x, x + w))
        a = a8[box].astype(np.float32) * (1 / 255.0)
        img = self.image[box]
        img *= 1 - a[..., None]
        img += a[..., None] * np.asarray(color, np.float32)
        self.depth[box][a > 0.5] = z
        covered = a > 0.5
        if person:
            np.maximum(self.mask[box], a, out=self.mask[box])
            self.parts[box][covered] = self.part
            self.layers[self.part][box][covered] = 1
        else:  # something painted over the dancer hides it
            self.mask[box] *= 1 - a
            self.parts[box][covered] = 0
            self.layers[(slice(None), *box)][:, covered] = 0

    def stick(self, p, q, thick: float, color, z: float, person: bool) -> None:
        t = max(1, int(round(thick)))
        self.paint(lambda a: cv2.line(a, _pt(p), _pt(q), 255, t, cv2.LINE_AA, _SHIFT), color, z, person)

    def disc(self, c, r: float, color, z: float, person: bool) -> None:
        self.paint(lambda a: cv2.circle(a, _pt(c), int(round(r * _FIX)), 255, -1, cv2.LINE_AA, _SHIFT),
                   color, z, person)

    def ellipse(self, c, axes, angle: float, color, z: float, person: bool) -> None:
        ax = (max(1, int(round(axes[0] * _FIX))), max(1, int(round(axes[1] * _FIX))))
        self.paint(lambda a: cv2.ellipse(a, _pt(c), ax, angle, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT),
                   color, z, person)

    def poly(self, pts, color, z: float, person: bool) -> None:
        arr = np.array([_pt(p) for p in pts], np.int32)
        self.paint(lambda a: cv2.fillPoly(a, [arr], 255, cv2.LINE_AA, _SHIFT), color, z, person)


def _palette_color(rng: np.random.Generator, base: np.ndarray, spread: float) -> np.ndarray:
    return np.clip(base + rng.normal(0, spread, 3), 0, 1).astype(np.float32)


class Dancers(Dataset):
    """Procedural dancers: ``{"image": (3, S, S), "mask": (1, S, S), "depth": (1, S, S), "parts": (1, S, S),
    "index"}``.

    Images in [0, 1], mask in {0, 1}, depth in [0, 1] (0 = near), parts the class ids of
    :data:`PART_CLASSES` (``multilabel``: ``(5, S, S)`` in {0, 1}, channel 0 the background).
    Deterministic from ``(seed, split, index)``; ``cache=True`` renders each sample once and keeps it
    (about ``S*S*6`` bytes per sample). The parts add no random draw: image, mask and depth are
    the same with or without them.
    """

    targets = ("mask", "depth", "parts")
    classes = {"parts": PART_CLASSES}

    def __init__(self, split: str = "train", num: int = 1000, size: int = 128, seed: int = 0,
                 difficulty: float = 1.0, seq_len: int = 8, cache: bool = True, multilabel: bool = False):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {list(SPLIT_IDS)}, got {split!r}")
        self.split, self.num, self.size, self.seed = split, num, size, seed
        self.difficulty, self.seq_len = float(difficulty), max(1, seq_len)
        self.multilabel = multilabel
        self._cache: dict[int, tuple[np.ndarray, ...]] | None = {} if cache else None

    @classmethod
    def from_config(cls, cfg, splits: tuple[str, ...], wrap=lambda ds: ds) -> dict:
        """``{split: Dancers}`` of ``cfg.data`` (its ``difficulty``, ``seq_len``, ``multilabel`` too)."""
        d = cfg.data
        return generated_splits(cls, cfg, splits, wrap, difficulty=d.difficulty, seq_len=d.seq_len,
                                multilabel=d.multilabel)

    def __len__(self) -> int:
        return self.num

    # ------------------------------------------------------------------ rendering
    def render(self, index: int) -> tuple[np.ndarray, ...]:
        """``index -> (image (S, S, 3) float32, mask (S, S) uint8, depth (S, S) float32, parts)``, parts
        ``(S, S) uint8`` ids or, ``multilabel``, ``(5, S, S) uint8`` layers.

        Longer than the house's 60 lines on purpose: the drawing order is the picture (background,
        distractors, the figure's limbs back to front, each written into image, mask and depth), and
        every step draws from the same two random streams in a fixed order, so splitting it would
        only hand a dozen locals around without making one step readable alone."""
        seq, t = divmod(index, self.seq_len)
        seq_rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], seq])  # shared by the sequence
        frame_rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], seq, t + 1, 7])
        S, d = self.size, self.difficulty
        u = S / 128.0  # geometry is designed at 128 px and scaled

        # --- background: colour field + texture, a floor-like depth ramp
        bg_base = seq_rng.random(3).astype(np.float32)
        field = _smooth_field(seq_rng, S, int(seq_rng.integers(2, 5)), 3)
        image = np.clip(bg_base * 0.5 + field * 0.5, 0, 1)
        tex = _smooth_field(seq_rng, S, int(seq_rng.integers(12, 28)), 1)
        image = np.clip(image + (tex - 0.5) * 0.25 * (0.5 + d), 0, 1).astype(np.float32)
        yy = np.linspace(0, 1, S, dtype=np.float32)[:, None]
        depth = np.broadcast_to(1.0 - 0.25 * yy, (S, S)).copy()
        canvas = _Canvas(image, depth)

        # --- the dancer's palette; at high difficulty it drifts towards the background's
        mix = min(0.85, 0.35 * d) * seq_rng.random()
        skin = np.clip((1 - mix) * np.array([0.85, 0.62, 0.48]) * seq_rng.uniform(0.5, 1.1) + mix * bg_base, 0, 1)
        shirt = np.clip((1 - mix) * seq_rng.random(3) + mix * bg_base, 0, 1)
        pants = np.clip((1 - mix) * seq_rng.random(3) + mix * bg_base, 0, 1)
        palette = [skin, shirt, pants]

        # --- where the dancer will be: loose limbs are kept a few pixels away from it, because a
        # limb-like stick touching the body is ambiguous even to a human labeller (an unlearnable
        # error floor, not a test of context); blobs and boxes may touch or pass behind it.
        dancer_seed = [self.seed, SPLIT_IDS[self.split], seq, 99]
        ghost = _Canvas(np.zeros_like(image), np.zeros_like(depth))
        self._dancer(ghost, np.random.default_rng(dancer_seed), t, palette, u)
        gap = 2 * max(1, int(round(4 * u))) + 1
        keep_out = cv2.dilate((ghost.mask > 0.05).astype(np.uint8), np.ones((gap, gap), np.uint8)) > 0

        # --- distractors behind the dancer: blobs, boxes and loose limbs in the dancer's palette
        n_clutter = int(round(seq_rng.integers(3, 7) * (0.5 + d)))
        for _ in range(n_clutter):
            color = _palette_color(frame_rng, palette[frame_rng.integers(3)], 0.08)
            z = float(frame_rng.uniform(0.55, 0.85))
            c = frame_rng.uniform(0, S, 2)
            kind = frame_rng.integers(4)
            if kind == 0:
                canvas.ellipse(c, frame_rng.uniform(3, 14, 2) * u, float(frame_rng.uniform(0, 180)), color, z, False)
            elif kind == 1:
                w, h = frame_rng.uniform(4, 20, 2) * u
                canvas.poly([c, c + (w, 0), c + (w, h), c + (0, h)], color, z, False)
            else:  # a loose limb: one or two segments as thin as the dancer's, clear of the dancer
                a = frame_rng.uniform(0, 2 * math.pi)
                L = frame_rng.uniform(12, 26) * u
                thick = frame_rng.uniform(1.5, 4.0) * u
                a2 = a + frame_rng.uniform(-1.5, 1.5)
                for _try in range(6):  # a few placements; none clear of the dancer -> no limb
                    q = c + L * np.array([math.cos(a), math.sin(a)])
                    r = q + L * 0.9 * np.array([math.cos(a2), math.sin(a2)])
                    probe = np.zeros((S, S), np.uint8)
                    cv2.line(probe, _pt(c), _pt(q), 255, max(1, int(round(thick))), cv2.LINE_8, _SHIFT)
                    if kind == 3:
                        cv2.line(probe, _pt(q), _pt(r), 255, max(1, int(round(thick))), cv2.LINE_8, _SHIFT)
                        cv2.circle(probe, _pt(c), int(round(thick * 1.6 * _FIX)), 255, -1, cv2.LINE_8, _SHIFT)
                    if not (keep_out & (probe > 0)).any():
                        break
                    c = frame_rng.uniform(0, S, 2)
                else:
                    continue
                canvas.stick(c, q, thick, color, z, False)
                if kind == 3:
                    canvas.stick(q, r, thick * 0.8, color, z, False)
                    canvas.disc(c, thick * 1.6, color, z, False)

        self._dancer(canvas, np.random.default_rng(dancer_seed), t, palette, u)

        # --- a few occluders in front of the dancer at higher difficulty
        for _ in range(int(frame_rng.poisson(0.4 * d))):
            color = _palette_color(frame_rng, bg_base, 0.15)
            c = frame_rng.uniform(0, S, 2)
            canvas.ellipse(c, frame_rng.uniform(3, 8, 2) * u, float(frame_rng.uniform(0, 180)), color, 0.1, False)

        # --- camera: slight blur and sensor noise
        img = canvas.image
        if d > 0:
            img = cv2.GaussianBlur(img, (3, 3), 0.4 + 0.3 * d)
            img = img + frame_rng.normal(0, 0.02 + 0.03 * d, img.shape).astype(np.float32)
        img = np.clip(img, 0, 1).astype(np.float32)
        mask = (canvas.mask > 0.5).astype(np.uint8)
        if self.multilabel:
            parts = canvas.layers
            parts[0] = 1 - mask  # the background: what is not the dancer
        else:
            parts = np.where(mask > 0, canvas.parts, 0).astype(np.uint8)
        return img, mask, np.clip(canvas.depth, 0, 1).astype(np.float32), parts

    def _dancer(self, canvas: _Canvas, rng: np.random.Generator, t: int, palette, u: float) -> None:
        """A figure whose joint angles follow smooth sinusoids of the frame number ``t``."""
        S, d = canvas.size, self.difficulty
        skin, shirt, pants = palette
        height = rng.uniform(62, 100) * u  # head to feet
        phase = 2 * math.pi * t / (self.seq_len * rng.uniform(0.8, 1.6))

        def angle(base, amp):
            return base + amp * math.sin(phase * rng.uniform(0.7, 1.4) + rng.uniform(0, 2 * math.pi))

        # root (hips) drifts across the frame during the sequence
        start = rng.uniform(0.3, 0.7, 2) * S
        drift = rng.normal(0, 0.02 * S, 2)
        hip = start + drift * t
        hip[1] = np.clip(hip[1], 0.35 * S, 0.75 * S)
        lean = angle(0.0, 0.35)
        torso_len, neck = 0.32 * height, 0.05 * height
        up = np.array([math.sin(lean), -math.cos(lean)])
        side = np.array([-up[1], up[0]])
        shoulder_c = hip + up * torso_len
        z_body = float(rng.uniform(0.25, 0.45))
        thin = 1.0 / (1.0 + 0.35 * d)  # harder: thinner limbs
        arm_w, leg_w = 0.035 * height * thin, 0.05 * height * thin
        limb_len = (0.17 * height, 0.16 * height)  # upper, lower arm
        leg_len = (0.25 * height, 0.24 * height)

        def limb(root, base_angle, amp, lengths, width, color, z):
            a1 = angle(base_angle, amp)
            a2 = a1 + angle(0.0, 1.1)
            p1 = root + lengths[0] * np.array([math.sin(a1), math.cos(a1)])
            p2 = p1 + lengths[1] * np.array([math.sin(a2), math.cos(a2)])
            canvas.stick(root, p1, width, color, z, True)
            canvas.stick(p1, p2, width * 0.8, color, z, True)
            canvas.disc(p2, width * 0.7, color, z, True)

        # far-side limbs first (slightly deeper), then torso and head, then near-side limbs
        hip_half, sh_half = 0.07 * height, 0.1 * height
        canvas.part = LEGS
        limb(hip - side * hip_half, angle(0.15, 0.4), 0.5, leg_len, leg_w, pants, z_body + 0.04)
        canvas.part = ARMS
        limb(shoulder_c - side * sh_half, angle(0.6, 0.9), 1.2, limb_len, arm_w, skin, z_body + 0.04)
        canvas.part = TORSO
        canvas.poly([hip - side * hip_half * 1.2, hip + side * hip_half * 1.2,
                     shoulder_c + side * sh_half, shoulder_c - side * sh_half], shirt, z_body, True)
        head_c = shoulder_c + up * (neck + 0.07 * height)
        canvas.part = HEAD  # the neck counts as head
        canvas.stick(shoulder_c, shoulder_c + up * neck * 1.2, arm_w * 1.2, skin, z_body, True)
        canvas.ellipse(head_c, (0.055 * height, 0.07 * height), math.degrees(lean), skin, z_body - 0.02, True)
        canvas.part = LEGS
        limb(hip + side * hip_half, angle(-0.15, 0.4), 0.5, leg_len, leg_w, pants, z_body - 0.04)
        canvas.part = ARMS
        limb(shoulder_c + side * sh_half, angle(-0.6, 0.9), 1.2, limb_len, arm_w, skin, z_body - 0.04)

    # ------------------------------------------------------------------ Dataset API
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num:
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            img, mask, depth, parts = self._cache[index]
        else:
            img, mask, depth, parts = self.render(index)
            if self._cache is not None:
                self._cache[index] = (img, mask, depth, parts)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "depth": torch.from_numpy(depth[None].copy()),
            "parts": torch.from_numpy((parts if parts.ndim == 3 else parts[None]).astype(np.float32)),
            "index": index,
        }
