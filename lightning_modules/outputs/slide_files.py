"""What a pathologist opens after `wsiseg segment`: an overlay picture and QuPath polygons.

Both come from the small copy of the mask that `MaskTiffWriter` keeps (downsample <= 16), so they
cost nothing that grows with the slide. Mask values are class + 1; 0 = not segmented.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping

from lightning_modules.outputs.overlays import blend, save_png

NOT_SEGMENTED = 0
#: Polygons leave out pieces and fill holes smaller than this (about one cell), as QuPath's
#: "minimum object / hole size" does; class areas in the summary JSON come from the full mask.
MIN_REGION_UM2 = 100.0
MAX_REPAIR_RINGS = 1000
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def mask_to_labels(mask: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """Mask values (class + 1, 0 = not segmented) -> class indices with `ignore` for 0."""
    labels = mask.astype(np.int16) - 1
    labels[(labels < 0) | (labels >= num_classes)] = ignore
    return labels.astype(np.uint8)


def legend(width: int, names: Sequence[str], colors: Sequence[Sequence[int]], note: str):
    """A white strip with one colour swatch and name per class, wrapped to `width`, then `note`."""
    entries = [(str(n), tuple(int(v) for v in c)) for n, c in zip(names, colors, strict=True)]
    entries.append((note, None))
    rows, x = [[]], 6
    for name, color in entries:
        w = cv2.getTextSize(name, _FONT, 0.5, 1)[0][0] + (22 if color else 0) + 16
        if rows[-1] and x + w > width:
            rows.append([])
            x = 6
        rows[-1].append((x, name, color))
        x += w
    strip = np.full((len(rows) * 22 + 6, max(width, 1), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = r * 22 + 6
        for x, name, color in row:
            if color is not None:
                cv2.rectangle(strip, (x, y + 2), (x + 14, y + 16), color, -1)
                cv2.rectangle(strip, (x, y + 2), (x + 14, y + 16), (0, 0, 0), 1)
                x += 22
            cv2.putText(strip, name, (x, y + 15), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def write_overlay(
    path: Path,
    slide,
    lowres: np.ndarray,
    downsample: int,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
) -> Path:
    """The slide thumbnail at `downsample` with the predicted classes blended in, and a legend."""
    h, w = lowres.shape
    thumb = slide.read((0, 0), (w, h), mpp=slide.mpp * downsample)
    picture = blend(thumb, mask_to_labels(lowres, len(class_names)), colors, alpha=0.5)
    picture = np.concatenate(
        [picture, legend(w, class_names, colors, "no tint = not segmented (no tissue)")]
    )
    return _atomic(path, lambda tmp: save_png(tmp, picture))


def _ring(contour: np.ndarray, downsample: int) -> np.ndarray:
    """Contour of boundary-pixel centres -> level-0 coordinates of those centres."""
    return (contour.reshape(-1, 2).astype(np.float64) + 0.5) * downsample


def _drop_small(binary: np.ndarray, min_pixels: int, connectivity: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=connectivity)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False
    return keep[labels].astype(np.uint8)


def class_polygons(binary: np.ndarray, downsample: int, min_pixels: int = 1) -> list[Polygon]:
    """Polygons (with holes) of a binary low-resolution map, in level-0 pixel coordinates.

    As QuPath does when it makes objects from a pixel classifier, pieces and holes smaller
    than `min_pixels` are dropped / filled first. Each outer contour is one polygon: contours
    of one map never overlap, so no union is needed (a union of a noisy map's 100k pieces takes
    GEOS minutes). Rings that touch themselves at a pixel corner are repaired, except in
    polygons with more than `MAX_REPAIR_RINGS` holes (noise; readers repair those on import).
    """
    binary = binary.astype(np.uint8)
    if min_pixels > 1:
        binary = _drop_small(binary, min_pixels, 8)
        binary = 1 - _drop_small(1 - binary, min_pixels, 4)
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    tree = hierarchy[0]  # [next, previous, first child, parent]
    polygons: list[Polygon] = []
    for i, contour in enumerate(contours):
        if tree[i][3] != -1 or len(contour) < 3:
            continue  # holes are added to their parent; lines and points have no area
        holes, child = [], tree[i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(_ring(contours[child], downsample))
            child = tree[child][0]
        polygon = Polygon(_ring(contour, downsample), holes)
        if len(holes) <= MAX_REPAIR_RINGS and not polygon.is_valid:
            fixed = shapely.make_valid(polygon, method="structure", keep_collapsed=False)
            parts = getattr(fixed, "geoms", [fixed])
            polygons.extend(g for g in parts if isinstance(g, Polygon) and g.area > 0)
        elif polygon.area > 0:
            polygons.append(polygon)
    return polygons


def write_geojson(
    path: Path,
    lowres: np.ndarray,
    downsample: int,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    mpp: float | None = None,
) -> Path:
    """QuPath-importable GeoJSON: one annotation per predicted class (a MultiPolygon); with
    the slide's `mpp`, regions under `MIN_REGION_UM2` are left out (holes filled)."""
    min_pixels = 1 if mpp is None else round(MIN_REGION_UM2 / (mpp * downsample) ** 2)
    features = []
    for c, (name, color) in enumerate(zip(class_names, colors, strict=True)):
        polygons = class_polygons(lowres == c + 1, downsample, max(min_pixels, 1))
        if not polygons:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(MultiPolygon(polygons)),
                "properties": {
                    "objectType": "annotation",
                    "name": str(name),
                    "classification": {"name": str(name), "color": [int(v) for v in color]},
                    "isLocked": False,
                },
            }
        )
    data = {"type": "FeatureCollection", "features": features}
    return write_json(path, data, indent=None)


def write_json(path: Path, data: dict, indent: int | None = 2) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent) + "\n"))


def _atomic(path: Path, write) -> Path:
    """Write through a temporary name and rename: a final name always means a complete file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part" + path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
