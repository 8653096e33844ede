"""Texture bank of the synthetic slides: a few seamless tiles, composited by a texture-id map.

Every pixel of a synthetic slide is a lookup ``bank[texture_id, y % T, x % T]``, so rendering a
8192² slide is one gather, not per-pixel Python. The tiles are drawn once per slide (so slides
differ) and wrap around seamlessly.

The two hypotheses the benchmark tests are built into the tiles:

* ``EPITHELIUM`` is one texture used by both in situ ducts and invasive cords, so those two classes
  are identical at 20x and differ only in arrangement (a context cue).
* ``BENIGN`` is ``STROMA`` plus a granular pattern whose every aligned 4x4 block sums to zero, so
  the two are identical once averaged x4 (5x) and differ only in 20x detail (a zoom cue).
"""

from __future__ import annotations

import cv2
import numpy as np

GLASS, STROMA, BENIGN, EPITHELIUM, RIM, LUMEN, FAT = range(7)
TEXTURE_NAMES = ("glass", "stroma", "benign", "epithelium", "rim", "lumen", "fat")
#: Tile period in pixels; a multiple of 4 so the zero-sum blocks of BENIGN stay on the 5x grid.
TILE = 1024
#: Block size over which the benign pattern averages out: x4 = 20x -> 5x at 0.5 um/px.
ZOOM_BLOCK = 4

# H&E-like base colours (RGB); a per-slide stain shift is added to all tissue textures.
_STROMA = (226, 160, 196)
_CYTOPLASM = (214, 158, 206)
_NUCLEUS = (78, 44, 128)
_RIM = (168, 96, 152)
_LUMEN = (244, 226, 238)
_GLASS = (243, 243, 245)
_FAT_MEMBRANE = (212, 150, 190)


def make_bank(rng: np.random.Generator, tile: int = TILE) -> np.ndarray:
    """All textures as one ``(len(TEXTURE_NAMES), tile, tile, 4)`` uint8 RGBA-padded array.

    The 4th byte is padding so the bank can be viewed as uint32 and gathered in one `take`.
    """
    shift = rng.normal(0.0, 5.0, size=3)  # stain variation between slides
    stroma = _stroma(rng, tile, shift)
    tiles = [
        _plain(rng, tile, _GLASS, 1.5, np.zeros(3)),
        stroma,
        _benign(rng, stroma),
        _epithelium(rng, tile, shift),
        _rim(rng, tile, shift),
        _plain(rng, tile, _LUMEN, 3.0, shift),
        _fat(rng, tile, shift),
    ]
    bank = np.zeros((len(tiles), tile, tile, 4), np.uint8)
    for i, t in enumerate(tiles):
        bank[i, ..., :3] = t
    return bank


def render(tex: np.ndarray, bank: np.ndarray, offset=(0, 0), rows: int = 512) -> np.ndarray:
    """RGB image ``bank[tex, (y + oy) % T, (x + ox) % T]`` of a texture-id map, in row strips."""
    h, w = tex.shape
    k, t = bank.shape[0], bank.shape[1]
    if tex.max(initial=0) >= k:
        raise ValueError(f"texture id {int(tex.max())} outside the bank of {k}")
    flat = bank.reshape(-1, 4).view(np.uint32).ravel()
    ox, oy = offset
    cols = ((np.arange(w) + ox) % t).astype(np.int32)
    out = np.empty((h, w, 3), np.uint8)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        yy = (((np.arange(y0, y1) + oy) % t) * t).astype(np.int32)
        idx = tex[y0:y1].astype(np.int32) * (t * t)
        idx += yy[:, None]
        idx += cols[None, :]
        out[y0:y1] = flat.take(idx).view(np.uint8).reshape(y1 - y0, w, 4)[..., :3]
    return out


