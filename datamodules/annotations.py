"""Annotations to label rasters: polygon files (Aperio/BACH, ASAP/TIGER, QuPath GeoJSON) and
label-mask images, read in the same geometry as ``Slide.read`` so labels line up with pixels.

Polygons are rasterized with an exact pixel-centre scanline fill (nonzero winding), so a
polygon covers the same area in µm² at every mpp and holes and overlaps need no special case.
"""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import shapely
from shapely.geometry import Polygon, box
from shapely.geometry.polygon import orient

from datamodules.classmaps import IGNORE, SKIP, UNMAPPED, ClassMap, load_class_map
from datamodules.errors import InputError
from datamodules.slides import Slide

POLYGON_SUFFIXES = (".xml", ".geojson", ".json")


@dataclass(frozen=True)
class Region:
    """One annotated polygon in level-0 pixel coordinates (x = column, y = row)."""

    label: str
    polygon: Polygon


class LabelSource(Protocol):
    def read(self, location, size, mpp=None) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# Readers


class _Collector:
    """Builds valid polygons and counts what had to be dropped or repaired, to warn once."""

    def __init__(self, path: Path):
        self.path, self.regions, self.issues = path, [], Counter()

    def number(self, text) -> float:
        try:  # some ASAP files were written with a decimal comma
            value = float(str(text).replace(",", "."))
        except (TypeError, ValueError):
            raise InputError(self.path, f"bad coordinate {text!r}") from None
        if not math.isfinite(value):
            raise InputError(self.path, f"non-finite coordinate {text!r}")
        return value

    def add(self, label: str, shell, holes=()) -> list[Polygon]:
        shell = _open_ring(shell)
        if len(shell) < 3:
            self.issues["region(s) with fewer than 3 vertices skipped"] += 1
            return []
        holes = [h for h in map(_open_ring, holes) if len(h) >= 3]
        polygon = Polygon(shell, holes)
        parts = [polygon]
        if not polygon.is_valid:
            self.issues["invalid polygon(s) repaired"] += 1
            parts = _polygons(shapely.make_valid(polygon))
        parts = [p for p in parts if p.area > 0]
        if not parts:
            self.issues["zero-area region(s) skipped"] += 1
        self.regions.extend(Region(label, p) for p in parts)
        return parts

    def finish(self) -> list[Region]:
        for issue, n in self.issues.items():
            warnings.warn(f"{self.path}: {n} {issue}", stacklevel=3)
        if not self.regions:
            raise InputError(self.path, "no polygon regions found")
        return self.regions


def _open_ring(points) -> list[tuple[float, float]]:
    points = [tuple(p[:2]) for p in points]
    while len(points) > 1 and points[0] == points[-1]:
        points.pop()
    return points


def _polygons(geometry) -> list[Polygon]:
    """The polygon parts of any geometry (make_valid and clipping may add lines and points)."""
    if geometry.is_empty:
        return []
    if geometry.geom_type == "Polygon":
        return [geometry]
    if hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _polygons(g)]
    return []


def _first_value(attributes) -> str:
    if attributes is None:
        return ""
    for attribute in attributes.findall("Attribute"):
        value = (attribute.get("Value") or "").strip()
        if value:
            return value
    return ""


def _ellipse(corners) -> list[tuple[float, float]]:
    (xa, ya), (xb, yb) = corners
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    xs = (xa + xb) / 2 + abs(xb - xa) / 2 * np.cos(t)
    return list(zip(xs, (ya + yb) / 2 + abs(yb - ya) / 2 * np.sin(t), strict=True))


def _read_aperio(root, out: _Collector) -> None:
    for annotation in root.findall("Annotation"):
        layer = (annotation.get("Name") or "").strip() or _first_value(
            annotation.find("Attributes")
        )
        start, negative = len(out.regions), []
        for region in annotation.findall("Regions/Region"):
            label = (region.get("Text") or "").strip() or _first_value(region.find("Attributes"))
            points = [
                (out.number(v.get("X")), out.number(v.get("Y")))
                for v in region.findall("Vertices/Vertex")
            ]
            if region.get("Type") == "2" and len(points) == 2:  # ellipse: bounding-box corners
                points = _ellipse(points)
            if region.get("NegativeROA") == "1":  # ImageScope "negative" region: cut it out
                negative.extend(_polygons(shapely.make_valid(Polygon(points)))
                                if len(points) >= 3 else [])
            else:
                out.add(label or layer, points)
        if negative:
            cut = shapely.union_all(negative)
            out.regions[start:] = [Region(r.label, p) for r in out.regions[start:]
                                   for p in _polygons(r.polygon.difference(cut))]


