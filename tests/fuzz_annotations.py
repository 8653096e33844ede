"""Seeded fuzz corpus of annotation files: valid Aperio XML, ASAP XML, GeoJSON and label masks,
mutated the ways real exports go wrong.

    python tests/fuzz_annotations.py [OUT]      # writes the cases, prints name and expectation

Every case is ``Case(name, kind, expect, write, fast)``: ``write(path)`` makes the file;
``expect`` is "same" (the labels must equal the intact file's: the mutation changes nothing
a reader should use), "warn-same" (same labels, a warning), "error" (only a one-line input
error naming the file is right) or "any" (that error, or labels in the class map). Cases
with ``fast`` run in `make test`.
All files label the 512² slide of tests/make_bad_corpus.py (0.5 um/px, class map bach).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE, MPP = 512, 0.5
#: The intact annotation: an invasive square, a benign square with a hole, an in-situ triangle.
SHAPES = [
    ("Invasive carcinoma", [(100, 100), (300, 100), (300, 300), (100, 300)], []),
    ("Benign", [(320, 40), (480, 40), (480, 200), (320, 200)], [(360, 80), (440, 80), (440, 160),
                                                                 (360, 160)]),
    ("In situ", [(60, 400), (240, 480), (60, 480)], []),
]  # fmt: skip
HUGE = 1_000_000  # vertices of the biggest polygon


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # aperio | asap | geojson | mask
    expect: str  # same | warn-same | any
    write: Callable[[Path], None]
    fast: bool = False


# ------------------------------------------------------------------ intact documents
def aperio(shapes=SHAPES, region_attrs: str = "", extra: str = "", ids=None) -> str:
    regions = []
    for k, (label, shell, hole) in enumerate(shapes):
        rid = ids[k] if ids else k + 1
        regions.append(_aperio_region(rid, label, shell, region_attrs))
        if hole:
            regions.append(_aperio_region(f"{rid}h", label, hole, 'NegativeROA="1"'))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<Annotations MicronsPerPixel="0.5">'
        f'<Annotation Id="1">{extra}<Regions>{"".join(regions)}</Regions></Annotation>'
        "</Annotations>\n"
    )


def _aperio_region(rid, label, points, attrs="") -> str:
    v = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in points)
    return f'<Region Id="{rid}" Text="{label}" {attrs}><Vertices>{v}</Vertices></Region>'


def asap(shapes=SHAPES, attrs: str = "") -> str:
    items = []
    for k, (label, shell, hole) in enumerate(shapes):
        if hole:  # ASAP has no holes: the benign square becomes a frame of four bars
            continue
        coords = "".join(
            f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(shell)
        )
        items.append(
            f'<Annotation Name="A{k}" Type="Polygon" PartOfGroup="{label}" {attrs}>'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>'
        + "".join(items)
        + "</Annotations><AnnotationGroups/></ASAP_Annotations>\n"
    )


def geojson_data(shapes=SHAPES) -> dict:
    features = []
    for label, shell, hole in shapes:
        rings = [[*map(list, shell), *([list(shell[0])] if shell else [])]]
        if hole:
            rings.append([*map(list, hole), list(hole[0])])
        features.append(
            {
                "type": "Feature",
                "id": label.lower().replace(" ", "-"),
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {"objectType": "annotation", "classification": {"name": label}},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def labels() -> np.ndarray:
    """BACH mask values (1 normal .. 4 invasive) in four quadrants."""
    half = SIZE // 2
    out = np.ones((SIZE, SIZE), np.uint8)
    out[:half, half:], out[half:, :half], out[half:, half:] = 2, 3, 4
    return out


def text_writer(text: str | bytes, encoding: str = "utf-8") -> Callable[[Path], None]:
    data = text if isinstance(text, bytes) else text.encode(encoding, errors="replace")
    return lambda path: path.write_bytes(data)


# ------------------------------------------------------------------ mutations
def _polygon_text_cases(kind: str, text: str, rng: random.Random) -> list[Case]:
    """Byte-level mutations of an intact document (any format)."""
    cases = []
    data = text.encode()
    for k, frac in enumerate(sorted(rng.uniform(0.01, 0.99) for _ in range(12))):
        cut = data[: int(len(data) * frac)]
        cases.append(Case(f"{kind}-truncated-{k:02d}", kind, "any", text_writer(cut), k < 3))
    cases += [
        Case(f"{kind}-bom-utf8", kind, "same", text_writer(b"\xef\xbb\xbf" + data), True),
        Case(f"{kind}-utf16-le-bom", kind, "any", text_writer(text, "utf-16")),
        Case(f"{kind}-utf16-be", kind, "any", text_writer(text, "utf-16-be")),
        Case(f"{kind}-utf32", kind, "any", text_writer(text, "utf-32")),
        Case(f"{kind}-latin1-label", kind, "any",
             text_writer(text.replace("Benign", "Bénin"), "latin-1"), True),
        Case(f"{kind}-crlf", kind, "same", text_writer(data.replace(b">", b">\r\n"))),
        Case(f"{kind}-leading-space", kind, "same", text_writer(b"\n \t" + data)),
        Case(f"{kind}-nul-bytes", kind, "any", text_writer(data.replace(b"0", b"\0", 3))),
        Case(f"{kind}-empty", kind, "error", text_writer(b""), True),
        Case(f"{kind}-whitespace", kind, "error", text_writer(b"   \n")),
    ]  # fmt: skip
    for k in range(16):  # random byte flips
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        cases.append(Case(f"{kind}-flip-{k:02d}", kind, "any", text_writer(bytes(buf)), k < 2))
    return cases


def _value_shapes(value) -> list:
    label, shell, hole = SHAPES[0]
    return [(label, [(value, shell[0][1]), *shell[1:]], hole), *SHAPES[1:]]


BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e400", "-5000", "1e12",
               "abc", "", "0x10", "1,5", "  7 "]  # fmt: skip


def _shape_variants() -> list[tuple[str, str, list, bool]]:
    """(name, expect, shapes, fast): geometric mutations that every polygon format can carry."""
    label = "Invasive"
    bowtie = [(20, 20), (90, 90), (90, 20), (20, 90)]
    ring_inside = [(150, 150), (250, 150), (250, 250), (150, 250)]
    out = [
        ("empty-region", "warn-same", [*SHAPES, (label, [], [])], True),
        ("one-vertex", "warn-same", [*SHAPES, (label, [(5, 5)], [])], True),
        ("two-vertices", "warn-same", [*SHAPES, (label, [(5, 5), (50, 50)], [])], False),
        ("collinear", "warn-same", [*SHAPES, (label, [(5, 5), (50, 50), (90, 90)], [])], False),
        ("repeated-vertex", "warn-same", [*SHAPES, (label, [(5, 5)] * 5, [])], False),
        ("closed-ring", "same", [(s[0], [*s[1], s[1][0]], s[2]) for s in SHAPES], False),
        ("self-intersection", "any", [*SHAPES, (label, bowtie, [])], True),
        (
            "figure-eight",
            "any",
            [*SHAPES, (label, [(10, 10), (60, 60), (10, 60), (60, 10), (10, 10), (30, 5)], [])],
            False,
        ),  # fmt: skip
        ("nested-same-class", "same", [*SHAPES, (SHAPES[0][0], ring_inside, [])], True),
        ("nested-other-class", "any", [*SHAPES, ("Benign", ring_inside, [])], False),
        ("duplicate-region", "same", [*SHAPES, SHAPES[0]], False),
        (
            "negative-partly",
            "any",
            [*SHAPES, (label, [(-50, -50), (30, -50), (30, 30), (-50, 30)], [])],
            False,
        ),  # fmt: skip
        (
            "past-the-edge",
            "any",
            [*SHAPES, (label, [(400, 400), (900, 400), (900, 900), (400, 900)], [])],
            False,
        ),  # fmt: skip
        ("all-outside", "error", [(label, [(5000, 5000), (5100, 5000), (5100, 5100)], [])], True),
        ("all-negative", "error", [(label, [(-500, -500), (-400, -500), (-400, -400)], [])], False),
        ("huge-coordinates", "any", [*SHAPES, (label, [(0, 0), (1e15, 0), (0, 1e15)], [])], True),
        ("tiny-area", "any", [*SHAPES, (label, [(5, 5), (5.001, 5), (5, 5.001)], [])], False),
        ("label-spacing", "same", [(f"  {s[0].upper()} ", s[1], s[2]) for s in SHAPES], False),
        ("unknown-label", "error", [*SHAPES, ("Stroma?", SHAPES[2][1], [])], True),
        ("no-label", "any", [*SHAPES, ("", SHAPES[2][1], [])], False),
        (
            "hole-outside-shell",
            "any",
            [(label, SHAPES[0][1], [(400, 400), (450, 400), (450, 450)])],
            False,
        ),  # fmt: skip
    ]
    for k, v in enumerate(BAD_NUMBERS):
        finite = v.strip() in ("1e308", "-1e308", "-5000", "1e12", "1,5", "7")
        expect = "any" if finite else "error"
        out.append((f"coordinate-{k:02d}-{v.strip() or 'blank'}", expect, _value_shapes(v), k < 4))
    return out


def _circle(n: int, cx=256.0, cy=256.0, r=200.0) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(float(x), float(y)) for x, y in zip(cx + r * np.cos(t), cy + r * np.sin(t),
                                                 strict=True)]  # fmt: skip


def _render(kind: str, shapes) -> str:
    if kind == "aperio":
        return aperio(shapes)
    if kind == "asap":
        return asap(shapes)
    return json.dumps(geojson_data(shapes))


def _lazy(kind: str, shapes) -> Callable[[Path], None]:
    """Render when written (an int shell = a circle of that many vertices)."""

    def write(path: Path) -> None:
        real = [(lb, _circle(sh) if isinstance(sh, int) else sh, h) for lb, sh, h in shapes]
        path.write_text(_render(kind, real))

    return write


def polygon_cases(seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    for kind in ("aperio", "asap", "geojson"):
        base = _render(kind, SHAPES)
        cases.append(Case(f"{kind}-intact", kind, "same", text_writer(base), True))
        cases += _polygon_text_cases(kind, base, rng)
        for name, expect, shapes, fast in _shape_variants():
            if kind == "asap" and name == "hole-outside-shell":
                continue  # ASAP has no holes
            cases.append(Case(f"{kind}-{name}", kind, expect, _lazy(kind, shapes), fast))
        for n, fast in ((20_000, True), (HUGE, False)):
            circle = [("Invasive", n, [])]
            cases.append(Case(f"{kind}-circle-{n}", kind, "any", _lazy(kind, circle), fast))
    cases += _format_specific(rng)
    return cases


def _format_specific(rng: random.Random) -> list[Case]:
    g = geojson_data()
    one = g["features"][0]

    def gj(data, name, expect="any", fast=False) -> Case:
        return Case(f"geojson-{name}", "geojson", expect, text_writer(json.dumps(data)), fast)

    def with_geometry(geometry) -> dict:
        return {"type": "FeatureCollection", "features": [{**one, "geometry": geometry}]}

    def ring(*pts):
        return [list(p) for p in pts]

    sq = ring((100, 100), (300, 100), (300, 300), (100, 300), (100, 100))
    cases = [
        gj(g["features"], "bare-list", "same"),
        gj(one, "single-feature"),
        gj({**g, "features": [*g["features"], {**one, "id": one["id"]}]}, "duplicate-ids", "same",
           True),
        gj({**g, "crs": {"type": "name"}, "bbox": [0, 0, 1, 1], "x-extra": {"deep": [1, 2]}},
           "unknown-members", "same", True),
        gj({**g, "features": [{**f, "properties": {**f["properties"], "measurements": {"a": 1},
                                                   "color": "red", "isLocked": True}}
                              for f in g["features"]]}, "unknown-properties", "same"),
        gj(with_geometry(None), "null-geometry", "any", True),
        gj(with_geometry({"type": "Polygon"}), "no-coordinates"),
        gj(with_geometry({"type": "Polygon", "coordinates": None}), "null-coordinates"),
        gj(with_geometry({"type": "Polygon", "coordinates": [100, 200]}), "flat-coordinates",
           "any", True),
        gj(with_geometry({"type": "Polygon", "coordinates": [[100, 200], [3, 4]]}), "rings-depth"),
        gj(with_geometry({"type": "Polygon", "coordinates": [[[1]]]}), "one-number-point"),
        gj(with_geometry({"type": "Polygon", "coordinates": [[["a", "b"], [1, 2], [3, 4]]]}),
           "string-coordinates"),
        gj(with_geometry({"type": "Polygon", "coordinates": [[[1, 2, 3, 4, 5]] * 4]}),
           "long-positions"),
        gj(with_geometry({"type": "Polygon", "coordinates": "[[1,2]]"}), "coordinates-string"),
        gj(with_geometry({"type": "Polygon", "coordinates": {"a": 1}}), "coordinates-object"),
        gj(with_geometry({"type": "MultiPolygon", "coordinates": [[sq], [sq]]}), "multi", "any"),
        gj(with_geometry({"type": "MultiPolygon", "coordinates": [sq]}), "multi-too-shallow"),
        gj(with_geometry({"type": "LineString", "coordinates": sq}), "linestring", "any", True),
        gj(with_geometry({"type": "GeometryCollection", "geometries": [
            {"type": "Polygon", "coordinates": [sq]}, None]}), "collection-with-null"),
        gj(with_geometry({"type": "GeometryCollection", "geometries": "x"}), "collection-str"),
        gj(with_geometry({"type": 7, "coordinates": [sq]}), "type-number"),
        gj(with_geometry("Polygon"), "geometry-string"),
        gj({**g, "features": [{**f, "properties": None} for f in g["features"]]}, "no-properties"),
        gj({**g, "features": [{**f, "properties": {"classification": {"names": ["Invasive",
            "carcinoma"]}}} for f in g["features"][:1]]}, "classification-names"),
        gj({**g, "features": [{**f, "properties": {"classification": 42}}
                              for f in g["features"]]}, "classification-number"),
        gj({**g, "features": [{**f, "properties": {"classification": {"name": None,
            "names": "Benign"}}} for f in g["features"]]}, "classification-names-str"),
        gj({**g, "features": None}, "null-features"),
        gj({**g, "features": {"a": one}}, "features-object"),
        gj({"type": "Topology"}, "topology", "any", True),
        gj(None, "null"),
        gj(42, "number"),
        gj([1, 2, 3], "list-of-numbers", "any", True),
        Case("geojson-deep-nesting", "geojson", "any", text_writer("[" * 100_000 + "]" * 100_000),
             True),
        Case("geojson-nan-literal", "geojson", "any",
             text_writer(json.dumps(g).replace("100", "NaN", 1)), True),
        Case("geojson-infinity-literal", "geojson", "any",
             text_writer(json.dumps(g).replace("300", "-Infinity", 1))),
        Case("geojson-huge-integer", "geojson", "any",
             text_writer(json.dumps(g).replace("100", "9" * 5000, 1))),
    ]  # fmt: skip
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
        + "".join(
            f'<!ENTITY a{i} "{("&a" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
            for i in range(1, 9)
        )  # fmt: skip
        + ']><Annotations><Annotation><Regions><Region Text="&a8;"/></Regions></Annotation>'
        "</Annotations>"
    )
    base = aperio()
    cases += [
        Case("aperio-entity-expansion", "aperio", "any", text_writer(laughs), True),
        Case("aperio-external-entity", "aperio", "any", text_writer(
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            '<Annotations><Annotation><Regions><Region Text="&e;"/></Regions></Annotation>'
            "</Annotations>")),
        Case("aperio-duplicate-ids", "aperio", "same", text_writer(
            aperio(ids=[1, 1, 1])), True),
        Case("aperio-unknown-attributes", "aperio", "same", text_writer(aperio(
            region_attrs='Zoom="0.5" Selected="1" x-vendor="q" ImageLocation=""',
            extra='<Attributes><Attribute Name="x" Value=""/></Attributes><Plots/>')), True),
        Case("aperio-ellipse", "aperio", "any", text_writer(base.replace(
            '<Region Id="1" ', '<Region Id="1" Type="2" ').replace(
            '<Vertex X="300" Y="100" Z="0"/><Vertex X="300" Y="300" Z="0"/>', ""))),
        Case("aperio-no-regions", "aperio", "any", text_writer(
            '<Annotations><Annotation Id="1"><Regions/></Annotation></Annotations>'), True),
        Case("aperio-vertex-without-xy", "aperio", "any",
             text_writer(base.replace('X="100" Y="100"', ""))),
        Case("aperio-negative-only", "aperio", "any", text_writer(base.replace(
            'Text="In situ" ', 'Text="In situ" NegativeROA="1"'))),
        Case("aperio-negative-bowtie", "aperio", "any", text_writer(aperio(
            [*SHAPES, ("Invasive", [(150, 150), (250, 250), (250, 150), (150, 250)], [])]
        ).replace('Id="4" Text="Invasive" ', 'Id="4" Text="Invasive" NegativeROA="1"'))),
        Case("aperio-negative-two-vertices", "aperio", "any", text_writer(base.replace(
            '<Vertex X="360" Y="160" Z="0"/>', "").replace(
            '<Vertex X="440" Y="160" Z="0"/>', ""))),
        Case("aperio-other-root", "aperio", "any", text_writer("<Foo><Bar/></Foo>")),
        Case("asap-order-missing", "asap", "any", text_writer(asap().replace('Order="0" ', ""))),
        Case("asap-order-text", "asap", "any", text_writer(asap().replace('Order="1"',
                                                                          'Order="one"'))),
        Case("asap-dot", "asap", "any", text_writer(asap().replace('Type="Polygon"', 'Type="Dot"',
                                                                   1)), True),
        Case("asap-unknown-attributes", "asap", "same",
             text_writer(asap(attrs='Color="#F4FA58" x-foo="1"')), True),
        Case("asap-decimal-comma", "asap", "same",
             text_writer(asap().replace('X="100"', 'X="100,0"'))),
    ]  # fmt: skip
    return cases


SUFFIX = {"aperio": ".xml", "asap": ".xml", "geojson": ".geojson", "mask": ".tiff"}


def all_cases(seed: int = 0) -> list[Case]:
    from fuzz_masks import mask_cases  # the masks import this module's Case

    cases = polygon_cases(seed) + mask_cases(seed)
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def write_case(case: Case, folder: Path) -> Path:
    path = Path(folder) / f"{case.name}{SUFFIX[case.kind]}"
    case.write(path)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    for case in all_cases():
        print(f"{write_case(case, out)}  {case.expect}{'  (fast)' * case.fast}")
