"""DMMN class balancing: oversample rare classes with elastically deformed copies.

DMMN (Ho et al.) gives every training patch a class — the highest-order class present in its
target, e.g. for BACH ``class_order = [invasive, in_situ, benign, normal]`` — and adds ``r_c``
elastically deformed copies of each patch of class c to the epoch (17×17 control grid,
displacement σ = 4 px, bicubic image, nearest label), so the patch is used ``1 + r_c`` times;
``r_c = 0`` (the paper's rate for stroma and adipose) keeps the patch once, undeformed.  The
deformation is applied to the whole input field (1024² at 20x) before the magnification views are
cut, so that the 20x/10x/5x views of a deformed copy stay consistent; hence the array-in/array-out
API.

The helpers below also count annotated pixels per class before and after balancing, so the
DataModule can report them and the loss can derive its class weights from the balanced counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE

GRID_POINTS = 17  # DMMN: 17×17 control grid
GRID_SIGMA = 4.0  # DMMN: std of the control-point displacement, in pixels

RngLike = np.random.Generator | np.random.RandomState | int


def _elasticdeform():
    """Import elasticdeform lazily with an actionable message when its C extension is broken.

    The 0.5.1 manylinux wheel was compiled against NumPy 1.x and fails to import under NumPy 2
    ("_ARRAY_API not found"); building it from source against the installed NumPy fixes that.
    """
    try:
        import elasticdeform
    except (ImportError, AttributeError) as err:  # pragma: no cover - environment problem
        raise ImportError(
            "elasticdeform cannot be imported (its wheel may be built for another NumPy); "
            "reinstall it from source: pip install --force-reinstall --no-deps "
            f"--no-binary elasticdeform elasticdeform  ({err})"
        ) from err
    return elasticdeform


def item_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one deformed copy, e.g. ``item_rng(seed, epoch, item)``.

    Seeding from (seed, epoch, item) makes every copy reproducible whatever worker draws it and
    gives the ``r_c`` copies of one patch (different items) different deformations.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def control_grid(rng: RngLike, points: int = GRID_POINTS, sigma: float = GRID_SIGMA) -> np.ndarray:
    """One copy's (2, points, points) control displacements ~ N(0, sigma²), in pixels; the
    elasticdeform path and the torch one (`elastic_torch`) draw them here, so a seed means the
    same deformation in both."""
    if not isinstance(rng, np.random.Generator | np.random.RandomState):
        rng = np.random.default_rng(rng)
    return rng.standard_normal((2, points, points)) * float(sigma)


def elastic_deform(
    image: np.ndarray,
    label: np.ndarray,
    rng: RngLike,
    *,
    points: int = GRID_POINTS,
    sigma: float = GRID_SIGMA,
) -> tuple[np.ndarray, np.ndarray]:
    """Deform an RGB field and its label with one random grid; returns new (image, label).

    ``image`` is (H, W, 3) uint8, ``label`` (H, W) uint8 with ``IGNORE`` for unlabeled pixels.
    The displacement (2, points, points) ~ N(0, sigma²) is drawn from ``rng`` (a Generator,
    RandomState or int seed) rather than elasticdeform's ``deform_random_grid``, which reads the
    global ``np.random`` state and so is not reproducible across data-loader workers.
    The image is interpolated in float32 (elasticdeform prefilters into an array of the input
    dtype, which would wrap/truncate the cubic spline coefficients of a uint8 image), then
    rounded and clipped back to uint8.  The label uses order 0, so its values (IGNORE included)
    are a subset of the input's.  Borders are reflected, as no pixels exist outside the field.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if label.shape != image.shape[:2] or label.dtype != np.uint8:
        raise ValueError(
            f"label must be (H, W) uint8 matching image {image.shape[:2]}, "
            f"got {label.shape} {label.dtype}"
        )
    displacement = control_grid(rng, points, sigma)
    out_img, out_lbl = _elasticdeform().deform_grid(
        [image.astype(np.float32), label],
        displacement,
        order=[3, 0],
        mode="reflect",
        axis=[(0, 1), (0, 1)],
    )
    out_img = np.clip(np.rint(out_img), 0, 255).astype(np.uint8)
    return out_img, out_lbl


def _check_class_order(class_order: Sequence[int], ignore: int) -> list[int]:
    order = [int(c) for c in class_order]
    if not order:
        raise InputError(None, "class_order is empty: list the classes, highest order first")
    if len(set(order)) != len(order):
        raise InputError(None, f"class_order {order} lists a class twice")
    if ignore in order:
        raise InputError(None, f"class_order {order} contains the ignore value {ignore}")
    return order


def patch_class(label: np.ndarray, class_order: Sequence[int], ignore: int = IGNORE) -> int | None:
    """The highest-order class (first in ``class_order``) present in ``label``.

    Returns None when no listed class is present (e.g. a fully unlabeled target); such patches
    are used once per epoch by ``balanced_index``.
    """
    order = _check_class_order(class_order, ignore)
    present = set(np.unique(label).tolist())
    return next((c for c in order if c in present), None)


