"""Annotation file formats -> `Region`s: Aperio ImageScope XML (BACH), ASAP XML (TIGER) and
QuPath GeoJSON, with the spelling and geometry quirks real files have.
"""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE, SKIP, load_class_map


@dataclass(frozen=True)
class Region:
    """One annotated polygon in level-0 pixel coordinates (x = column, y = row)."""

    label: str
    polygon: Polygon


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

    def numbers(self, values) -> np.ndarray:
        """`number` of each value, vectorised: a 10⁶-vertex polygon must not take minutes."""
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            array = np.array([self.number(v) for v in values], dtype=np.float64)
        if array.ndim != 1:
            raise InputError(self.path, "coordinates are not plain numbers")
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(self.path, f"non-finite coordinate {values[int(np.argmax(bad))]!r}")
        return array

    def points(self, xs, ys) -> np.ndarray:
        return np.column_stack([self.numbers(xs), self.numbers(ys)]).reshape(-1, 2)

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


def _open_ring(points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    end = len(points)
    while end > 1 and (points[0] == points[end - 1]).all():
        end -= 1
    return points[:end]


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
            vertices = region.findall("Vertices/Vertex")
            points = out.points([v.get("X") for v in vertices], [v.get("Y") for v in vertices])
            if region.get("Type") == "2" and len(points) == 2:  # ellipse: bounding-box corners
                points = _ellipse(points)
            if region.get("NegativeROA") == "1":  # ImageScope "negative" region: cut it out
                negative.extend(
                    _polygons(shapely.make_valid(Polygon(points))) if len(points) >= 3 else []
                )
            else:
                out.add(label or layer, points)
        if negative:
            cut = shapely.union_all(negative)
            out.regions[start:] = [
                Region(r.label, p)
                for r in out.regions[start:]
                for p in _polygons(r.polygon.difference(cut))
            ]


def _read_asap(root, out: _Collector) -> None:
    for annotation in root.findall("Annotations/Annotation"):
        group = (annotation.get("PartOfGroup") or "").strip()
        label = group if group.lower() not in ("", "none") else annotation.get("Name") or ""
        if annotation.get("Type") in ("Dot", "PointSet"):
            out.issues["point annotation(s) skipped"] += 1
            continue
        coords = annotation.findall("Coordinates/Coordinate")
        order = np.argsort(out.numbers([c.get("Order", "0") for c in coords]), kind="stable")
        points = out.points([c.get("X") for c in coords], [c.get("Y") for c in coords])
        out.add(label, points[order])


def _feature_label(properties) -> str:
    properties = properties if isinstance(properties, dict) else {}
    classification = properties.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name") or ": ".join(classification.get("names") or [])
        if name:
            return str(name)
    elif isinstance(classification, str) and classification.strip():
        return classification
    return str(properties.get("name") or "")


def _add_geometry(out: _Collector, label: str, geometry, where: str) -> None:
    geometry = geometry if isinstance(geometry, dict) else {}
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = coords
    elif kind == "GeometryCollection":
        parts = geometry.get("geometries") or []
        if not isinstance(parts, list):
            raise InputError(out.path, f"{where}: GeometryCollection geometries is not a list")
        for g in parts:
            _add_geometry(out, label, g, where)
        return
    else:
        raise InputError(
            out.path, f"{where} is a {kind} geometry; only Polygon and MultiPolygon can be labels"
        )
    for rings in polygons if isinstance(polygons, list) else [polygons]:
        if not rings:
            continue
        if not isinstance(rings, list):
            raise InputError(out.path, f"{where}: {kind} coordinates are not lists of rings")
        arrays = [_ring(out, ring, where) for ring in rings]
        out.add(label, arrays[0], arrays[1:])


def _ring(out: _Collector, ring, where: str) -> np.ndarray:
    """A GeoJSON ring (a list of [x, y, ...] positions) as an (n, 2) array."""
    if not isinstance(ring, list) or not all(isinstance(p, list) and len(p) >= 2 for p in ring):
        raise InputError(out.path, f"{where}: a ring is not a list of [x, y] positions")
    return out.points([p[0] for p in ring], [p[1] for p in ring])


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
            root = ET.fromstring(text.lstrip())  # a declaration after a blank line is common
        except ET.ParseError as exc:
            raise InputError(path, f"not well-formed XML ({exc})") from None
        if root.tag == "Annotations":
            _read_aperio(root, out)
        elif root.tag == "ASAP_Annotations":
            _read_asap(root, out)
        else:
            raise InputError(
                path,
                f"unknown XML annotation format <{root.tag}>; expected Aperio "
                "<Annotations> or ASAP <ASAP_Annotations>",
            )
    elif start in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc})") from None
        except RecursionError:
            raise InputError(path, "JSON nested too deeply to be GeoJSON") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
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
