"""Files of a synthetic slide: pyramidal TIFFs (image, label mask) and Aperio ImageScope XML.

The TIFF layout is the one tiffslide reads as a generic pyramid: level 0 in the first page, the
reduced levels in its SubIFDs, resolution tags in pixels per centimetre (20000 px/cm = 0.5 um/px).
No date or host-dependent tag is written, so the same pixels give the same bytes.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import tifffile

TILE = 256
JPEG_QUALITY = 85
DOWNSAMPLES = (1, 2, 4, 8, 16)


def pyramid(level0: np.ndarray, nearest: bool) -> list[np.ndarray]:
    """Levels with downsample 1, 2, 4, ...; each from the one above (area average or nearest)."""
    levels = [level0]
    for _ in DOWNSAMPLES[1:]:
        prev = levels[-1]
        if nearest:
            levels.append(np.ascontiguousarray(prev[::2, ::2]))
        else:
            h, w = prev.shape[:2]
            levels.append(cv2.resize(prev, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return levels


def write_pyramid(path: Path, level0: np.ndarray, mpp: float, description: str) -> None:
    """Tiled pyramidal TIFF: RGB as JPEG (quality 85), a 2-D label map as lossless zlib."""
    label = level0.ndim == 2
    levels = pyramid(level0, nearest=label)
    px_per_cm = 1e4 / mpp
    kw = {
        "tile": (TILE, TILE),
        "photometric": "minisblack" if label else "rgb",
        "compression": "zlib" if label else "jpeg",
        "compressionargs": {"level": 6} if label else {"level": JPEG_QUALITY},
        "resolution": (px_per_cm, px_per_cm),
        "resolutionunit": "CENTIMETER",
        "metadata": None,
        "maxworkers": 1,
    }
    tmp = path.with_name(path.name + ".part")
    big = level0.nbytes > 2**31
    with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
        tw.write(
            levels[0], subifds=len(levels) - 1, description=description, software="wsiseg", **kw
        )
        for lvl in levels[1:]:
            tw.write(lvl, subfiletype=1, **kw)
    os.replace(tmp, path)


def label_polygons(labels: np.ndarray, classes=(1, 2, 3)) -> list[tuple[int, np.ndarray]]:
    """Outlines ``(class, (n, 2) float x, y)`` of every connected region of each class.

    Vertices are the centres ``(j + 0.5, i + 0.5)`` of the region's boundary pixels in the suite's
    level-0 convention (pixel j covers [j, j + 1)), from cv2.findContours, simplified by at most
    one pixel; rasterised at pixel centres they give back the region up to its boundary pixels.
    Holes cannot be expressed in Aperio XML, so a region with a hole is an error (the layouts
    never make one).
    """
    out = []
    for c in classes:
        binary = (labels == c).astype(np.uint8)
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
            raise RuntimeError(f"class {c} has a region with a hole; Aperio XML cannot hold it")
        for cnt in contours:
            pts = cv2.approxPolyDP(cnt, 1.0, True).reshape(-1, 2)
            if len(pts) >= 3:
                out.append((c, pts.astype(np.float64) + 0.5))
    return out


def write_aperio_xml(path: Path, polygons, names: dict[int, str], mpp: float) -> None:
    """Aperio ImageScope XML, one annotation layer, one Region per polygon with `Text` = its label.

    This is the BACH layout: ``Annotations/Annotation/Regions/Region@Text`` with
    ``Vertices/Vertex@X,Y`` in level-0 pixels; unannotated pixels are normal.
    """
    root = ET.Element("Annotations", MicronsPerPixel=f"{mpp:.6f}")
    ann = ET.SubElement(
        root,
        "Annotation",
        Id="1",
        Name="",
        ReadOnly="0",
        NameReadOnly="0",
        LineColorReadOnly="0",
        Incremental="0",
        Type="4",
        LineColor="65280",
        Visible="1",
        Selected="1",
        MarkupImagePath="",
        MacroName="",
    )
    attrs = ET.SubElement(ann, "Attributes")
    ET.SubElement(attrs, "Attribute", Name="Description", Id="0", Value="")
    regions = ET.SubElement(ann, "Regions")
    for i, (cls, pts) in enumerate(polygons, start=1):
        area = abs(float(cv2.contourArea(pts.astype(np.float32))))
        length = float(cv2.arcLength(pts.astype(np.float32), True))
        region = ET.SubElement(
            regions,
            "Region",
            Id=str(i),
            Type="0",
            Zoom="1",
            Selected="0",
            ImageLocation="",
            ImageFocus="-1",
            Length=f"{length:.1f}",
            Area=f"{area:.1f}",
            LengthMicrons=f"{length * mpp:.1f}",
            AreaMicrons=f"{area * mpp * mpp:.1f}",
            Text=names[cls],
            NegativeROA="0",
            InputRegionId="0",
            Analyze="1",
            DisplayId=str(i),
        )
        ET.SubElement(region, "Attributes")
        vertices = ET.SubElement(region, "Vertices")
        for x, y in pts:
            ET.SubElement(vertices, "Vertex", X=f"{x:g}", Y=f"{y:g}", Z="0")
    ET.SubElement(ann, "Plots")
    ET.indent(root, space="  ")
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n")
    os.replace(tmp, path)


def slide_record(
    name: str, split: str, out: Path, files: dict[str, str], size: int, mpp: float, **fields
) -> dict:
    """A slide's manifest record: what every layout records (name, split, files and their
    sizes, dimensions, mpp), then the layout's own `fields` in the order given."""
    return {
        "name": name,
        "split": split,
        "files": files,
        "bytes": {k: (out / f).stat().st_size for k, f in files.items()},
        "width": size,
        "height": size,
        "mpp": mpp,
        **fields,
    }
