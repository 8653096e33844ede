"""Class maps: the data that turns annotation text and mask values into label indices.

Kept as YAML (``classmaps.yaml``) so a new data set is a new map, not new code; a user map is
any YAML file with the same fields.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from datamodules.errors import InputError

IGNORE = 255
"""Label value that losses and metrics skip."""
UNMAPPED = 254
"""LUT sentinel for mask values the map does not list; never a valid class index."""
SKIP = -1
"""``ClassMap.index`` result for labels the map knows but does not paint (e.g. TIGER ``roi``)."""

BUILTIN_YAML = Path(__file__).with_name("classmaps.yaml")


def normalize_label(text: str) -> str:
    """Case-, whitespace- and ``_``/``-``-insensitive form, so spelling variants meet."""
    return re.sub(r"[\s_\-]+", " ", str(text)).strip().lower()


@dataclass(frozen=True)
class ClassMap:
    """One labelling scheme. ``aliases`` maps normalized text to a class, IGNORE or SKIP."""

    name: str
    classes: tuple[str, ...]
    aliases: dict[str, int]
    unannotated: int
    mask_values: dict[int, int]
    ordinal: bool = False
    colors: tuple[tuple[int, int, int], ...] = ()
    precedence: tuple[int, ...] | str = ()
    source: str | None = field(default=None, compare=False)
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Named sets of classes scored as one (e.g. BACH carcinoma = in situ + invasive)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, label_text: str, source_path: str | Path | None = None) -> int:
        """Class index for annotation text (IGNORE or SKIP for such aliases)."""
        key = normalize_label(label_text)
        if key in self.aliases:
            return self.aliases[key]
        shown = repr(label_text) if key else "an unlabelled region"
        raise InputError(
            source_path,
            f"label {shown} is not in class map {self.name!r}; known labels: "
            + ", ".join(sorted(self.known_labels())),
        )

    def known_labels(self) -> list[str]:
        return sorted(self.aliases)

    def lut(self) -> np.ndarray:
        """256-entry mask-value table; values the map does not list become ``UNMAPPED``."""
        table = np.full(256, UNMAPPED, dtype=np.uint8)
        for value, cls in self.mask_values.items():
            table[value] = cls
        return table

    def rank(self, precedence=None) -> dict[int, int]:
        """Painting order per class (higher paints later, so wins); IGNORE last unless listed.

        ``precedence`` overrides the map's: a list of class names or indices.
        """
        if precedence is None or isinstance(precedence, str):
            precedence = self.precedence
        if isinstance(precedence, str):
            order = list(range(self.num_classes))
        else:
            where = f"precedence for class map {self.name!r}"
            order = [_class_ref(p, list(self.classes), where, ("ignore",)) for p in precedence]
        ranks = {cls: i for i, cls in enumerate(order)}
        for cls in range(self.num_classes):  # unlisted classes paint first, in class order
            ranks.setdefault(cls, -self.num_classes + cls)
        ranks.setdefault(IGNORE, len(order))
        return ranks

    def color_table(self) -> np.ndarray:
        """(256, 3) uint8 RGB table for overlays; IGNORE and unknown values are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        for i, rgb in enumerate(self.colors):
            table[i] = rgb
        return table


def _class_ref(value, classes: list[str], where: str, allow: tuple[str, ...]) -> int:
    """Resolve a class name / index / keyword from YAML into an index."""
    if isinstance(value, bool):
        raise InputError(where, f"{value!r} is not a class")
    if isinstance(value, int):
        if 0 <= value < len(classes):
            return value
        raise InputError(where, f"class index {value} out of range 0..{len(classes) - 1}")
    text = normalize_label(str(value))
    if text == "ignore" and "ignore" in allow:
        return IGNORE
    if text == "skip" and "skip" in allow:
        return SKIP
    names = [normalize_label(c) for c in classes]
    if text in names:
        return names.index(text)
    raise InputError(where, f"{value!r} is not one of {classes} or {list(allow)}")


#: The fields of a class map; anything else is a typo that would otherwise be dropped silently.
FIELDS = ("name", "classes", "aliases", "unannotated", "mask_values", "ordinal", "colors",
          "precedence", "groups")  # fmt: skip


