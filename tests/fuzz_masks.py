"""Label-mask cases of the fuzz corpus (tests/fuzz_annotations.py): wrong dtype, shape and
pyramid, bad values, truncated and bit-flipped TIFFs, next to intact masks in other layouts."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from fuzz_annotations import MPP, Case, labels

from datamodules.synthetic.files import write_pyramid


def _tiff(array, **kw) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        px_per_cm = 1e4 / MPP
        tifffile.imwrite(path, array, resolution=(px_per_cm, px_per_cm),
                         resolutionunit="CENTIMETER", metadata=None, **kw)  # fmt: skip

    return write


def _pyramid(array, desc="fuzz") -> Callable[[Path], None]:
    return lambda path: write_pyramid(path, array, MPP, desc)


def _odd_pyramid(path: Path) -> None:
    """A pyramid whose second level is not a downsample of the first (another slide's)."""
    base = labels()
    with tifffile.TiffWriter(path) as tw:
        kw = {"tile": (256, 256), "compression": "zlib", "photometric": "minisblack",
              "metadata": None}  # fmt: skip
        tw.write(base, subifds=1, **kw)
        tw.write(np.full((300, 100), 4, np.uint8), subfiletype=1, **kw)


def mask_cases(seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    lab = labels()
    noisy = lab.copy()
    noisy[rng.random(lab.shape) < 0.01] = 9
    cases = [
        Case("mask-intact", "mask", "same", _pyramid(lab), True),
        Case("mask-flat-strips", "mask", "same", _tiff(lab), True),
        Case("mask-tiled-no-pyramid", "mask", "same", _tiff(lab, tile=(128, 128))),
        Case("mask-uint16", "mask", "any", _tiff(lab.astype(np.uint16)), True),
        Case("mask-uint16-big-values", "mask", "error", _tiff(lab.astype(np.uint16) + 256), True),
        Case("mask-int8", "mask", "any", _tiff(lab.astype(np.int8))),
        Case("mask-int32", "mask", "error", _tiff(lab.astype(np.int32))),
        Case("mask-float32", "mask", "error", _tiff(lab.astype(np.float32)), True),
        Case("mask-float64-nan", "mask", "error", _tiff(np.where(lab == 4, np.nan, lab))),
        Case("mask-bool", "mask", "any", _tiff(lab > 2)),
        Case("mask-rgb", "mask", "any", _tiff(np.repeat(lab[..., None], 3, 2),
                                              photometric="rgb"), True),  # fmt: skip
        Case("mask-two-channels", "mask", "any",
             _tiff(np.stack([lab, lab], -1), photometric="minisblack", planarconfig="contig")),
        Case("mask-volume", "mask", "error", _tiff(np.stack([lab, lab]))),
        Case("mask-half-size", "mask", "any", _pyramid(lab[::2, ::2]), True),
        Case("mask-third-size", "mask", "any", _pyramid(lab[::3, ::3])),
        Case("mask-transposed", "mask", "error", _pyramid(np.ascontiguousarray(lab[:, :300].T))),
        Case("mask-one-pixel", "mask", "any", _tiff(lab[:1, :1])),
        Case("mask-larger", "mask", "error", _pyramid(np.pad(lab, ((0, 64), (0, 64)),
                                                           constant_values=1))),  # fmt: skip
        Case("mask-values-9", "mask", "error", _pyramid(noisy), True),
        Case("mask-all-zero", "mask", "any", _pyramid(np.zeros_like(lab))),
        Case("mask-all-255", "mask", "any", _pyramid(np.full_like(lab, 255))),
        Case("mask-odd-pyramid", "mask", "any", _odd_pyramid),
        Case("mask-png", "mask", "same", lambda p: _png(p.with_suffix(".png"), lab, p), True),
    ]  # fmt: skip
    for k, frac in enumerate((0.05, 0.3, 0.6, 0.9)):
        cases.append(Case(f"mask-truncated-{k}", "mask", "any",
                          _truncated_tiff(lab, frac), k == 2))  # fmt: skip
    for k in range(6):
        cases.append(Case(f"mask-flip-{k}", "mask", "any", _flipped_tiff(lab, seed + k)))
    return cases


def _png(png: Path, array, path: Path) -> None:
    import cv2

    cv2.imwrite(str(png), array)
    png.rename(path)


def _truncated_tiff(array, frac) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        write_pyramid(path, array, MPP, "fuzz")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * frac)])

    return write


def _flipped_tiff(array, seed) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        write_pyramid(path, array, MPP, "fuzz")
        buf = bytearray(path.read_bytes())
        r = random.Random(seed)
        for _ in range(r.randint(1, 20)):
            buf[r.randrange(len(buf))] = r.randrange(256)
        path.write_bytes(bytes(buf))

    return write
