"""`wsiseg evaluate --pred MASK.tiff --truth ANNOTATION --classes bach`: whole-slide scores.

The same scores as training's test metrics (`lightning_modules.metrics.scores`), computed from
one confusion matrix streamed over the whole slide (`lightning_modules.outputs.evaluation`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from datamodules.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsiseg evaluate",
        description="Score a predicted label mask (from `wsiseg segment`: values class + 1, "
        "0 = not segmented) against the slide's annotation (Aperio/ASAP XML, GeoJSON or a "
        "label-mask image) over the whole slide, window by window: per-class IoU, recall, "
        "precision, mIoU, weighted IoU, pixel accuracy and, for ordinal class maps (BACH), the "
        "BACH score. Unlabeled truth pixels are excluded. Prints a table, writes JSON.",
    )
    p.add_argument("--pred", required=True, help="predicted mask TIFF (NAME_mask.tiff)")
    p.add_argument("--truth", required=True, help="annotation: XML, GeoJSON or label mask")
    p.add_argument(
        "--classes",
        "--label-map",
        dest="classes",
        default="bach",
        help="class map name (bach, tiger, tiger_stroma, dmmn) or YAML file (default: bach)",
    )
    p.add_argument("--mpp", type=float, help="level-0 um/px of the prediction if its file lacks it")
    p.add_argument(
        "--eval-mpp",
        type=float,
        help="resolution of the comparison in um/px (default: the prediction's level 0)",
    )
    p.add_argument(
        "--unsegmented",
        help="class that pixels the model did not segment (no tissue) count as; default: the "
        "class map's class for unannotated pixels if it has one (bach: normal), else they are "
        "left out and reported",
    )
    p.add_argument("--window", type=int, default=2048, help="window side in pixels (memory)")
    p.add_argument("--json", help="JSON output (default: next to --pred, NAME_eval.json)")
    return p


def _unsegmented_class(text: str | None, class_map) -> int | None:
    from datamodules.labels.classmaps import IGNORE, normalize_label

    if text is None:
        return None if class_map.unannotated == IGNORE else int(class_map.unannotated)
    names = [normalize_label(c) for c in class_map.classes]
    key = normalize_label(text)
    if key in names:
        return names.index(key)
    if key.isdigit() and int(key) < len(names):
        return int(key)
    raise InputError(None, f"--unsegmented {text!r} is not a class of {class_map.name!r}")


def _finite(value):
    return value if not (isinstance(value, float) and math.isnan(value)) else None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.window < 16:
        raise InputError(None, f"--window must be >= 16, got {args.window}")
    from datamodules.labels.classmaps import load_class_map
    from lightning_modules.outputs.evaluation import evaluate_slide

    class_map = load_class_map(args.classes)
    unseg = _unsegmented_class(args.unsegmented, class_map)
    result = evaluate_slide(
        args.pred, args.truth, class_map, args.mpp, args.eval_mpp, args.window, unseg
    )
    from lightning_modules.metrics import format_table, scores  # torch: only once inputs are good

    names = list(class_map.classes)
    if result.labelled == 0:
        raise InputError(args.truth, "no labelled pixel on the prediction's extent")
    groups = dict(getattr(class_map, "groups", None) or {})
    values = scores(result.cm, names, bool(class_map.ordinal), groups)
    pred = Path(args.pred)
    out = (
        Path(args.json)
        if args.json
        else pred.with_name(pred.stem.removesuffix("_mask") + "_eval.json")
    )
    report = {
        "prediction": str(pred),
        "truth": str(args.truth),
        "class_map": class_map.name,
        "classes": names,
        "eval_mpp": result.mpp,
        "labelled_pixels": result.labelled,
        "unsegmented_labelled_pixels": result.unsegmented,
        "unsegmented_as": None if unseg is None else names[unseg],
        "scores": {k: _finite(v) for k, v in values.items()},
        "confusion": result.cm.tolist(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    share = result.unsegmented / result.labelled
    note = f"{result.unsegmented} labelled pixels ({share:.1%}) were not segmented (no tissue)" + (
        f" and count as {names[unseg]}" if unseg is not None else " and are left out"
    )
    print(f"{pred.name} vs {Path(args.truth).name} at {result.mpp:.4g} um/px ({class_map.name})")
    print(format_table(values, names))
    print(note)
    print(f"wrote {out}")
    return 0