def _read_asap(root, out: _Collector) -> None:
    for annotation in root.findall("Annotations/Annotation"):
        group = (annotation.get("PartOfGroup") or "").strip()
        label = group if group.lower() not in ("", "none") else annotation.get("Name") or ""
        if annotation.get("Type") in ("Dot", "PointSet"):
            out.issues["point annotation(s) skipped"] += 1
            continue
        coords = sorted(
            annotation.findall("Coordinates/Coordinate"),
            key=lambda c: out.number(c.get("Order", "0")),
        )
        out.add(label, [(out.number(c.get("X")), out.number(c.get("Y"))) for c in coords])


def _feature_label(properties) -> str:
    properties = properties or {}
    classification = properties.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name") or ": ".join(classification.get("names") or [])
        if name:
            return str(name)
    elif isinstance(classification, str) and classification.strip():
        return classification
    return str(properties.get("name") or "")


def _add_geometry(out: _Collector, label: str, geometry, where: str) -> None:
    kind = (geometry or {}).get("type")
    coords = (geometry or {}).get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = coords
    elif kind == "GeometryCollection":
        for g in geometry.get("geometries") or []:
            _add_geometry(out, label, g, where)
        return
    else:
        raise InputError(
            out.path, f"{where} is a {kind} geometry; only Polygon and MultiPolygon can be labels"
        )
    for rings in polygons or []:
        if not rings:
            continue
        number_rings = [[(out.number(p[0]), out.number(p[1])) for p in ring] for ring in rings]
        out.add(label, number_rings[0], number_rings[1:])


def _read_geojson(data, out: _Collector) -> None:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        raise InputError(out.path, "JSON is not a GeoJSON FeatureCollection or list of features")
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise InputError(out.path, f"feature {i} is not a JSON object")
        where = f"feature {i}" + (f" ({feature['id']})" if feature.get("id") else "")
        label = _feature_label(feature.get("properties"))
        _add_geometry(out, label, feature.get("geometry"), where)


