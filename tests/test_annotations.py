"""Annotations and label masks -> label rasters: readers, rasterization, masks."""

from __future__ import annotations

import json
import pickle
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import shapely
import tifffile
from shapely.geometry import Polygon

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE, load_class_map
from datamodules.labels.sources import (
    MaskLabels,
    PolygonLabels,
    Region,
    fill_edges,
    open_labels,
    read_annotations,
    region_stats,
)

BACH = load_class_map("bach")


def square(x, y, s):
    return [(x, y), (x + s, y), (x + s, y + s), (x, y + s)]


def aperio(regions) -> str:
    """regions: (region attrs, attribute value or None, vertices, annotation name)."""
    out = ['<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.5">']
    for attrs, value, vertices, name in regions:
        attr = f'<Attribute Name="Description" Value="{value}"/>' if value else ""
        verts = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
        out.append(
            f'<Annotation Id="1" Name="{name}"><Attributes/><Regions>'
            f'<Region Id="1" Type="0" {attrs}><Attributes>{attr}</Attributes>'
            f"<Vertices>{verts}</Vertices></Region></Regions></Annotation>"
        )
    return "\n".join(out + ["</Annotations>"])


def asap(annotations) -> str:
    """annotations: (group, type, vertices); coordinates written out of Order on purpose."""
    out = ["<ASAP_Annotations><Annotations>"]
    for i, (group, kind, vertices) in enumerate(annotations):
        coords = [f'<Coordinate Order="{j}" X="{x}" Y="{y}"/>' for j, (x, y) in enumerate(vertices)]
        out.append(
            f'<Annotation Name="Annotation {i}" Type="{kind}" PartOfGroup="{group}" '
            f'Color="#F4FA58"><Coordinates>{"".join(reversed(coords))}</Coordinates></Annotation>'
        )
    out.append("</Annotations><AnnotationGroups/></ASAP_Annotations>")
    return "\n".join(out)


def feature(geometry, name=None, classification=None):
    props = {}
    if classification:
        props["classification"] = {"name": classification, "colorRGB": -1}
    if name:
        props["name"] = name
    return {"type": "Feature", "geometry": geometry, "properties": props}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


# --------------------------------------------------------------------------- readers


def test_aperio_label_variants(tmp_path):
    path = write(
        tmp_path,
        "bach.xml",
        aperio(
            [
                ('Text="Carcinoma in situ"', None, square(10, 10, 20), ""),
                ('Text=""', "Invasive carcinoma", square(50, 10, 20), ""),
                ("", None, square(10, 50, 20), "Benign"),
            ]
        ),
    )
    regions = read_annotations(path)
    assert [r.label for r in regions] == ["Carcinoma in situ", "Invasive carcinoma", "Benign"]
    assert regions[0].polygon.area == pytest.approx(400)
    labels = PolygonLabels(regions, "bach", 0.5, (100, 100)).read((0, 0), (100, 100))
    assert labels[20, 20] == 2 and labels[20, 60] == 3 and labels[60, 20] == 1
    assert labels[90, 90] == 0  # unannotated = normal for BACH


def test_asap_ordered_by_order(tmp_path):
    path = write(
        tmp_path,
        "tiger.xml",
        asap(
            [
                ("tumor-associated stroma", "Polygon", square(0, 0, 40)),
                ("invasive tumor", "Polygon", [(50, 0), (90, 0), (90, 40), (50, 40)]),
                ("lymphocytes and plasma cells", "Dot", [(5, 5)]),
            ]
        ),
    )
    with pytest.warns(UserWarning, match="point annotation"):
        regions = read_annotations(path)
    assert [r.label for r in regions] == ["tumor-associated stroma", "invasive tumor"]
    assert regions[0].polygon.is_valid and regions[0].polygon.area == pytest.approx(1600)
    labels = PolygonLabels(regions, "tiger_stroma", 0.5, (100, 50)).read((0, 0), (100, 50))
    assert labels[20, 20] == 1 and labels[20, 70] == 0 and labels[45, 45] == IGNORE


