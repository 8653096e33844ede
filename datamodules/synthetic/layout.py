"""Where things go on a synthetic slide: tissue, lesions and normal structures.

A layout returns the texture-id map (what every level-0 pixel looks like, see
`synthetic_textures`) and the annotated regions (true class + polygon). Regions never touch (a
gap is kept on a coarse occupancy grid), so every class region is a hole-free polygon that Aperio
XML can express. Sizes are in level-0 pixels at 0.5 um/px; lesion sizes shrink with slides smaller
than 8192² (down to x0.35) so tiny test slides keep the class balance of the full-size ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.synthetic.textures import (
    BENIGN,
    EPITHELIUM,
    FAT,
    GLASS,
    LUMEN,
    RIM,
    STROMA,
    ZOOM_BLOCK,
)

NORMAL, BENIGN_CLS, IN_SITU, INVASIVE = range(4)
#: Occupancy grid step (level-0 px); also the minimum gap between annotated regions.
GRID = 16
#: Thickness of the duct rim (myoepithelium + basement membrane) that marks in situ ducts.
RIM_PX = 12


@dataclass
class Region:
    """One annotated lesion: its true class and its outline (``(n, 2)`` level-0 x, y)."""

    cls: int
    polygon: np.ndarray


@dataclass
class Layout:
    tex: np.ndarray  # (h, w) uint8 texture ids
    regions: list[Region]


def layout_default(size: int, rng: np.random.Generator) -> Layout:
    """BACH-like breast tissue: normal stroma dominant, a few benign, in situ and invasive lesions.

    Class targets (fractions of the slide, drawn per slide): invasive 3-7 %, in situ 1.5-4 %,
    benign 4-9 %; the rest is normal (stroma, fat, normal ducts and lobules) or white glass.
    """
    s = float(np.clip(size / 8192, 0.35, 1.0))
    area = float(size * size)
    p = _Placer(size, rng)

    def m(cells: int) -> int:  # gaps between regions, in grid cells, shrink with the lesions
        return max(1, int(round(cells * s)))

    tex = np.full((size, size), GLASS, np.uint8)
    for poly in _tissue_polygons(size, rng):
        fill_polygon(tex, poly, STROMA)
        fill_polygon(p.tissue, poly / GRID, 1)
    p.tissue = cv2.erode(p.tissue, np.ones((5, 5), np.uint8))  # keep lesions off the tissue edge
    regions: list[Region] = []

    # invasive: irregular blobs, filled with infiltrating cords and sheets of tumour cells
    for poly in p.fill_area(rng.uniform(0.03, 0.07) * area, (550 * s, 1100 * s), 0.45, margin=m(6)):
        regions.append(Region(INVASIVE, poly))
        _draw_invasive(tex, poly, rng)
    # in situ: clusters of large round ducts, solid with the SAME tumour cells, with a rim
    target, done = rng.uniform(0.015, 0.04) * area, 0.0
    for _ in range(40):
        if done >= target:
            break
        for poly in p.cluster(rng.integers(2, 6), (150 * s, 400 * s), 0.04, margin=m(3)):
            regions.append(Region(IN_SITU, poly))
            _draw_duct(tex, poly, RIM_PX, None)
            done += _area(poly)
    # benign: smooth blobs of stroma with 20x-only granules
    for poly in p.fill_area(rng.uniform(0.04, 0.09) * area, (350 * s, 800 * s), 0.12, margin=m(4)):
        regions.append(Region(BENIGN_CLS, poly))
        _draw_benign(tex, poly)
    # normal: fat lobules, small ducts and lobules of acini (epithelium, but small and hollow)
    for poly in p.fill_area(rng.uniform(0.02, 0.05) * area, (250 * s, 600 * s), 0.15, margin=m(2)):
        fill_polygon(tex, poly, FAT)
    for poly in p.fill_area(0.004 * area, (40, 90), 0.05, margin=2):
        _draw_duct(tex, poly, 5, rng.uniform(0.35, 0.6))
    for _ in range(max(1, int(round(6 * area / 8192**2)))):
        for poly in p.cluster(rng.integers(6, 16), (12, 26), 0.05, margin=0, spread=6.0):
            _draw_duct(tex, poly, 3, rng.uniform(0.3, 0.5))
    return Layout(tex, regions)


# ---------------------------------------------------------------------- shapes
def blob(center, radius: float, irregularity: float, rng, n: int = 96, aspect: float = 1.0):
    """A star-shaped closed outline: a circle with random low harmonics (never self-intersects)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 8):
        r += irregularity / k**0.7 * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 6.3))
    r = radius * np.clip(r, 0.35, None)
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta)
    xr = x * np.cos(rot) - y * np.sin(rot)
    yr = x * np.sin(rot) + y * np.cos(rot)
    return np.stack([center[0] + xr, center[1] + yr], 1)


def _area(poly: np.ndarray) -> float:
    return float(cv2.contourArea(poly.astype(np.float32)))