# ---------------------------------------------------------------------- tiles
def _wrap_blur(a: np.ndarray, sigma_x: float, sigma_y: float | None = None) -> np.ndarray:
    """Gaussian blur with wrap-around borders, so blurred tiles stay seamless."""
    sy = sigma_x if sigma_y is None else sigma_y
    pad = int(3 * max(sigma_x, sy)) + 1
    p = np.pad(a, [(pad, pad), (pad, pad)] + [(0, 0)] * (a.ndim - 2), mode="wrap")
    p = cv2.GaussianBlur(p, (0, 0), sigmaX=sigma_x, sigmaY=sy)
    return p[pad:-pad, pad:-pad]


def _wrap_filter(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    pad = max(kernel.shape) // 2 + 1
    p = np.pad(a, pad, mode="wrap")
    return cv2.filter2D(p, -1, kernel)[pad:-pad, pad:-pad]


def _noise(rng, tile: int, sigma: float) -> np.ndarray:
    """Smooth zero-mean unit-variance noise (float32, seamless)."""
    n = _wrap_blur(rng.standard_normal((tile, tile)).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def _colour(base, shift) -> np.ndarray:
    return np.asarray(base, np.float32) + np.asarray(shift, np.float32)


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _plain(rng, tile, base, noise, shift) -> np.ndarray:
    img = np.broadcast_to(_colour(base, shift), (tile, tile, 3)).copy()
    img += noise * _noise(rng, tile, 1.0)[..., None]
    return _finish(img)


def _draw_wrapped(canvas, centers, axes, angles, value) -> None:
    """Filled anti-aliased ellipses on a seamless tile: edge-crossing shapes reappear opposite."""
    t = canvas.shape[0]
    for (cx, cy), (a, b), ang in zip(centers, axes, angles, strict=True):
        r = max(a, b) + 2
        for dx in (-t, 0, t):
            for dy in (-t, 0, t):
                x, y = cx + dx, cy + dy
                if -r <= x < t + r and -r <= y < t + r:
                    cv2.ellipse(
                        canvas,
                        (int(x * 16), int(y * 16)),
                        (int(a * 16), int(b * 16)),
                        float(ang),
                        0,
                        360,
                        value,
                        -1,
                        cv2.LINE_AA,
                        4,
                    )


def _nuclei(rng, tile, n, size_range, elong_range) -> np.ndarray:
    """Float mask in [0, 1] of `n` random nuclei (ellipses) on a seamless tile."""
    canvas = np.zeros((tile, tile), np.uint8)
    centers = rng.uniform(0, tile, size=(n, 2))
    a = rng.uniform(*size_range, size=n)
    axes = np.stack([a, a / rng.uniform(*elong_range, size=n)], 1)
    _draw_wrapped(canvas, centers, axes, rng.uniform(0, 180, n), 255)
    return canvas.astype(np.float32) / 255.0


def _stroma(rng, tile, shift) -> np.ndarray:
    """Pink collagen: wavy fibres in two directions plus sparse spindle-shaped fibroblast nuclei."""
    fibres = np.zeros((tile, tile), np.float32)
    for angle in rng.uniform(0, 180, 2):
        k = cv2.getGaussianKernel(31, 8.0) @ cv2.getGaussianKernel(31, 0.8).T
        rot = cv2.getRotationMatrix2D((15, 15), float(angle), 1.0)
        k = cv2.warpAffine(k.astype(np.float32), rot, (31, 31))
        fibres += _wrap_filter(rng.standard_normal((tile, tile)).astype(np.float32), k / k.sum())
    fibres /= max(float(fibres.std()), 1e-6)
    img = _colour(_STROMA, shift) + 10.0 * fibres[..., None] * np.float32([0.6, 1.0, 0.7])
    img += 3.0 * _noise(rng, tile, 0.7)[..., None]
    n = int(tile * tile / 4000)
    nuc = _nuclei(rng, tile, n, (4.0, 7.0), (2.5, 4.0))
    img = img * (1 - nuc[..., None]) + _colour(_NUCLEUS, shift) * 1.15 * nuc[..., None]
    return _finish(_wrap_blur(img, 0.6))


def _benign(rng, stroma: np.ndarray) -> np.ndarray:
    """Stroma plus dark granules, balanced so each aligned 4x4 block keeps the stroma's mean.

    The granules are zero-sum per block before rounding, so the x4 area average of BENIGN equals
    that of STROMA to within rounding: invisible at 5x, obvious at 20x.
    """
    t = stroma.shape[0]
    b = ZOOM_BLOCK
    dots = (rng.random((t, t)) < 0.2).astype(np.float32)
    # some granules are two pixels long
    dots = np.maximum(dots, np.roll(dots, 1, axis=1) * (rng.random((t, t)) < 0.4))
    blocks = dots.reshape(t // b, b, t // b, b)
    zero_sum = (blocks - blocks.mean(axis=(1, 3), keepdims=True)).reshape(t, t)
    delta = -48.0 * zero_sum[..., None] * np.float32([1.0, 1.05, 0.8])
    base = stroma.astype(np.float32)
    # clipping would break the zero-sum property: shrink the pattern of any block that would clip
    room = np.where(delta > 0, 255.0 - base, base) / np.maximum(np.abs(delta), 1e-6)
    scale = np.minimum(room.reshape(t // b, b, t // b, b, 3).min(axis=(1, 3, 4)), 1.0)
    delta *= np.repeat(np.repeat(scale, b, axis=0), b, axis=1)[..., None]
    return _finish(base + delta)


def _epithelium(rng, tile, shift) -> np.ndarray:
    """Tumour/epithelial cells: densely packed round-oval nuclei in pale purple cytoplasm."""
    img = np.broadcast_to(_colour(_CYTOPLASM, shift), (tile, tile, 3)).copy()
    img += 6.0 * _noise(rng, tile, 2.0)[..., None]
    n = int(tile * tile * 0.55 / (np.pi * 4.6 * 3.6))
    nuc = _nuclei(rng, tile, n, (3.6, 5.6), (1.0, 1.6))
    chromatin = _colour(_NUCLEUS, shift) + 14.0 * _noise(rng, tile, 0.8)[..., None]
    img = img * (1 - nuc[..., None]) + chromatin * nuc[..., None]
    return _finish(_wrap_blur(img, 0.7))


def _rim(rng, tile, shift) -> np.ndarray:
    """Myoepithelial layer / basement membrane: a dense dark-pink band with flat nuclei."""
    img = np.broadcast_to(_colour(_RIM, shift), (tile, tile, 3)).copy()
    img += 5.0 * _noise(rng, tile, 1.0)[..., None]
    nuc = _nuclei(rng, tile, int(tile * tile / 500), (3.0, 5.0), (2.0, 3.0))
    img = img * (1 - nuc[..., None]) + _colour(_NUCLEUS, shift) * nuc[..., None]
    return _finish(_wrap_blur(img, 0.7))


def _fat(rng, tile, shift) -> np.ndarray:
    """Adipocytes: large empty polygonal cells (a Voronoi net of thin pink membranes)."""
    step, pad = 64, 96
    g = np.arange(0, tile, step)
    cx, cy = np.meshgrid(g, g)
    seeds = np.stack([cx.ravel(), cy.ravel()], 1) + rng.uniform(-18, 18, (cx.size, 2))
    size = tile + 2 * pad
    canvas = np.full((size, size), 255, np.uint8)
    for dx in (-tile, 0, tile):  # seeds of the neighbouring tiles make the net seamless
        for dy in (-tile, 0, tile):
            for x, y in seeds + (dx + pad, dy + pad):
                if 0 <= x < size and 0 <= y < size:
                    canvas[int(y), int(x)] = 0
    _, labels = cv2.distanceTransformWithLabels(
        canvas, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP
    )
    edge = (labels != np.roll(labels, 1, 0)) | (labels != np.roll(labels, 1, 1))
    edge = edge[pad : pad + tile, pad : pad + tile].astype(np.float32)
    m = np.clip(_wrap_blur(edge, 0.8) * 2.5, 0, 1)[..., None]
    img = _colour(_GLASS, np.zeros(3)) * (1 - m) + _colour(_FAT_MEMBRANE, shift) * m
    img += 1.5 * _noise(rng, tile, 1.0)[..., None]
    return _finish(img)
