"""`wsiseg info SLIDE`: what a slide file holds, and what its annotations cover."""

from __future__ import annotations

import argparse

from datamodules.slides.slide import Slide


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsiseg info",
        description="Print a slide's dimensions, pyramid levels, resolution, vendor and associated "
        "images; with --annotations, the number and area of regions per class.",
    )
    p.add_argument("slide", help="slide file (SVS, pyramidal or flat TIFF, PNG/JPEG)")
    p.add_argument("--mpp", type=float, help="level-0 micrometres per pixel (overrides metadata)")
    p.add_argument("--annotations", help="Aperio/ASAP XML, QuPath GeoJSON or label-mask image")
    p.add_argument(
        "--classes",
        "--label-map",
        dest="classes",
        default="bach",
        help="class map name (bach, tiger, tiger_stroma, dmmn) or a YAML file (default: bach)",
    )
    return p


def describe(slide: Slide) -> list[str]:
    w, h = slide.dimensions
    lines = [
        f"file        {slide.path}",
        f"vendor      {slide.vendor}",
        f"dimensions  {w}x{h} (level 0)",
        f"mpp         {slide.mpp:.4g} um/px"
        + ("" if slide.metadata_mpp == slide.mpp else " (given with --mpp)"),
        f"objective   {slide.objective_power:g}x"
        if slide.objective_power
        else "objective   unknown",
        f"levels      {slide.level_count}",
    ]
    for i, ((lw, lh), ds) in enumerate(
        zip(slide.level_dimensions, slide.level_downsamples, strict=True)
    ):
        lines.append(f"  level {i}   {lw}x{lh}  downsample {ds:.4g}  mpp {slide.mpp * ds:.4g}")
    assoc = ", ".join(slide.associated_images) or "none"
    lines.append(f"associated  {assoc}")
    return lines


def describe_annotations(path: str, slide: Slide, classes: str) -> list[str]:
    from datamodules.labels.classmaps import load_class_map
    from datamodules.labels.sources import PolygonLabels, read_annotations, region_stats

    class_map = load_class_map(classes)
    regions = read_annotations(path)
    # as training would take them: every label known, not all of them off this slide
    PolygonLabels(regions, class_map, slide.mpp, slide.dimensions, source=path)
    stats = region_stats(regions, class_map, slide.mpp, source=path)
    lines = [f"annotations {path} ({len(regions)} regions, class map {class_map.name})"]
    lines.append(f"  {'class':<28} {'regions':>8} {'area mm2':>10}")
    for name, row in stats.items():
        lines.append(f"  {name:<28} {row['count']:>8} {row['area_mm2']:>10.4f}")
    return lines


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    slide = Slide(args.slide, mpp=args.mpp)
    lines = describe(slide)
    if args.annotations:
        lines += describe_annotations(args.annotations, slide, args.classes)
    print("\n".join(lines))
    return 0
