"""Synthetic slides in the TIGER challenge's WSIROIS layout (`wsiseg synth --layout tiger`).

The same texture bank as the BACH-like set, with every structure annotated in TIGER's 7 tissue
classes, so the TIGER reader and the stroma task run end to end without TIGER data:

=====================================  ==========================  ===========
structure (texture)                    TIGER class (mask value)    stroma task
=====================================  ==========================  ===========
tissue background (stroma)             tumor-associated stroma 2   stroma
benign-like blobs (stroma + granules)  inflamed stroma 6           stroma
invasive regions (cords in stroma)     invasive tumor 1            rest
in situ ducts (solid, with a rim)      in-situ tumor 3             rest
small hollow ducts and acini           healthy glands 4            rest
fat lobules                            rest 7                      rest
glass                                  unannotated 0               ignored
=====================================  ==========================  ===========

The benign texture's 20x granules stand in for the lymphocytes of inflamed stroma; glass is left
unannotated, so patches of glass only are "empty" and dropped.

Necrosis (5) has no synthetic texture and never occurs. Stroma between the cords of an invasive
region is labelled invasive (as TIGER's region-level annotations do), so the stroma task needs
context, not just texture. Per slide, a few rectangular ROIs are annotated (TIGER annotates ROIs,
not whole slides); the ASAP XML holds the ROIs and the class polygons inside them, and the ROI
PNGs and their masks are rasterised from that XML, so both label sources agree exactly::

    wsirois/wsi-level-annotations/images/slide_NN.tif                          (pyramidal TIFF)
    wsirois/wsi-level-annotations/annotations-tissue-cells-xmls/slide_NN.xml   (ASAP XML)
    wsirois/roi-level-annotations/tissue-bcss/images/slide_NN_[x1, y1, x2, y2].png
    wsirois/roi-level-annotations/tissue-bcss/masks/slide_NN_[x1, y1, x2, y2].png  (values 0-7)
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import LineString, Polygon, box
from shapely.ops import split

from datamodules.labels.sources import PolygonLabels, read_annotations
from datamodules.synthetic.files import slide_record, write_pyramid
from datamodules.synthetic.layout import GRID, Region
from datamodules.synthetic.render import GENERATOR_VERSION, SLIDE_MPP, render_slide, slide_rngs
from datamodules.synthetic.textures import GLASS
from datamodules.synthetic.tiger_layout import GLANDS, TUMOR_STROMA

#: TIGER mask value -> ASAP group name (the names TIGER's XML files use).
TIGER_NAMES = {
    1: "invasive tumor",
    2: "tumor-associated stroma",
    3: "in-situ tumor",
    4: "healthy glands",
    5: "necrosis not in-situ",
    6: "inflamed stroma",
    7: "rest",
}
GROUP_COLORS = {
    "roi": "#F4FA58",
    **dict(
        zip(
            TIGER_NAMES.values(),
            ("#C80000", "#009600", "#FFC800", "#0064FF", "#505050", "#A0FF64", "#E6E6E6"),
            strict=True,
        )
    ),
}
WSI_DIR = "wsirois/wsi-level-annotations"
XML_DIR = f"{WSI_DIR}/annotations-tissue-cells-xmls"
ROI_DIR = "wsirois/roi-level-annotations/tissue-bcss"
#: `ensure_dataset` parameters of the default synthetic TIGER set (data/synthetic_tiger).
SYNTH_DEFAULTS = {"n_slides": 10, "size": 4096, "seed": 0, "splits": (8, 1, 1), "layout": "tiger"}
ROIS_PER_SLIDE = 3
_OURS = re.compile(r"^slide_\d{2,}(_\[[\d, ]+\])?\.(tif|xml|png)$")


# ---------------------------------------------------------------------- geometry
def hole_free(polygon: Polygon) -> list[Polygon]:
    """Pieces without holes whose union is `polygon`: ASAP (like Aperio) has no holes, so each
    hole is opened by cutting along a horizontal line through it."""
    if not polygon.interiors:
        return [polygon]
    x0, _, x1, _ = polygon.bounds
    _, hy0, _, hy1 = polygon.interiors[0].bounds
    y = round(hy0 + hy1) / 2  # on the half-pixel grid where that still crosses the hole
    y = y if hy0 < y < hy1 else (hy0 + hy1) / 2
    cut = LineString([(x0 - 1, y), (x1 + 1, y)])
    pieces = [g for g in split(polygon, cut).geoms if isinstance(g, Polygon)]
    return [q for piece in pieces for q in hole_free(piece)]


def _parts(geometry) -> list[Polygon]:
    if geometry.is_empty:
        return []
    if isinstance(geometry, Polygon):
        return [geometry]
    return [p for g in getattr(geometry, "geoms", []) for p in _parts(g)]


def visible_regions(regions: list[Region], rois) -> list[tuple[int, Polygon]]:
    """(class, polygon) pairs that tile what the painted raster shows inside `rois`.

    Each region loses what later regions paint over it, so the pieces never overlap and any
    precedence rule (``tiger``'s or ``tiger_stroma``'s) rasterises them to the same labels;
    then they are clipped to the ROI boxes and made hole-free.
    """
    shapes = [Polygon(r.polygon).buffer(0) for r in regions]
    out = []
    for roi in rois:
        frame = box(*roi)
        later = None
        for i in range(len(regions) - 1, -1, -1):  # back to front: the union of later shapes
            shape = shapes[i]
            if not shape.intersects(frame):
                continue
            seen = shape.intersection(frame)
            if later is not None:
                seen = seen.difference(later)
            later = shape if later is None else later.union(shape)
            for part in _parts(seen):
                out.extend((regions[i].cls, q) for q in _snapped(part) if q.area >= 1.0)
    return out


def _snapped(polygon: Polygon) -> list[Polygon]:
    """Hole-free pieces on the 0.001-px grid the XML is written on, still valid after rounding."""
    return [
        q
        for piece in hole_free(polygon)
        for part in _parts(shapely.set_precision(piece, 1e-3))
        for q in hole_free(part)
    ]


def roi_boxes(tex: np.ndarray, regions: list[Region], rng, n: int = ROIS_PER_SLIDE):
    """Up to `n` disjoint rectangles (x1, y1, x2, y2; end exclusive) of 1/4-1/2 the slide side,
    at least half tissue, centred on lesions (TIGER's ROIs lie in the tumour bed); sides are
    rarely multiples of the patch size, so the last patches of a ROI get padded."""
    size = tex.shape[0]
    centres = [r.polygon.mean(0) for r in regions if r.cls not in (TUMOR_STROMA, GLANDS)]
    if not centres:
        centres = list(np.argwhere(tex[::GRID, ::GRID] != GLASS)[:, ::-1] * GRID)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(200):
        if len(boxes) >= n:
            break
        w, h = (int(v) for v in rng.uniform(0.25, 0.5, 2) * size)
        cx, cy = centres[rng.integers(len(centres))]
        x1, y1 = int(np.clip(cx - w // 2, 0, size - w)), int(np.clip(cy - h // 2, 0, size - h))
        cand = (x1, y1, x1 + w, y1 + h)
        if any(_overlap(cand, b) for b in boxes):
            continue
        if (tex[y1 : y1 + h : 8, x1 : x1 + w : 8] != GLASS).mean() >= 0.5:
            boxes.append(cand)
    return boxes


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def roi_name(slide: str, roi) -> str:
    """TIGER's ROI file stem: ``<slide>_[x1, y1, x2, y2]``."""
    return f"{slide}_[{', '.join(str(int(v)) for v in roi)}]"


# ---------------------------------------------------------------------- files
def write_asap_xml(path: Path, rois, pieces: list[tuple[int, Polygon]]) -> None:
    """ASAP XML as in TIGER: ``roi`` rectangles, then one polygon annotation per piece, with
    ``PartOfGroup`` = the TIGER class name, and the groups listed once."""
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    items = [("roi", "Rectangle", box(*r).exterior.coords) for r in rois]
    items += [(TIGER_NAMES[c], "Polygon", p.exterior.coords) for c, p in pieces]
    for k, (group, kind, coords) in enumerate(items):
        ann = ET.SubElement(
            anns,
            "Annotation",
            Name=f"Annotation {k}",
            Type=kind,
            PartOfGroup=group,
            Color=GROUP_COLORS[group],
        )
        xy = ET.SubElement(ann, "Coordinates")
        for order, (x, y) in enumerate(list(coords)[:-1]):
            ET.SubElement(xy, "Coordinate", Order=str(order), X=f"{x:.3f}", Y=f"{y:.3f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    for name in dict.fromkeys(g for g, _, _ in items):
        group = ET.SubElement(
            groups, "Group", Name=name, PartOfGroup="None", Color=GROUP_COLORS[name]
        )
        ET.SubElement(group, "Attributes")
    ET.indent(root, space="  ")
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n")
    os.replace(tmp, path)


def _write_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".part.png")
    pixels = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(tmp), pixels):
        raise OSError(f"cannot write {tmp}")
    os.replace(tmp, path)


