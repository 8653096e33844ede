"""Every paper setting of every method's experiments, pinned against its doc's settings table.

Each method doc (docs/dmmn.md, docs/da_refinenet.md, docs/razn.md, docs/smp_tiger.md) holds one
machine-readable table after the marker ``<!-- paper-settings -->``:

    | setting | experiments | value | kind | source / reason |

``setting`` is a YAML path (``model.lr`` = ``model.init_args.lr``, ``data.view.size`` = the
view's ``init_args.size``, ``trainer.max_epochs``), ``experiments`` a comma-separated list of
globs over ``experiments/*.yaml`` names (``dmmn_*``, ``data/dmmn_mask``), ``value`` a YAML
literal and ``kind`` one of ``paper`` / ``release`` (the value is the paper's or its public
release's), ``ours`` (the paper is silent) or ``deviation`` (the paper says otherwise); the last
two need a reason. The test fails when a YAML differs from its row, and when a method's
experiment sets a model argument, or one of the paper-relevant data/trainer settings below,
that its table does not document.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DOCS = ["dmmn", "da_refinenet", "razn", "smp_tiger"]
KINDS = ("paper", "release", "ours", "deviation")
MARKER = "<!-- paper-settings -->"
#: Data and trainer settings a table must document for each of its experiments, when set.
DATA_KEYS = (
    "data.view.size",
    "data.view.magnification",
    "data.view.scales",
    "data.view.context",
    "data.view.factor",
    "data.view.layout",
    "data.view.zoom",
    "data.view.levels",
    "data.batch_size",
    "data.min_annotated",
    "data.min_tissue",
    "data.pad_value",
    "data.balance_rates",
    "data.class_order",
    "data.balance_deform",
    "data.split_fractions",
    "data.color_jitter",
    "trainer.max_epochs",
)
TASK_KEYS = ("model.num_classes", "model.class_map")  # the data's, not the method's
_MISSING = object()


def settings_table(doc: str) -> list[dict]:
    """The rows of the table after the marker in docs/<doc>.md."""
    text = (ROOT / "docs" / f"{doc}.md").read_text()
    assert text.count(MARKER) == 1, f"docs/{doc}.md needs exactly one {MARKER} table"
    lines = text.split(MARKER, 1)[1].strip().splitlines()
    rows = []
    for line in lines[2:]:  # after the header and the |---| line
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"docs/{doc}.md: row needs 5 cells: {line}"
        setting, experiments, value, kind, source = (c.strip("`").strip() for c in cells)
        rows.append(
            {
                "setting": setting,
                "experiments": [e.strip() for e in experiments.split(",")],
                "value": yaml.safe_load(value),
                "kind": kind,
                "source": source,
                "line": line,
            }
        )
    assert rows, f"docs/{doc}.md: empty settings table"
    return rows


def experiment_names() -> list[str]:
    files = sorted(EXPERIMENTS.glob("*.yaml")) + sorted(EXPERIMENTS.glob("data/*.yaml"))
    return [str(p.relative_to(EXPERIMENTS).with_suffix("")) for p in files]


def load(name: str) -> dict:
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text()) or {}


def lookup(config: dict, setting: str):
    """The value at a table path (``model.x`` -> model.init_args.x, ``data.view.x`` -> the
    view's init_args.x), or ``_MISSING``."""
    head, *rest = setting.split(".")
    node = config.get(head, _MISSING)
    if head in ("model", "data") and isinstance(node, dict):
        node = node.get("init_args", _MISSING)
    for i, key in enumerate(rest):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
        if head == "data" and i == 0 and key == "view" and isinstance(node, dict):
            node = node.get("init_args", _MISSING)
    return node


def leaves(config: dict) -> set[str]:
    """Table paths of everything an experiment sets that a table must document."""
    model = (config.get("model") or {}).get("init_args") or {}
    keys = {f"model.{k}" for k in model} - set(TASK_KEYS)
    keys |= {k for k in DATA_KEYS if lookup(config, k) is not _MISSING}
    return keys


def matches(row: dict, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in row["experiments"])


TABLES = {doc: settings_table(doc) for doc in DOCS}
CASES = [
    pytest.param(doc, name, id=f"{doc}:{name}")
    for doc, rows in TABLES.items()
    for name in experiment_names()
    if any(matches(r, name) for r in rows)
]


@pytest.mark.parametrize("doc", DOCS)
def test_table_rows_are_well_formed(doc):
    names = experiment_names()
    for row in TABLES[doc]:
        assert row["kind"] in KINDS, row["line"]
        assert re.fullmatch(r"(model|data|trainer)(\.\w+)+", row["setting"]), row["line"]
        need = 12 if row["kind"] in ("ours", "deviation") else 3  # a reason, or a source
        assert len(row["source"]) >= need, f"say where it comes from or why: {row['line']}"
        assert any(matches(row, n) for n in names), f"no experiment matches: {row['line']}"


@pytest.mark.parametrize(("doc", "name"), CASES)
def test_experiment_matches_its_settings_table(doc, name):
    """Every documented value is the YAML's, and every setting the YAML makes is documented."""
    config = load(name)
    rows = [r for r in TABLES[doc] if matches(r, name)]
    seen: dict[str, str] = {}
    for row in rows:
        setting = row["setting"]
        assert setting not in seen, f"{name}: {setting} documented twice ({seen[setting]})"
        seen[setting] = row["line"]
        got = lookup(config, setting)
        assert got is not _MISSING, f"experiments/{name}.yaml does not set {setting}: {row['line']}"
        assert got == row["value"], (
            f"experiments/{name}.yaml: {setting} = {got!r}, docs/{doc}.md says {row['value']!r} "
            f"({row['kind']}: {row['source']})"
        )
    if "model" in config:  # a full experiment, not a data overlay
        undocumented = sorted(leaves(config) - set(seen))
        assert not undocumented, (
            f"experiments/{name}.yaml: add rows to docs/{doc}.md for {undocumented}"
        )


def test_each_experiment_has_one_table():
    """Paper experiments belong to exactly one method's table."""
    owners: dict[str, list[str]] = {}
    for doc, name in ((c.values[0], c.values[1]) for c in CASES):
        owners.setdefault(name, []).append(doc)
    full = [n for n in experiment_names() if "model" in load(n)]
    assert sorted(n for n in full if n not in owners) == []
    assert {n: d for n, d in owners.items() if len(d) > 1} == {}


def test_a_changed_value_fails():
    """The check bites: a paper value changed in a copy of a YAML no longer matches."""
    config = load("dmmn_m3")
    config["model"]["init_args"]["lr"] = 1e-3
    row = next(r for r in TABLES["dmmn"] if r["setting"] == "model.lr")
    assert lookup(config, "model.lr") != row["value"]
    config["model"]["init_args"]["new_knob"] = 1
    assert "model.new_knob" in leaves(config)