def test_geojson_holes_and_multipolygon(tmp_path):
    ring, hole = square(0, 0, 60), square(20, 20, 20)
    data = {
        "type": "FeatureCollection",
        "features": [
            feature(
                {"type": "Polygon", "coordinates": [ring + ring[:1], hole + hole[:1]]},
                classification="Benign",
            ),
            feature(
                {
                    "type": "MultiPolygon",
                    "coordinates": [[square(70, 0, 10)], [square(70, 20, 10)]],
                },
                name="Invasive",
            ),
        ],
    }
    regions = read_annotations(write(tmp_path, "qupath.geojson", data))
    assert [r.label for r in regions] == ["Benign", "Invasive", "Invasive"]
    assert regions[0].polygon.area == pytest.approx(3600 - 400)
    labels = PolygonLabels(regions, BACH, 0.5).read((0, 0), (100, 100))
    assert labels[10, 10] == 1 and labels[30, 30] == 0  # the hole is unannotated
    assert labels[5, 75] == 3 and labels[25, 75] == 3 and labels[15, 75] == 0
    # a bare list of features works too
    assert len(read_annotations(write(tmp_path, "list.json", data["features"]))) == 3


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            {
                "type": "FeatureCollection",
                "features": [feature({"type": "Point", "coordinates": [1, 2]}, name="Benign")],
            },
            "Point geometry",
        ),
        ("<Annotations><Annotation><Regions></Annotation>", "not well-formed XML"),
        ("<Slide><Foo/></Slide>", "unknown XML annotation format"),
        ("<Annotations><Annotation Name='x'><Regions/></Annotation></Annotations>", "no polygon"),
        ({"type": "FeatureCollection", "features": []}, "no polygon"),
        ("just text", "not an annotation file"),
    ],
)
def test_reader_errors_name_the_file(tmp_path, text, problem):
    path = write(tmp_path, "bad.xml" if isinstance(text, str) else "bad.geojson", text)
    with pytest.raises(InputError, match=problem) as err:
        read_annotations(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_short_and_invalid_polygons(tmp_path):
    bowtie = [(0, 0), (20, 20), (20, 0), (0, 20)]
    path = write(
        tmp_path,
        "mixed.xml",
        aperio(
            [
                ('Text="Benign"', None, [(0, 0), (5, 5)], ""),
                ('Text="Benign"', None, bowtie, ""),
            ]
        ),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        regions = read_annotations(path)
    messages = " | ".join(str(w.message) for w in caught)
    assert "fewer than 3 vertices" in messages and "repaired" in messages
    assert str(path) in messages
    assert all(r.polygon.is_valid for r in regions) and len(regions) == 2  # two triangles
    assert sum(r.polygon.area for r in regions) == pytest.approx(200)


def test_unknown_label_fails_at_construction(tmp_path):
    regions = [
        Region("Benign", Polygon(square(0, 0, 5))),
        Region("Tumor", Polygon(square(9, 9, 5))),
    ]
    with pytest.raises(InputError, match=r"'Tumor'.*class map 'bach'.*known labels: benign"):
        PolygonLabels(regions, "bach", 0.5, source=tmp_path / "a.xml")


# --------------------------------------------------------------------------- rasterization


def test_partly_outside_is_clipped_with_one_warning(tmp_path):
    regions = [
        Region("Benign", Polygon(square(80, 80, 40))),
        Region("Benign", Polygon(square(-10, 50, 20))),
        Region("Invasive", Polygon(square(300, 300, 10))),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = PolygonLabels(regions, BACH, 0.5, (100, 100), source="slide1.xml")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("slide1.xml" in m for m in messages)
    assert "2 polygon(s) extend beyond" in messages[0] and "entirely outside" in messages[1]
    assert [p.area for p in source._shapes] == [400, 200]
    labels = source.read((50, 50), (100, 100))  # half of this window is off the slide
    assert labels[40, 40] == 1 and labels[10, 10] == 0
    assert (labels[50:, :] == IGNORE).all() and (labels[:, 50:] == IGNORE).all()


def test_overlap_precedence_both_ways():
    regions = [
        Region("Invasive", Polygon(square(0, 0, 30))),
        Region("Benign", Polygon(square(20, 20, 30))),
    ]
    default = PolygonLabels(regions, BACH, 0.5).read((0, 0), (60, 60))
    assert default[25, 25] == 3  # later class (invasive) wins
    flipped = PolygonLabels(regions, BACH, 0.5, precedence=["invasive", "in situ", "benign"])
    assert flipped.read((0, 0), (60, 60))[25, 25] == 1
    in_file_order = PolygonLabels(regions, BACH, 0.5, precedence="file")
    assert in_file_order.read((0, 0), (60, 60))[25, 25] == 1
    assert default[5, 5] == 3 and default[45, 45] == 1


def test_area_consistent_across_mpp():
    poly = Polygon([(103.3, 91.7), (811.2, 140.4), (700.9, 733.1), (240.5, 610.2)])
    source = PolygonLabels([Region("Benign", poly)], BACH, 0.25)
    fine = (source.read((0, 0), (1000, 1000), mpp=0.25) == 1).sum()
    coarse = (source.read((0, 0), (250, 250), mpp=1.0) == 1).sum()
    assert fine == pytest.approx(poly.area, rel=0.002)
    assert fine / coarse == pytest.approx((1.0 / 0.25) ** 2, rel=0.02)


def test_fill_matches_pixel_centres():
    """Exact pixel-centre semantics, fractional window origin, a hole and an overlap."""
    rng = np.random.default_rng(0)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = rng.uniform(20, 45, 40)
    outer = Polygon(np.c_[50 + radii * np.cos(angles), 50 + radii * np.sin(angles)])
    shape = outer.difference(Polygon(square(45.3, 45.3, 9.1))).union(
        Polygon(square(70.2, 70.2, 40))
    )
    regions = [
        Region("Benign", p)
        for p in [
            outer.difference(Polygon(square(45.3, 45.3, 9.1))),
            Polygon(square(70.2, 70.2, 40)),
        ]
    ]
    x0, y0, f = 3.7, -2.2, 0.8
    labels = PolygonLabels(regions, BACH, 0.5).read((x0, y0), (140, 150), mpp=0.5 * f)
    jj, ii = np.meshgrid(np.arange(140), np.arange(150))
    expected = shapely.contains_xy(shape, x0 + (jj + 0.5) * f, y0 + (ii + 0.5) * f)
    assert (labels == 1).sum() > 1000
    differ = (labels == 1) != expected
    centres = shapely.points(x0 + (jj[differ] + 0.5) * f, y0 + (ii[differ] + 0.5) * f)
    assert (shapely.distance(shape.boundary, centres) < 1e-9).all()  # only exact ties differ


def test_fill_edges_empty_and_outside():
    edges = np.array([[-5, -5, -1, -5], [-1, -5, -1, -1], [-1, -1, -5, -5]], float)
    assert fill_edges(edges, 10, 10) is None


def test_region_stats_and_pickle():
    regions = [
        Region("Benign", Polygon(square(0, 0, 1000))),
        Region("benign", Polygon(square(0, 0, 2000))),
        Region("Invasive", Polygon(square(0, 0, 500))),
    ]
    stats = region_stats(regions, "bach", 0.5)
    assert stats["benign"]["count"] == 2 and stats["normal"]["count"] == 0
    assert stats["benign"]["area_mm2"] == pytest.approx(5e6 * 0.25 / 1e6)
    source = PolygonLabels(regions, BACH, 0.5)
    before = source.read((0, 0), (64, 64), mpp=40)
    assert np.array_equal(pickle.loads(pickle.dumps(source)).read((0, 0), (64, 64), mpp=40), before)


# --------------------------------------------------------------------------- masks


def write_mask(path, arr, mpp):
    tifffile.imwrite(path, arr, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


def test_mask_labels_map_values(tmp_path):
    arr = np.zeros((80, 120), np.uint8)
    arr[10:40, 20:60], arr[50:70, 30:90] = 2, 6
    path = write_mask(tmp_path / "mask.tif", arr, 0.5)
    source = MaskLabels(path, "tiger_stroma")
    labels = source.read((0, 0), (120, 80))
    expected = np.where(arr == 0, IGNORE, np.isin(arr, (2, 6)).astype(np.uint8))
    assert np.array_equal(labels, expected)
    assert source.read((100, 60), (40, 40))[30, 30] == IGNORE  # off the mask
    coarse = source.read((0, 0), (60, 40), mpp=1.0)
    assert coarse[12, 20] == 1 and coarse[30, 30] == 1 and coarse[2, 2] == IGNORE
    assert source.check_values() == {1: (30 * 40 + 20 * 60), IGNORE: 80 * 120 - 2400}
    assert np.array_equal(pickle.loads(pickle.dumps(source)).read((0, 0), (120, 80)), labels)


def test_mask_value_outside_map(tmp_path):
    arr = np.ones((64, 64), np.uint8)
    arr[40:, 40:] = 9
    source = MaskLabels(write_mask(tmp_path / "m.tif", arr, 0.5), "bach")
    assert (source.read((0, 0), (32, 32)) == 0).all()
    with pytest.raises(InputError, match=r"mask value\(s\) \[9\] not in class map 'bach'"):
        source.read((0, 0), (64, 64))
    with pytest.raises(InputError, match="m.tif"):
        source.check_values()


def test_mask_size_and_downsample(tmp_path):
    arr = np.zeros((50, 75), np.uint8)
    arr[:, 40:] = 4
    path = write_mask(tmp_path / "small.tif", arr, 2.0)
    source = MaskLabels(path, "bach", mpp=0.5, expected_dimensions=(300, 200))
    assert source.scale == 4 and source.mpp == 0.5 and source.mask_mpp == 2.0
    labels = source.read((150, 100), (20, 10))  # slide level-0 coordinates and mpp
    assert (labels[:, :10] == IGNORE).all() and (labels[:, 10:] == 3).all()
    with pytest.raises(InputError, match="neither the same size nor an exact integer"):
        MaskLabels(path, "bach", mpp=0.5, expected_dimensions=(310, 200))


def test_open_labels_dispatch(tmp_path):
    slide = SimpleNamespace(mpp=0.5, dimensions=(64, 64))
    xml = write(tmp_path, "a.xml", aperio([('Text="Benign"', None, square(0, 0, 8), "")]))
    assert isinstance(open_labels(xml, "bach", slide), PolygonLabels)
    noext = write(
        tmp_path,
        "labels",
        json.dumps([feature({"type": "Polygon", "coordinates": [square(0, 0, 8)]}, name="Benign")]),
    )
    assert isinstance(open_labels(noext, "bach", slide), PolygonLabels)
    mask = write_mask(tmp_path / "m.tiff", np.ones((64, 64), np.uint8), 0.5)
    source = open_labels(mask, "bach", slide)
    assert isinstance(source, MaskLabels) and (source.read((0, 0), (8, 8)) == 0).all()


def test_aperio_negative_region_and_ellipse(tmp_path):
    path = write(
        tmp_path,
        "neg.xml",
        aperio(
            [
                ('Text="Benign"', None, square(0, 0, 40), "layer"),
            ]
        ).replace(
            "</Regions>",
            '<Region Id="2" Type="0" NegativeROA="1"><Vertices>'
            + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in square(10, 10, 20))
            + '</Vertices></Region><Region Id="3" Type="2" Text="Invasive"><Vertices>'
            '<Vertex X="100" Y="0"/><Vertex X="140" Y="20"/></Vertices></Region></Regions>',
        ),
    )
    benign, ellipse = read_annotations(path)
    assert benign.polygon.area == pytest.approx(1600 - 400)  # the negative region is cut out
    assert ellipse.label == "Invasive"
    assert ellipse.polygon.area == pytest.approx(np.pi * 20 * 10, rel=0.01)
