"""Where things go on a synthetic TIGER slide: regions carry TIGER mask values 1-7."""

from __future__ import annotations

import cv2
import numpy as np

from datamodules.synthetic.layout import (
    GRID,
    RIM_PX,
    Layout,
    Region,
    _draw_benign,
    _draw_duct,
    _draw_invasive,
    _Placer,
    _tissue_polygons,
    fill_polygon,
)
from datamodules.synthetic.textures import FAT, GLASS, STROMA

#: TIGER's mask values (0 = unannotated).
INVASIVE, TUMOR_STROMA, IN_SITU, GLANDS, NECROSIS, INFLAMED, REST = range(1, 8)


def tiger_layout(size: int, rng: np.random.Generator) -> Layout:
    """Texture map and regions (``cls`` = TIGER mask value) in painting order: later wins.

    Lesion targets are larger than the BACH-like layout's (invasive 10-16 %, inflamed stroma
    6-10 %, fat 3-5 %, in situ 4-7 % of the slide); the placer stops when the tissue is full, so
    stroma (2 and 6) ends up about 70 % of the annotated pixels.
    """
    s = float(np.clip(size / 8192, 0.35, 1.0))
    area = float(size * size)
    p = _Placer(size, rng)

    def m(cells: int) -> int:
        return max(1, int(round(cells * s)))

    tex = np.full((size, size), GLASS, np.uint8)
    regions: list[Region] = []
    for poly in _tissue_polygons(size, rng):
        fill_polygon(tex, poly, STROMA)
        fill_polygon(p.tissue, poly / GRID, 1)
        regions.append(Region(TUMOR_STROMA, poly))
    p.tissue = cv2.erode(p.tissue, np.ones((5, 5), np.uint8))
    for poly in p.fill_area(rng.uniform(0.10, 0.16) * area, (550 * s, 1100 * s), 0.45, m(6)):
        regions.append(Region(INVASIVE, poly))
        _draw_invasive(tex, poly, rng)
    for poly in p.fill_area(rng.uniform(0.06, 0.10) * area, (350 * s, 800 * s), 0.12, m(4)):
        regions.append(Region(INFLAMED, poly))
        _draw_benign(tex, poly)
    for poly in p.fill_area(rng.uniform(0.03, 0.05) * area, (250 * s, 600 * s), 0.15, m(2)):
        regions.append(Region(REST, poly))
        fill_polygon(tex, poly, FAT)
    target, done = rng.uniform(0.04, 0.07) * area, 0.0
    for _ in range(60):
        if done >= target:
            break
        for poly in p.cluster(rng.integers(2, 6), (150 * s, 400 * s), 0.04, margin=m(3)):
            regions.append(Region(IN_SITU, poly))
            _draw_duct(tex, poly, RIM_PX, None)
            done += float(cv2.contourArea(poly.astype(np.float32)))
    for poly in p.fill_area(0.006 * area, (40, 90), 0.05, margin=2):
        regions.append(Region(GLANDS, poly))
        _draw_duct(tex, poly, 5, rng.uniform(0.35, 0.6))
    for _ in range(max(1, int(round(6 * area / 8192**2)))):
        for poly in p.cluster(rng.integers(6, 16), (12, 26), 0.05, margin=0, spread=6.0):
            regions.append(Region(GLANDS, poly))
            _draw_duct(tex, poly, 3, rng.uniform(0.3, 0.5))
    return Layout(tex, regions)
