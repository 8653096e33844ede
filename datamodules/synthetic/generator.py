"""Synthetic BACH-like benchmark slides with exact labels, generated in seconds.

`generate` writes, per slide, a pyramidal JPEG TIFF (0.5 um/px, downsamples 1-16), a label-mask
TIFF of the same geometry (class + 1, 0 = unlabeled), an Aperio ImageScope XML of the same regions,
and one `manifest.json` for the set. The content is built so the papers' hypotheses are testable
(context vs zoom, class imbalance, partial and noisy annotation); see docs/synthetic.md.
`ensure_dataset` reuses an existing set when its manifest matches the parameters.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import cv2
import numpy as np

from datamodules.errors import InputError
from datamodules.synthetic.files import (
    DOWNSAMPLES,
    label_polygons,
    slide_record,
    write_aperio_xml,
    write_pyramid,
)
from datamodules.synthetic.layout import fill_polygon
from datamodules.synthetic.render import (
    GENERATOR_VERSION,
    LAYOUTS,
    SLIDE_MPP,
    render_slide,
    slide_rngs,
)
from datamodules.synthetic.tiger import clear_tree, make_tiger_slide, manifest_fields

#: Bump when the pixels, labels or file layout change: `ensure_dataset` then regenerates.
CLASS_MAP = "bach"
CLASS_NAMES = ("normal", "benign", "in situ", "invasive")
XML_NAMES = {1: "Benign", 2: "Carcinoma in situ", 3: "Invasive carcinoma"}
SPLIT_NAMES = ("train", "val", "test")
MAX_SIZE = 32768  # a slide is rendered in memory: 32768² RGB is 3 GiB


def generate(
    out_dir: str | Path,
    n_slides: int = 6,
    size: int = 8192,
    seed: int = 0,
    splits: tuple[int, int, int] = (4, 1, 1),
    unlabeled_band: int = 0,
    label_noise: float = 0.0,
    layout: str = "default",
    progress: bool = True,
    workers: int = 2,
) -> dict:
    """Write a synthetic slide set into `out_dir` and return its manifest.

    Args:
        out_dir: folder for ``slide_NN.tiff``, ``slide_NN_mask.tiff``, ``slide_NN.xml`` and
            ``manifest.json`` (created if missing; files of an earlier set are replaced).
        n_slides: number of slides.
        size: width = height of level 0 in pixels at 0.5 um/px; a multiple of 16 (so every
            pyramid level is exact), 512 to 32768.
        seed: slide ``i`` depends only on (seed, i), so sets of different sizes share slides.
        splits: relative train/val/test shares; slides are assigned in order, every split with a
            positive share gets at least one slide while slides last.
        unlabeled_band: width in pixels of an unlabeled band (mask value 0) centred on every
            boundary between classes, in the mask only (DMMN-style partial annotation); 0 = off.
        label_noise: fraction of lesion regions whose annotated class (mask and XML) is replaced
            by another class, normal included (a missed lesion); the pixels keep the true class.
        layout: "default" (BACH-like breast tissue) or "tiger" (TIGER's WSIROIS folders, 7
            tissue classes, ASAP XML, ROI PNGs; see `datamodules.synthetic.tiger`).
        progress: show a progress bar on stderr.
        workers: threads rendering slides in parallel (the output does not depend on it).
    """
    params = _params(n_slides, size, seed, splits, unlabeled_band, label_noise, layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = _read_manifest(out)
    (out / "manifest.json").unlink(missing_ok=True)  # a half-written set must not look complete
    if layout == "tiger":  # the TIGER reader globs its folders: no stale slides may stay
        clear_tree(out)
    names = _assign_splits(n_slides, params["splits"])
    jobs = [dict(params, index=i, out_dir=str(out), split=names[i]) for i in range(n_slides)]
    records = _run(jobs, workers, progress)
    manifest = _manifest(params, records)
    if old:  # drop files of an earlier, larger set
        keep = {f for r in records for f in r["files"].values()}
        for r in old.get("slides", []):
            for f in r.get("files", {}).values():
                if f not in keep and "/" not in f:
                    (out / f).unlink(missing_ok=True)
    tmp = out / "manifest.json.part"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest


def ensure_dataset(out_dir: str | Path, progress: bool = True, workers: int = 2, **params) -> dict:
    """The manifest of the set in `out_dir`, generating it only if missing, stale or incomplete.

    `params` are those of `generate`. The set is reused when the manifest has the same parameters
    and generator version and every file it lists exists with the recorded size.
    """
    defaults = {
        "n_slides": 6,
        "size": 8192,
        "seed": 0,
        "splits": (4, 1, 1),
        "unlabeled_band": 0,
        "label_noise": 0.0,
        "layout": "default",
    }
    unknown = set(params) - set(defaults)
    if unknown:
        raise InputError(None, f"unknown synthetic-data parameter(s): {', '.join(sorted(unknown))}")
    merged = {**defaults, **params}
    wanted = _params(**merged)
    out = Path(out_dir)
    manifest = _read_manifest(out)
    if manifest and manifest.get("params") == wanted and _complete(out, manifest):
        return manifest
    return generate(out, progress=progress, workers=workers, **merged)


# ---------------------------------------------------------------------- parameters, manifest
def _params(n_slides, size, seed, splits, unlabeled_band, label_noise, layout) -> dict:

    def bad(problem):
        return InputError(None, f"synthetic data: {problem}")

    if not isinstance(n_slides, (int, np.integer)) or n_slides < 1:
        raise bad(f"n_slides must be a positive integer, got {n_slides!r}")
    if not isinstance(size, (int, np.integer)) or size % 16 or not 512 <= size <= MAX_SIZE:
        raise bad(f"size must be a multiple of 16 between 512 and {MAX_SIZE}, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise bad(f"seed must be a non-negative integer, got {seed!r}")
    splits = list(splits)
    if (
        len(splits) != 3
        or any(not isinstance(s, (int, float)) or s < 0 for s in splits)
        or not sum(splits)
    ):
        raise bad(f"splits must be three non-negative train/val/test shares, got {splits!r}")
    if not isinstance(unlabeled_band, (int, np.integer)) or unlabeled_band < 0:
        raise bad(f"unlabeled_band must be a non-negative integer (pixels), got {unlabeled_band!r}")
    if not 0.0 <= float(label_noise) <= 1.0:
        raise bad(f"label_noise must be a fraction in [0, 1], got {label_noise!r}")
    if layout not in LAYOUTS:
        raise bad(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "tiger" and (unlabeled_band or label_noise):
        raise bad("layout 'tiger' takes no unlabeled_band or label_noise")
    return {
        "n_slides": int(n_slides),
        "size": int(size),
        "seed": int(seed),
        "splits": [int(s) if float(s).is_integer() else float(s) for s in splits],
        "unlabeled_band": int(unlabeled_band),
        "label_noise": float(label_noise),
        "layout": layout,
        "version": GENERATOR_VERSION,
    }


def _assign_splits(n: int, shares) -> list[str]:
    """Split names for slides 0..n-1 in order: one per non-empty split first, then by share."""
    total = float(sum(shares))
    counts = [0, 0, 0]
    for i, s in enumerate(shares):
        if s > 0 and sum(counts) < n:
            counts[i] = 1
    while sum(counts) < n:
        deficit = [
            n * s / total - c if s > 0 else -np.inf for s, c in zip(shares, counts, strict=True)
        ]
        counts[int(np.argmax(deficit))] += 1
    return [name for name, c in zip(SPLIT_NAMES, counts, strict=True) for _ in range(c)]


def _manifest(params: dict, records: list[dict]) -> dict:
    totals = {k: sum(r["pixel_counts"][k] for r in records) for k in records[0]["pixel_counts"]}
    manifest = {
        "generator": "wsiseg.datamodules.synthetic",
        "version": GENERATOR_VERSION,
        "params": params,
        "seed": params["seed"],
        "class_map": CLASS_MAP,
        "classes": list(CLASS_NAMES),
        "mask_values": {"0": "unlabeled", **{str(i + 1): c for i, c in enumerate(CLASS_NAMES)}},
        "xml_labels": {CLASS_NAMES[k]: v for k, v in XML_NAMES.items()},
        "mpp": SLIDE_MPP,
        "level_downsamples": list(DOWNSAMPLES),
        "splits": {s: [r["name"] for r in records if r["split"] == s] for s in SPLIT_NAMES},
        "pixel_counts": totals,
        "slides": records,
    }
    if params["layout"] == "tiger":
        manifest.update(manifest_fields())
    return manifest


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _complete(out: Path, manifest: dict) -> bool:
    for r in manifest.get("slides", []):
        for key, f in r.get("files", {}).items():
            p = out / f
            if not p.is_file() or p.stat().st_size != r.get("bytes", {}).get(key):
                return False
    return bool(manifest.get("slides"))


# ---------------------------------------------------------------------- rendering
def _run(jobs: list[dict], workers: int, progress: bool) -> list[dict]:
    """Render slides on `workers` threads: the heavy steps (OpenCV, numpy gathers, JPEG and zlib
    encoding) release the GIL, and threads avoid both fork hazards (a forked OpenCV thread pool
    deadlocks) and spawn's need for an ``if __name__ == "__main__"`` guard in the caller."""
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc="synthetic slides", unit="slide", disable=not progress) as bar:
        if workers <= 1 or len(jobs) == 1:
            records = []
            for job in jobs:
                records.append(make_slide(job))
                bar.update()
            return records
        with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
            futures = [pool.submit(make_slide, job) for job in jobs]
            for f in as_completed(futures):
                f.result()
                bar.update()
            return [f.result() for f in futures]