def fill_polygon(img: np.ndarray, poly: np.ndarray, value: int) -> None:
    """Fill a float polygon (sub-pixel precise, no anti-aliasing: values are ids)."""
    pts = np.round(poly * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(img, [pts], int(value), cv2.LINE_8, 4)


def _local_mask(poly: np.ndarray, shape, align: int = 1):
    """Mask of `poly` in its bounding box (clipped to `shape`, corners on multiples of `align`)."""
    h, w = shape
    x0, y0 = (np.floor(poly.min(0)).astype(int) // align) * align
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    x1 = x0 + ((x1 - x0) // align) * align
    y1 = y0 + ((y1 - y0) // align) * align
    m = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
    fill_polygon(m, poly - (x0, y0), 1)
    return m, (slice(y0, y1), slice(x0, x1))


def _draw_duct(tex, poly, rim: int, lumen_frac: float | None) -> None:
    """Rim band, then epithelium; hollow (lumen) for normal ducts, solid for in situ."""
    c = poly.mean(0)
    radius = float(np.sqrt(_area(poly) / np.pi))
    fill_polygon(tex, poly, RIM)
    fill_polygon(tex, c + (poly - c) * max(radius - rim, 1) / radius, EPITHELIUM)
    if lumen_frac is not None:
        fill_polygon(tex, c + (poly - c) * lumen_frac, LUMEN)


def _draw_benign(tex, poly) -> None:
    """Benign texture only on 4x4 blocks wholly inside, so no block mixes the two at 5x."""
    m, (sy, sx) = _local_mask(poly, tex.shape, align=ZOOM_BLOCK)
    h, w = m.shape
    b = ZOOM_BLOCK
    full = m.reshape(h // b, b, w // b, b).min(axis=(1, 3))
    full = np.repeat(np.repeat(full, b, axis=0), b, axis=1).astype(bool)
    tex[sy, sx][full] = BENIGN


def _draw_invasive(tex, poly, rng) -> None:
    """Cords (bands along the zero set of smooth noise) and sheets (its peaks) of tumour cells."""
    m, (sy, sx) = _local_mask(poly, tex.shape)
    h, w = m.shape
    lo = rng.standard_normal((h // 8 + 2, w // 8 + 2)).astype(np.float32)
    lo = cv2.GaussianBlur(lo, (0, 0), 4.0)
    lo /= max(float(lo.std()), 1e-6)
    f = cv2.resize(lo, (w, h), interpolation=cv2.INTER_LINEAR)
    epi = (np.abs(f) < 0.45) | (f > 0.9)
    tex[sy, sx][(m > 0) & epi] = EPITHELIUM


def _tissue_polygons(size: int, rng) -> list[np.ndarray]:
    """One large tissue piece and up to two satellites, about 55-70 % of the slide."""
    c = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    polys = [
        blob(c, size * rng.uniform(0.40, 0.45), 0.18, rng, n=160, aspect=rng.uniform(0.9, 1.1))
    ]
    for _ in range(rng.integers(0, 3)):
        ang = rng.uniform(0, 2 * np.pi)
        cs = c + 0.42 * size * np.array([np.cos(ang), np.sin(ang)])
        polys.append(blob(cs, size * rng.uniform(0.08, 0.14), 0.2, rng))
    return polys


class _Placer:
    """Rejection sampling of non-touching shapes inside the tissue, on a coarse occupancy grid."""

    def __init__(self, size: int, rng):
        self.size, self.rng = size, rng
        g = -(-size // GRID)
        self.tissue = np.zeros((g, g), np.uint8)
        self.used = np.zeros((g, g), np.uint8)
        self._cells = None

    def try_place(self, poly: np.ndarray, margin: int) -> bool:
        """Accept `poly` if it lies in tissue and, grown by `margin` + 1 cells, touches nothing."""
        if (poly.min(0) < 0).any() or (poly.max(0) >= self.size).any():
            return False
        m, (sy, sx) = _local_mask(poly / GRID, self.used.shape)
        if not m.any() or not self.tissue[sy, sx][m > 0].all():
            return False
        pad = margin + 1
        grown = cv2.dilate(np.pad(m, pad), np.ones((2 * pad + 1, 2 * pad + 1), np.uint8))
        g = self.used.shape[0]
        y0, x0 = sy.start - pad, sx.start - pad
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + grown.shape[0], g), min(x0 + grown.shape[1], g)
        grown = grown[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] > 0
        window = self.used[cy0:cy1, cx0:cx1]
        if window[grown].any():
            return False
        window[grown] = 1
        return True

    def random_point(self) -> np.ndarray:
        if self._cells is None:  # the tissue is fixed once placing starts
            self._cells = np.argwhere(self.tissue)
        y, x = self._cells[self.rng.integers(len(self._cells))]
        return (np.array([x, y]) + self.rng.random(2)) * GRID

    def fill_area(self, target: float, radius, irregularity: float, margin: int, tries: int = 200):
        """Place blobs until their area reaches `target` (at least one if any fits)."""
        out, done = [], 0.0
        for _ in range(tries):
            if done >= target:
                break
            # the last blob is no larger than the area still wanted, so targets are not overshot
            r = min(self.rng.uniform(*radius), max(radius[0], np.sqrt((target - done) / np.pi)))
            poly = blob(
                self.random_point(), r, irregularity, self.rng, aspect=self.rng.uniform(0.7, 1)
            )
            if self.try_place(poly, margin):
                out.append(poly)
                done += _area(poly)
        return out

    def cluster(self, n: int, radius, irregularity: float, margin: int, spread: float = 3.0):
        """Up to `n` round shapes scattered around one random centre (ducts of a lesion, acini)."""
        out, centre = [], self.random_point()
        for _ in range(6 * n):
            if len(out) >= n:
                break
            r = self.rng.uniform(*radius)
            off = self.rng.normal(0, spread * np.mean(radius) / 2, 2)
            poly = blob(
                centre + off, r, irregularity, self.rng, n=64, aspect=self.rng.uniform(0.8, 1)
            )
            if self.try_place(poly, margin):
                out.append(poly)
        return out