def _parse(name: str, spec: dict, source: str) -> ClassMap:
    if not isinstance(spec, dict) or "classes" not in spec:
        raise InputError(source, f"class map {name!r} needs a 'classes' list")
    for key in spec:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(
                source, f"class map {name!r}: unknown key {key!r} ({hint}keys: {', '.join(FIELDS)})"
            )
    classes = [str(c) for c in spec["classes"]]
    if not classes or len(classes) >= UNMAPPED:
        raise InputError(source, f"class map {name!r}: need 1..{UNMAPPED - 1} classes")
    where = f"{source} [{name}]"
    aliases = {normalize_label(c): i for i, c in enumerate(classes)}
    for text, target in (spec.get("aliases") or {}).items():
        aliases[normalize_label(str(text))] = _class_ref(target, classes, where, ("ignore", "skip"))
    unannotated = _class_ref(spec.get("unannotated", "ignore"), classes, where, ("ignore",))
    mask_values = {}
    for value, target in (spec.get("mask_values") or {}).items():
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise InputError(where, f"mask value {value!r} must be an integer 0..255")
        mask_values[value] = _class_ref(target, classes, where, ("ignore",))
    colors = tuple(tuple(int(v) for v in c) for c in spec.get("colors") or ())
    if colors and (len(colors) != len(classes) or any(len(c) != 3 for c in colors)):
        raise InputError(where, "colors needs one [r, g, b] per class")
    precedence = spec.get("precedence")
    if precedence is None:
        precedence = tuple(range(len(classes)))
    elif isinstance(precedence, str):
        if precedence != "file":
            raise InputError(where, "precedence must be a list of classes or 'file'")
    else:
        precedence = tuple(_class_ref(p, classes, where, ("ignore",)) for p in precedence)
        missing = set(range(len(classes))) - set(precedence)
        if missing:
            raise InputError(where, f"precedence misses {[classes[i] for i in sorted(missing)]}")
    groups = {}
    for group, members in (spec.get("groups") or {}).items():
        if not isinstance(members, list) or not members:
            raise InputError(where, f"group {group!r} needs a non-empty list of classes")
        groups[str(group)] = tuple(_class_ref(m, classes, where, ()) for m in members)
    return ClassMap(
        name=str(spec.get("name", name)),
        classes=tuple(classes),
        aliases=aliases,
        unannotated=unannotated,
        mask_values=mask_values,
        ordinal=bool(spec.get("ordinal", False)),
        colors=colors,
        precedence=precedence,
        source=source,
        groups=groups,
    )


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(path, f"cannot read class map: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(path, "a class map file must be a YAML mapping")
    return data


@cache
def builtin_class_maps() -> dict[str, ClassMap]:
    data = _read_yaml(BUILTIN_YAML)
    return {name: _parse(name, spec, str(BUILTIN_YAML)) for name, spec in data.items()}


def load_class_map(name_or_path: str | Path | ClassMap) -> ClassMap:
    """A built-in map by name (``bach``, ``tiger``, ``tiger_stroma``, ``dmmn``) or a YAML path.

    A user file holds one map (top-level ``classes``) or several; ``file.yaml:name`` picks one.
    """
    if isinstance(name_or_path, ClassMap):
        return name_or_path
    text = str(name_or_path)
    builtins = builtin_class_maps()
    if text in builtins:
        return builtins[text]
    path, _, pick = text.partition(".yaml:") if ".yaml:" in text else (text, "", "")
    path = Path(path + ".yaml" if pick else path)
    if path.suffix.lower() not in (".yaml", ".yml") and not path.exists():
        raise InputError(
            None, f"unknown class map {text!r}; built-in: {', '.join(builtins)}, or a YAML path"
        )
    data = _read_yaml(path)
    if "classes" in data:
        return _parse(path.stem, data, str(path))
    if pick or len(data) == 1:
        pick = pick or next(iter(data))
        if pick not in data:
            raise InputError(path, f"no class map {pick!r}; maps here: {', '.join(data)}")
        return _parse(pick, data[pick], str(path))
    raise InputError(path, f"several class maps ({', '.join(data)}); choose one as {path}:NAME")