def make_slide(job: dict) -> dict:
    """Render and write one slide (image, mask, XML); return its manifest record."""

    if job["layout"] == "tiger":
        return make_tiger_slide(job)
    size, i, out = job["size"], job["index"], Path(job["out_dir"])
    name = f"slide_{i:02d}"
    files = {"image": f"{name}.tiff", "mask": f"{name}_mask.tiff", "annotations": f"{name}.xml"}
    rgb, lay = render_slide(size, job["seed"], i, job["layout"])
    tissue_px = int(np.count_nonzero(lay.tex))
    del lay.tex
    desc = f"wsiseg synthetic {{}} {name} (generator v{GENERATOR_VERSION}) | MPP = {SLIDE_MPP}"
    write_pyramid(out / files["image"], rgb, SLIDE_MPP, desc.format("slide"))
    del rgb

    annotated, relabelled = _annotated_classes(lay.regions, job["label_noise"], job["seed"], i)
    labels = np.zeros((size, size), np.uint8)
    for region, cls in zip(lay.regions, annotated, strict=True):
        if cls:
            fill_polygon(labels, region.polygon, cls)
    polygons = label_polygons(labels)
    write_aperio_xml(out / files["annotations"], polygons, XML_NAMES, SLIDE_MPP)
    mask = labels + 1
    if job["unlabeled_band"]:
        _clear_bands(mask, labels, lay.regions, job["unlabeled_band"])
    counts = [int(np.count_nonzero(mask == v)) for v in range(len(CLASS_NAMES) + 1)]
    write_pyramid(out / files["mask"], mask, SLIDE_MPP, desc.format("label mask"))
    return slide_record(
        name,
        job["split"],
        out,
        files,
        size,
        SLIDE_MPP,
        pixel_counts={
            "unlabeled": int(counts[0]),
            **{c: int(counts[k + 1]) for k, c in enumerate(CLASS_NAMES)},
        },
        tissue_pixels=tissue_px,
        regions={c: sum(1 for a in annotated if a == k) for k, c in enumerate(CLASS_NAMES) if k},
        relabelled=relabelled,
    )


