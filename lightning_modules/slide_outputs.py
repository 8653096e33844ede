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

from lightning_modules.overlays import blend, save_png

NOT_SEGMENTED = 0
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


def _ring(contour: np.ndarray, downsample: int) -> list[tuple[float, float]]:
    """Contour of boundary-pixel centres -> level-0 coordinates of those centres."""
    pts = (contour.reshape(-1, 2).astype(np.float64) + 0.5) * downsample
    return [tuple(p) for p in pts]


def class_polygons(binary: np.ndarray, downsample: int) -> MultiPolygon | None:
    """Valid (multi)polygons of a binary low-resolution map, in level-0 pixel coordinates."""
    contours, hierarchy = cv2.findContours(
        binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return None
    tree = hierarchy[0]  # [next, previous, first child, parent]
    parts = []
    for i, contour in enumerate(contours):
        if tree[i][3] != -1 or len(contour) < 3:
            continue  # holes are added to their parent; lines and points have no area
        holes, child = [], tree[i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(_ring(contours[child], downsample))
            child = tree[child][0]
        parts.append(Polygon(_ring(contour, downsample), holes))
    if not parts:
        return None
    shape = shapely.make_valid(shapely.union_all(parts))
    polys = [g for g in getattr(shape, "geoms", [shape]) if isinstance(g, Polygon) and g.area > 0]
    for g in getattr(shape, "geoms", []):
        if isinstance(g, MultiPolygon):
            polys.extend(p for p in g.geoms if p.area > 0)
    return MultiPolygon(polys) if polys else None


def write_geojson(
    path: Path,
    lowres: np.ndarray,
    downsample: int,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
) -> Path:
    """QuPath-importable GeoJSON: one annotation per predicted class (a MultiPolygon)."""
    features = []
    for c, (name, color) in enumerate(zip(class_names, colors, strict=True)):
        shape = class_polygons(lowres == c + 1, downsample)
        if shape is None:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(shape),
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