def _rate_of(rates: Mapping[int, int] | Sequence[int], cls: int | None) -> int:
    """Extra deformed copies of a patch of class ``cls`` (0 for unlisted classes and None)."""
    if cls is None:
        return 0
    if isinstance(rates, Mapping):
        return rates.get(cls, 0)
    return rates[cls] if 0 <= cls < len(rates) else 0


def _check_rates(rates: Mapping[int, int] | Sequence[int]) -> None:
    values = rates.values() if isinstance(rates, Mapping) else rates
    for r in values:
        if isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 0:
            raise InputError(
                None,
                f"balancing rates (extra deformed copies per patch) must be integers >= 0, "
                f"got {list(values)}",
            )


def balanced_index(
    patch_classes: Sequence[int | None], rates: Mapping[int, int] | Sequence[int]
) -> list[tuple[int, bool]]:
    """Expand patch indices by their class rate: ``[(patch_idx, deform), ...]``.

    A patch of class c appears ``1 + r_c`` times, first undeformed, then ``r_c`` times with
    ``deform=True``.  ``rates`` is ``{class: r_c}`` or a list indexed by class; classes it does
    not mention, and patches of class None, get r = 0 (used once).  Order is patch-major; the
    DataLoader shuffles.
    """
    _check_rates(rates)
    index: list[tuple[int, bool]] = []
    for i, cls in enumerate(patch_classes):
        r = int(_rate_of(rates, cls))
        index.append((i, False))
        index.extend((i, True) for _ in range(r))
    return index


def patch_pixel_counts(label: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """Annotated pixels per class in one label array, (num_classes,) int64; IGNORE not counted."""
    hist = np.bincount(np.asarray(label).ravel(), minlength=num_classes)
    bad = [int(v) for v in np.flatnonzero(hist[num_classes:]) + num_classes if v != ignore]
    if bad:
        raise InputError(
            None, f"label values {bad} are outside 0..{num_classes - 1} and not IGNORE={ignore}"
        )
    return hist[:num_classes].astype(np.int64)


def class_pixel_counts(
    labels_iter: Iterable[np.ndarray], num_classes: int, ignore: int = IGNORE
) -> np.ndarray:
    """Total annotated pixels per class over an iterable of label arrays, (num_classes,) int64."""
    total = np.zeros(num_classes, dtype=np.int64)
    for label in labels_iter:
        total += patch_pixel_counts(label, num_classes, ignore)
    return total


def expected_counts_after_balancing(
    per_patch_counts: np.ndarray | Sequence[Sequence[int]],
    patch_classes: Sequence[int | None],
    rates: Mapping[int, int] | Sequence[int],
) -> np.ndarray:
    """Pixels per class over one balanced epoch: Σ_p (1 + r_class(p)) · counts_p, (C,) int64.

    "Expected" because a deformed copy keeps its pixel counts only approximately (nearest-
    neighbour resampling of the label can grow or shrink a region by a few pixels).
    """
    counts = np.asarray(per_patch_counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != len(patch_classes):
        raise ValueError(
            f"per_patch_counts must be (n_patches={len(patch_classes)}, C), got {counts.shape}"
        )
    _check_rates(rates)
    mult = np.array([1 + _rate_of(rates, c) for c in patch_classes], dtype=np.int64)
    return (counts * mult[:, None]).sum(axis=0)


def format_counts(
    before: Sequence[int] | np.ndarray,
    after: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> str:
    """A plain-text table of pixels per class before and after balancing, with shares and gain."""
    before = np.asarray(before, dtype=np.int64)
    after = np.asarray(after, dtype=np.int64)
    if not len(before) == len(after) == len(class_names):
        raise ValueError("before, after and class_names must have the same length")
    tb, ta = max(int(before.sum()), 1), max(int(after.sum()), 1)
    rows = [("class", "before", "share", "after", "share", "gain")]
    for name, b, a in zip(class_names, before, after, strict=True):
        gain = f"x{a / b:.2f}" if b else "-"
        rows.append(
            (str(name), f"{b:,}", f"{100 * b / tb:.1f}%", f"{a:,}", f"{100 * a / ta:.1f}%", gain)
        )
    total_gain = f"x{after.sum() / before.sum():.2f}" if before.sum() else "-"
    rows.append(
        (
            "total",
            f"{before.sum():,}",
            "100.0%" if before.sum() else "-",
            f"{after.sum():,}",
            "100.0%" if after.sum() else "-",
            total_gain,
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    sep = "-" * len(line(rows[0]))
    return "\n".join([line(rows[0]), sep, *map(line, rows[1:-1]), sep, line(rows[-1])])