def _annotated_classes(regions, label_noise: float, seed: int, index: int):
    """Annotated class per region: the true one, except `label_noise` of them swapped at random."""
    rng = slide_rngs(seed, index)[2]
    classes = [r.cls for r in regions]
    n = int(round(label_noise * len(regions)))
    relabelled = []
    for k in sorted(rng.choice(len(regions), size=n, replace=False).tolist()) if n else []:
        new = int(rng.choice([c for c in range(len(CLASS_NAMES)) if c != classes[k]]))
        relabelled.append(
            {"region": k, "true": CLASS_NAMES[classes[k]], "annotated": CLASS_NAMES[new]}
        )
        classes[k] = new
    return classes, relabelled


def _clear_bands(mask: np.ndarray, labels: np.ndarray, regions, width: int) -> None:
    """Set mask = 0 within width/2 px of a class boundary (regions' outlines are the only ones)."""
    h, w = labels.shape
    half = width / 2.0
    pad = int(np.ceil(half)) + 2
    k3 = np.ones((3, 3), np.uint8)
    for region in regions:
        x0, y0 = np.floor(region.polygon.min(0)).astype(int) - pad
        x1, y1 = np.ceil(region.polygon.max(0)).astype(int) + pad + 1
        sy, sx = slice(max(y0, 0), min(y1, h)), slice(max(x0, 0), min(x1, w))
        crop = labels[sy, sx]
        edge = cv2.dilate(crop, k3) != cv2.erode(crop, k3)
        if not edge.any():
            continue
        dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)
        mask[sy, sx][dist <= max(half - 1.0, 0.0)] = 0
