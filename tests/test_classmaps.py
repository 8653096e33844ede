"""Class maps: built-in maps and aliases, user YAML maps, unknown labels."""

from __future__ import annotations

import pytest

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE, UNMAPPED, load_class_map

BACH = load_class_map("bach")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_maps_and_aliases():
    assert BACH.num_classes == 4 and BACH.ordinal and BACH.unannotated == 0
    for text, cls in [
        ("Normal", 0),
        ("Benign", 1),
        ("Carcinoma in situ", 2),
        ("In situ carcinoma", 2),
        ("In situ", 2),
        ("Invasive carcinoma", 3),
        ("Carcinoma invasive", 3),
        ("  INVASIVE_carcinoma ", 3),
        ("in-situ", 2),
    ]:
        assert BACH.index(text) == cls, text
    tiger = load_class_map("tiger")
    assert tiger.num_classes == 7 and tiger.unannotated == IGNORE and not tiger.ordinal
    assert tiger.index("tumor-associated stroma") == 1 and tiger.index("Rest") == 6
    assert list(tiger.lut()[:9]) == [IGNORE, 0, 1, 2, 3, 4, 5, 6, UNMAPPED]
    dmmn = load_class_map("dmmn")
    assert dmmn.classes[0] == "carcinoma" and dmmn.lut()[6] == 5 and dmmn.lut()[0] == IGNORE
    assert list(BACH.lut()[:6]) == [IGNORE, 0, 1, 2, 3, UNMAPPED]
    assert all(len(m.colors) == m.num_classes for m in map(load_class_map, ["bach", "dmmn"]))


def test_tiger_stroma_mapping():
    stroma = load_class_map("tiger_stroma")
    lut = stroma.lut()
    assert [int(lut[v]) for v in range(8)] == [IGNORE, 0, 1, 0, 0, 0, 1, 0]
    assert stroma.index("Inflamed stroma") == 1 and stroma.index("invasive tumor") == 0


def test_unknown_label_lists_known(tmp_path):
    with pytest.raises(InputError, match=r"'Tumour'.*known labels: .*in situ carcinoma"):
        BACH.index("Tumour", tmp_path / "a.xml")


def test_user_yaml_map(tmp_path):
    path = write(
        tmp_path,
        "mine.yaml",
        "classes: [bg, lesion]\nunannotated: bg\n"
        "aliases: {Tumor Region: lesion, outline: skip}\n"
        "mask_values: {0: bg, 9: lesion}\n",
    )
    cmap = load_class_map(path)
    assert cmap.name == "mine" and cmap.index("tumor_region") == 1 and cmap.lut()[9] == 1
    assert cmap.rank()[1] > cmap.rank()[0]
    with pytest.raises(InputError, match="unknown class map"):
        load_class_map("no_such_map")
    bad = write(tmp_path, "bad.yaml", "classes: [a]\nunannotated: b\n")
    with pytest.raises(InputError, match="'b' is not one of"):
        load_class_map(bad)
