"""Write the bad-input corpus: files every `wsiseg` command must refuse in one line.

Everything is generated here (tifffile and the synthetic generator's TIFF writer), never copied
from real slides, so the corpus costs no repository space and can be rebuilt anywhere:

    python tests/make_bad_corpus.py [OUT]      # default: tests/data/bad (git-ignored)

tests/test_bad_inputs.py builds it once per session in a temporary folder. Next to the bad files
are the good ones they are paired with (a small slide, a prediction mask of its size), so each
case breaks exactly one thing.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import tifffile

from datamodules.synthetic.files import write_pyramid

SIZE = 512  # the good slide: SIZE² px at MPP um/px
MPP = 0.5

#: name -> what is wrong with it (the bad files); `good_*` files are the intact partners.
CASES = {
    "truncated.tiff": "a pyramidal TIFF cut off in the middle of its tile data",
    "empty.svs": "zero bytes",
    "notes.svs": "a text file named .svs",
    "no_pages.tiff": "a TIFF header with no image page at all",
    "zero_size.tiff": "a TIFF whose only page is 0x0 pixels",
    "no_tiles.tiff": "a tiled TIFF whose tiles are all missing (offsets and byte counts 0)",
    "malformed.xml": "Aperio XML that is not well-formed",
    "unknown_label.xml": "Aperio XML with a label the class map does not know",
    "off_slide.xml": "Aperio XML whose only polygon lies entirely outside the slide",
    "point.geojson": "QuPath GeoJSON with a Point geometry",
    "wrong_size_mask.tiff": "a label mask of another size than the slide",
    "bad_values_mask.tiff": "a label mask with values the class map does not list",
    "misspelt_config.yaml": "an experiment overlay with a misspelt key (max_epoch)",
    "misspelt_classmap.yaml": "a class map with a misspelt key (mask_valeus)",
}


def _region(label: str, points) -> str:
    vertices = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in points)
    return f'<Region Id="1" Text="{label}"><Vertices>{vertices}</Vertices></Region>'


def aperio_xml(regions: list[str]) -> str:
    return (
        '<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.5"><Annotation Id="1">'
        f"<Regions>{''.join(regions)}</Regions></Annotation></Annotations>\n"
    )


def _square(x: float, y: float, s: float) -> list[tuple[float, float]]:
    return [(x, y), (x + s, y), (x + s, y + s), (x, y + s)]


def _good_slide() -> np.ndarray:
    """Pink 'tissue' on white, so tissue detection finds something."""
    rgb = np.full((SIZE, SIZE, 3), 245, np.uint8)
    rgb[64:448, 64:448] = (200, 120, 170)
    return rgb


def _labels() -> np.ndarray:
    """BACH mask values (1 normal .. 4 invasive) in four quadrants."""
    half = SIZE // 2
    labels = np.ones((SIZE, SIZE), np.uint8)
    labels[:half, half:], labels[half:, :half], labels[half:, half:] = 2, 3, 4
    return labels


def _truncate(src: Path, dst: Path, fraction: float = 0.6) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])


def _no_tiles(path: Path) -> None:
    """A valid tiled TIFF, then its TileOffsets/TileByteCounts zeroed: a page with no data."""
    px_per_cm = 1e4 / MPP
    tifffile.imwrite(
        path,
        _good_slide(),
        photometric="rgb",
        tile=(128, 128),
        compression="zlib",
        resolution=(px_per_cm, px_per_cm),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages[0].tags
        n = tags["TileByteCounts"].count
        tags["TileByteCounts"].overwrite([0] * n)
        tags["TileOffsets"].overwrite([0] * n)


def make_corpus(out: str | Path) -> dict[str, Path]:
    """Write every case (and the good partners) into `out`; return name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = {name: out / name for name in CASES}
    good = {
        k: out / f"good_{k}"
        for k in ("slide.tiff", "pred_mask.tiff", "annotations.xml", "classmap.yaml")
    }

    write_pyramid(good["slide.tiff"], _good_slide(), MPP, "wsiseg bad-corpus slide")
    write_pyramid(good["pred_mask.tiff"], _labels(), MPP, "wsiseg bad-corpus prediction")
    _truncate(good["slide.tiff"], p["truncated.tiff"])
    p["empty.svs"].write_bytes(b"")
    p["notes.svs"].write_text("Aperio scan of case 17, see the LIS for the report.\n")
    p["no_pages.tiff"].write_bytes(b"II*\x00\x00\x00\x00\x00")  # first-IFD offset 0: no page
    with warnings.catch_warnings():  # "writing zero-size array to nonconformant TIFF": yes
        warnings.simplefilter("ignore")
        tifffile.imwrite(p["zero_size.tiff"], np.zeros((0, 0), np.uint8))
    _no_tiles(p["no_tiles.tiff"])

    inside = _square(100, 100, 200)
    good["annotations.xml"].write_text(aperio_xml([_region("Tumour", inside)]))
    p["malformed.xml"].write_text(aperio_xml([_region("Invasive", inside)])[:-40])
    p["unknown_label.xml"].write_text(aperio_xml([_region("Tumour", inside)]))
    p["off_slide.xml"].write_text(aperio_xml([_region("Invasive", _square(5000, 5000, 200))]))
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 10]},
             "properties": {"classification": {"name": "Invasive"}}}  # fmt: skip
    p["point.geojson"].write_text(json.dumps({"type": "FeatureCollection", "features": [point]}))

    write_pyramid(p["wrong_size_mask.tiff"], _labels()[:300, :200], MPP, "wrong size")
    values = _labels()
    values[10:20, 10:20] = 9  # bach lists 0..4
    write_pyramid(p["bad_values_mask.tiff"], values, MPP, "bad values")

    p["misspelt_config.yaml"].write_text("trainer:\n  max_epoch: 1\n")
    good["classmap.yaml"].write_text(
        "name: two\nclasses: [rest, tumour]\nunannotated: rest\n"
        "mask_values: {0: ignore, 1: rest, 2: tumour}\n"
    )
    p["misspelt_classmap.yaml"].write_text(
        good["classmap.yaml"].read_text().replace("mask_values", "mask_valeus")
    )
    return {**p, **{f"good_{k}": v for k, v in good.items()}}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "bad"
    for name, path in make_corpus(target).items():
        print(f"{path}  {CASES.get(name, '(good partner)')}")