def clear_tree(out: Path) -> None:
    """Remove the files an earlier synthetic TIGER set wrote (only names this module makes), so
    a smaller or different set leaves no stale slides or ROIs for the reader to pick up."""
    for sub in (f"{WSI_DIR}/images", XML_DIR, f"{ROI_DIR}/images", f"{ROI_DIR}/masks"):
        folder = out / sub
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and _OURS.match(f.name):
                    f.unlink()


def make_tiger_slide(job: dict) -> dict:
    """Render one slide and write its WSI, XML, ROI images and ROI masks; return its record."""

    size, i, out = job["size"], job["index"], Path(job["out_dir"])
    name = f"slide_{i:02d}"
    for sub in (f"{WSI_DIR}/images", XML_DIR, f"{ROI_DIR}/images", f"{ROI_DIR}/masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rgb, lay = render_slide(size, job["seed"], i, "tiger")
    rois = roi_boxes(lay.tex, lay.regions, slide_rngs(job["seed"], i)[2])
    del lay.tex
    files = {"image": f"{WSI_DIR}/images/{name}.tif", "annotations": f"{XML_DIR}/{name}.xml"}
    desc = f"wsiseg synthetic TIGER slide {name} (v{GENERATOR_VERSION}) | MPP = {SLIDE_MPP}"
    write_pyramid(out / files["image"], rgb, SLIDE_MPP, desc)
    write_asap_xml(out / files["annotations"], rois, visible_regions(lay.regions, rois))
    # masks from the XML as written, so the ROI and WSI label sources agree by construction
    labels = PolygonLabels(
        read_annotations(out / files["annotations"]), "tiger", SLIDE_MPP, (size, size)
    )
    counts = np.zeros(8, np.int64)
    for k, roi in enumerate(rois):
        x1, y1, x2, y2 = roi
        raster = labels.read((x1, y1), (x2 - x1, y2 - y1))
        mask = np.where(raster == 255, 0, raster + 1).astype(np.uint8)
        counts += np.bincount(mask.ravel(), minlength=8)
        stem = roi_name(name, roi)
        files[f"roi{k}_image"] = f"{ROI_DIR}/images/{stem}.png"
        files[f"roi{k}_mask"] = f"{ROI_DIR}/masks/{stem}.png"
        _write_png(out / files[f"roi{k}_image"], rgb[y1:y2, x1:x2])
        _write_png(out / files[f"roi{k}_mask"], mask)
    return slide_record(
        name,
        job["split"],
        out,
        files,
        size,
        SLIDE_MPP,
        rois=[list(r) for r in rois],
        pixel_counts={
            "unlabeled": int(counts[0]),
            **{TIGER_NAMES[v]: int(counts[v]) for v in range(1, 8)},
        },
    )


def manifest_fields() -> dict:
    """Manifest entries that differ from the BACH-like set's."""
    return {
        "class_map": "tiger",
        "classes": list(TIGER_NAMES.values()),
        "mask_values": {"0": "unlabeled", **{str(v): n for v, n in TIGER_NAMES.items()}},
        "xml_labels": {n: n for n in TIGER_NAMES.values()},
        "layout": "tiger (wsirois); the reader splits by slide itself, 'split' is informational",
    }