def read_annotations(path: str | Path) -> list[Region]:
    """Polygons of an Aperio/BACH XML, ASAP/TIGER XML or QuPath GeoJSON file (format by content)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise InputError(path, f"cannot read annotations: {exc.strerror or exc}") from None
    out = _Collector(path)
    start = text.lstrip()[:1]
    if start == "<":
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise InputError(path, f"not well-formed XML ({exc})") from None
        if root.tag == "Annotations":
            _read_aperio(root, out)
        elif root.tag == "ASAP_Annotations":
            _read_asap(root, out)
        else:
            raise InputError(
                path, f"unknown XML annotation format <{root.tag}>; expected Aperio "
                "<Annotations> or ASAP <ASAP_Annotations>"
            )
    elif start in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc})") from None
        _read_geojson(data, out)
    else:
        raise InputError(path, "not an annotation file (expected XML or GeoJSON)")
    return out.finish()


def region_stats(
    regions: list[Region], class_map, mpp: float, source=None
) -> dict[str, dict[str, float]]:
    """Per class: region count and summed polygon area in mm² (overlaps counted twice)."""
    class_map = load_class_map(class_map)
    stats = {name: {"count": 0, "area_mm2": 0.0} for name in class_map.classes}
    for region in regions:
        cls = class_map.index(region.label, source)
        if cls == SKIP:
            continue
        entry = stats.setdefault(
            "ignore" if cls == IGNORE else class_map.classes[cls], {"count": 0, "area_mm2": 0.0}
        )
        entry["count"] += 1
        entry["area_mm2"] += region.polygon.area * mpp**2 / 1e6
    return stats


# ---------------------------------------------------------------------------------------------
# Label sources


def _ignore_outside(labels: np.ndarray, location, f: float, extent) -> None:
    """Set pixels whose centre lies outside [0, extent) in level-0 coordinates to IGNORE."""
    for axis, (origin, limit) in enumerate(zip(location, extent, strict=True)):
        n = labels.shape[1 - axis]
        lo = min(max(math.ceil(-origin / f - 0.5), 0), n)
        hi = min(max(math.ceil((limit - origin) / f - 0.5), lo), n)
        index = [slice(None), slice(None)]
        for part in (slice(0, lo), slice(hi, n)):
            index[1 - axis] = part
            labels[tuple(index)] = IGNORE


def _ring_edges(polygon: Polygon) -> np.ndarray:
    """(n, 4) edges x0, y0, x1, y1 of all rings; exterior and holes wind opposite ways."""
    polygon = orient(polygon, 1.0)
    rings = [np.asarray(r.coords) for r in (polygon.exterior, *polygon.interiors)]
    return np.concatenate([np.hstack([r[:-1, :2], r[1:, :2]]) for r in rings])


def fill_edges(edges: np.ndarray, height: int, width: int):
    """Pixels of an (height, width) grid whose centre (j + .5, i + .5) is inside the edges.

    Nonzero winding, so overlapping polygons union and oppositely wound holes cut out.
    Returns (row0, col0, boolean block) or None when nothing is covered.
    """
    u0, v0, u1, v1 = edges.T
    first = np.clip(np.ceil(np.minimum(v0, v1) - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(v0, v1) - 0.5), 0, height).astype(np.int64)
    count = stop - first
    keep = count > 0
    if not keep.any():
        return None
    u0, v0, u1, v1, first, count = u0[keep], v0[keep], u1[keep], v1[keep], first[keep], count[keep]
    edge = np.repeat(np.arange(len(count)), count)
    rows = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count - first, count)
    x = u0[edge] + (rows + 0.5 - v0[edge]) * (u1 - u0)[edge] / (v1 - v0)[edge]
    cols = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max()
    if c1 <= c0:
        return None
    span = c1 - c0 + 1
    winding = np.bincount(
        (rows - r0) * span + (cols - c0),
        weights=np.where(v1 > v0, 1.0, -1.0)[edge],
        minlength=(r1 - r0) * span,
    ).reshape(r1 - r0, span)
    return r0, c0, np.cumsum(winding, axis=1)[:, :-1] != 0


class PolygonLabels:
    """Label rasters from polygons at any mpp; unknown labels fail here, before any training."""

    def __init__(
        self,
        regions: list[Region],
        class_map: ClassMap | str,
        slide_mpp: float,
        slide_dimensions: tuple[int, int] | None = None,
        precedence: list | str | None = None,
        source: str | Path | None = None,
    ):
        self.class_map = load_class_map(class_map)
        self.mpp = float(slide_mpp)
        self.dimensions = tuple(slide_dimensions) if slide_dimensions else None
        self.source = str(source) if source is not None else None
        self.file_order = (precedence or self.class_map.precedence) == "file"
        self._rank = self.class_map.rank(None if precedence == "file" else precedence)
        classes = self._validate(regions)
        bounds = box(0, 0, *self.dimensions) if self.dimensions else None
        self._shapes, self._classes, clipped, outside = [], [], 0, 0
        for region, cls in zip(regions, classes, strict=True):
            parts = [region.polygon]
            if cls == SKIP:
                continue
            if bounds is not None and not bounds.contains(region.polygon):
                parts = _polygons(region.polygon.intersection(bounds))
                clipped, outside = clipped + bool(parts), outside + (not parts)
            self._shapes.extend(parts)
            self._classes.extend([cls] * len(parts))
        where = self.source or "annotations"
        if clipped:
            warnings.warn(f"{where}: {clipped} polygon(s) extend beyond the slide "
                          f"{self.dimensions}; clipped to it", stacklevel=2)
        if outside:
            warnings.warn(f"{where}: {outside} polygon(s) lie entirely outside the slide "
                          f"{self.dimensions}; dropped", stacklevel=2)
        self._edges = [_ring_edges(p) for p in self._shapes]
        self._tree = None

    def _validate(self, regions) -> list[int]:
        known, unknown = {}, []
        for label in dict.fromkeys(r.label for r in regions):
            try:
                known[label] = self.class_map.index(label, self.source)
            except InputError:
                unknown.append(label)
        if unknown:
            raise InputError(
                self.source, f"label(s) {', '.join(map(repr, unknown))} not in class map "
                f"{self.class_map.name!r}; known labels: {', '.join(self.class_map.known_labels())}"
            )
        return [known[r.label] for r in regions]

    def __getstate__(self):
        return {**self.__dict__, "_tree": None}  # STRtree is rebuilt in each worker

    def read(self, location, size, mpp: float | None = None) -> np.ndarray:
        """(h, w) uint8 labels; pixel (i, j) is the class at its centre, as in ``Slide.read``."""
        f = (self.mpp if mpp is None else float(mpp)) / self.mpp
        (x0, y0), (w, h) = location, size
        labels = np.full((h, w), self.class_map.unannotated, dtype=np.uint8)
        if self._shapes:
            if self._tree is None:
                self._tree = shapely.STRtree(self._shapes)
            hits = np.sort(self._tree.query(box(x0, y0, x0 + w * f, y0 + h * f)))
            if self.file_order:
                layers = [(self._classes[i], [i]) for i in hits]
            else:
                by_class = {}
                for i in hits:
                    by_class.setdefault(self._classes[i], []).append(i)
                layers = sorted(by_class.items(), key=lambda item: self._rank[item[0]])
            offset = np.array([x0, y0, x0, y0], dtype=np.float64)
            for cls, members in layers:
                edges = (np.concatenate([self._edges[i] for i in members]) - offset) / f
                block = fill_edges(edges, h, w)
                if block is not None:
                    r0, c0, inside = block
                    labels[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]][inside] = cls
        if self.dimensions:
            _ignore_outside(labels, (x0, y0), f, self.dimensions)
        return labels


class MaskLabels:
    """Label rasters from a label-mask image, possibly an exact integer downsample of the slide.

    ``mpp`` is the level-0 mpp of the slide the mask labels (for a k-fold downsampled mask its
    own is ``mpp * k``); None takes the mask file's own.  Locations are slide level-0 pixels.
    """

    def __init__(self, path, class_map, mpp: float | None = None, expected_dimensions=None):
        self.path = Path(path)
        self.class_map = load_class_map(class_map)
        self._lut = self.class_map.lut()
        self.slide = Slide(self.path, mpp=mpp)  # opens its file lazily, per process
        self.mask_dimensions = tuple(self.slide.dimensions)
        self.scale = self._scale(expected_dimensions)
        # Slide checks a plausible mpp range, so a coarse mask keeps the slide's mpp and reads
        # scale the requested mpp instead: output mpp m -> m * open_mpp / mask_mpp.
        self.mpp = self.slide.mpp if mpp is not None else self.slide.mpp / self.scale
        self.mask_mpp = self.mpp * self.scale

    def _scale(self, expected) -> int:
        (mw, mh) = self.mask_dimensions
        if expected is None or tuple(expected) == (mw, mh):
            return 1
        (W, H) = expected
        k = max(round(W / mw), 1)
        if k > 1 and mw in (W // k, -(-W // k)) and mh in (H // k, -(-H // k)):
            return k
        raise InputError(
            self.path, f"label mask is {mw}x{mh} but the slide is {W}x{H} "
            "(neither the same size nor an exact integer downsample)"
        )

    def _read_raw(self, location, size, mpp: float) -> np.ndarray:
        """Raw mask values; `location` in mask pixels, `mpp` the output's true resolution."""
        return self.slide.read(location=location, size=size, mpp=mpp * self.slide.mpp /
                               self.mask_mpp, resample="nearest", raw=True)

    def _map(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        labels = self._lut[raw]
        bad = (labels == UNMAPPED) & valid
        if bad.any():
            values = sorted({int(v) for v in np.unique(raw[bad])})
            raise InputError(
                self.path, f"mask value(s) {values} not in class map {self.class_map.name!r} "
                f"(known values: {sorted(self.class_map.mask_values)})"
            )
        labels[~valid] = IGNORE
        return labels

    def _valid(self, shape, location, f: float) -> np.ndarray:
        """Pixels whose centre lies on the mask (padding there must not count as a value)."""
        flags = np.zeros(shape, dtype=np.uint8)
        _ignore_outside(flags, location, f, self.mask_dimensions)
        return flags == 0

    def read(self, location, size, mpp: float | None = None) -> np.ndarray:
        """(h, w) uint8 labels; outside the mask is IGNORE."""
        mpp = self.mpp if mpp is None else float(mpp)
        k = self.scale
        at = (location[0] / k, location[1] / k)
        raw = self._read_raw(at, size, mpp)
        return self._map(raw, self._valid(raw.shape, at, mpp / self.mask_mpp))

    def check_values(self, max_side: int = 2048) -> dict[int, int]:
        """Scan a low-resolution copy for unmapped values; return pixel counts per label value."""
        mw, mh = self.mask_dimensions
        f = max(max(mw, mh) / max_side, 1.0)
        size = (max(math.ceil(mw / f), 1), max(math.ceil(mh / f), 1))
        raw = self._read_raw((0, 0), size, self.mask_mpp * f)
        valid = self._valid(raw.shape, (0, 0), f)
        values, counts = np.unique(self._map(raw, valid)[valid], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def open_labels(path, class_map, slide) -> LabelSource:
    """Polygon file (.xml/.geojson/.json, or XML/JSON content) or label-mask image for ``slide``."""
    path = Path(path)
    is_polygons = path.suffix.lower() in POLYGON_SUFFIXES
    if not is_polygons and path.suffix.lower() not in (".tif", ".tiff", ".png", ".jpg", ".bmp"):
        try:
            with path.open("rb") as handle:
                head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        except OSError as exc:
            raise InputError(path, f"cannot read labels: {exc.strerror or exc}") from None
        is_polygons = head[:1] in (b"<", b"{", b"[")
    if is_polygons:
        return PolygonLabels(read_annotations(path), class_map, slide.mpp, slide.dimensions,
                             source=path)
    return MaskLabels(path, class_map, mpp=slide.mpp, expected_dimensions=slide.dimensions)
