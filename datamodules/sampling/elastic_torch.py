"""DMMN's elastic deformation in torch: batched, on any device, ~10x cheaper than elasticdeform.

The same deformation as `balancing.elastic_deform` (which calls elasticdeform): a (2, P, P)
control grid of N(0, σ²) displacements, the first and last control points on the first and last
pixel, interpolated to every pixel by an interpolating cubic B-spline (mirror boundary), and
``out(y, x) = in(y + u_y, x + u_x)`` with half-sample-reflected borders. Two differences, both
measured in tests/test_elastic_torch.py: the image is interpolated by Keys' bicubic convolution
(torch's ``grid_sample``) instead of a prefiltered cubic B-spline, and the label's nearest
neighbour may round a tie the other way. The dense field is two small matrix products
(``A @ d @ Aᵀ``, A the n × P spline matrix), so the warp itself is the whole cost.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.sampling.balancing import GRID_POINTS, GRID_SIGMA, RngLike, control_grid


def _bspline3(x: np.ndarray) -> np.ndarray:
    """The centred cubic B-spline β³."""
    a = np.abs(x)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


@lru_cache(maxsize=16)
def spline_matrix(n: int, points: int) -> np.ndarray:
    """(n, points) float64: row i interpolates a control grid's values at pixel i.

    Control point k sits at pixel k (n - 1) / (points - 1). The interpolant is the cubic
    B-spline through the control values with mirrored coefficients past both ends (scipy's
    ``mode="mirror"``, which elasticdeform uses): coefficients c = B⁻¹ d, value Σ c_k β³(t - k).
    """
    if points < 2 or n < 2:
        raise ValueError(f"need >= 2 pixels and >= 2 control points, got {n}, {points}")
    last = points - 1

    def fold(k: np.ndarray) -> np.ndarray:  # mirror about 0 and `last`, no repeated sample
        k = np.abs(k) % (2 * last)
        return np.where(k > last, 2 * last - k, k)

    knots = np.arange(points)
    prefilter = np.zeros((points, points))  # B: the spline's values at the knots
    for k in range(-1, points + 1):
        np.add.at(prefilter, (knots, fold(np.full(points, k))), _bspline3(knots - k))
    t = np.arange(n) * last / (n - 1)
    weights = np.zeros((n, points))
    rows = np.arange(n)
    base = np.floor(t).astype(int)
    for off in (-1, 0, 1, 2):
        k = base + off
        np.add.at(weights, (rows, fold(k)), _bspline3(t - k))
    return weights @ np.linalg.inv(prefilter)


def dense_displacement(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, P, P) control displacements (rows, columns; pixels) -> (B, 2, height, width)."""
    points = grid.shape[-1]
    ay = torch.as_tensor(spline_matrix(height, points), dtype=grid.dtype, device=grid.device)
    ax = torch.as_tensor(spline_matrix(width, points), dtype=grid.dtype, device=grid.device)
    return ay @ grid @ ax.T


def _sample_grid(u: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) displacements -> grid_sample's (B, H, W, 2) (x, y) in [-1, 1].

    With align_corners=False pixel p of n sits at (2p + 1) / n - 1. Coordinates are reflected
    about -0.5 and n - 0.5 (scipy's "reflect", d c b a | a b c d; displacements under n px):
    q = |p + 0.5| folds the low side, n - |n - q| the high one, so the grid value is
    1 - 2 |n - q| / n. Cheaper than grid_sample's own reflection, which folds every tap.
    """
    b, _, h, w = u.shape
    out = torch.empty(b, h, w, 2, device=u.device, dtype=u.dtype)
    for axis, n, pos in ((0, w, (1, 1, w)), (1, h, (1, h, 1))):
        base = torch.arange(n, device=u.device, dtype=u.dtype).add_(0.5).view(pos)
        q = (u[:, 1 - axis] + base).abs_().sub_(n).abs_()
        out[..., axis] = q.mul_(-2 / n).add_(1)
    return out


def deform_batch(
    images: torch.Tensor, labels: torch.Tensor, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deform a batch of fields and labels, each item with its own control grid.

    ``images`` (B, C, H, W) uint8 or float, ``labels`` (B, H, W) of any integer dtype,
    ``grid`` (B, 2, P, P) displacements in pixels. Returns images of the input dtype (uint8:
    rounded and clipped) and labels of theirs (values are a subset of the input's).
    """
    _, _, h, w = images.shape
    u = dense_displacement(grid.to(device=images.device, dtype=torch.float32), h, w)
    where = _sample_grid(u)
    sample = {"padding_mode": "border", "align_corners": False}  # `where` is already reflected
    out = F.grid_sample(images.float(), where, mode="bicubic", **sample)
    if images.dtype == torch.uint8:
        out = out.clamp_(0, 255).add_(0.5).to(torch.uint8)  # round half up
    else:
        out = out.to(images.dtype)
    lab = F.grid_sample(labels[:, None].float(), where, mode="nearest", **sample)
    return out, lab[:, 0].to(labels.dtype)


def deform_field(
    image: np.ndarray,
    label: np.ndarray,
    rng: RngLike,
    *,
    points: int = GRID_POINTS,
    sigma: float = GRID_SIGMA,
) -> tuple[np.ndarray, np.ndarray]:
    """`balancing.elastic_deform`'s drop-in: (H, W, 3) uint8 field and (H, W) uint8 label.

    The same rng draws the same control grid as `elastic_deform` does.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if label.shape != image.shape[:2] or label.dtype != np.uint8:
        raise ValueError(
            f"label must be (H, W) uint8 matching image {image.shape[:2]}, "
            f"got {label.shape} {label.dtype}"
        )
    grid = torch.from_numpy(control_grid(rng, points, sigma))[None]
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    out, lab = deform_batch(img, torch.from_numpy(np.ascontiguousarray(label))[None], grid)
    return out[0].permute(1, 2, 0).contiguous().numpy(), lab[0].numpy()


def cut_views(
    fields: torch.Tensor, labels: torch.Tensor, size: int, scales: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`MultiMagView.cut` on a batch: (B, 3, n, n) fields -> (B, V, 3, size, size) views (the
    centre ``size·s``² of the field, block-averaged by s) and the (B, size, size) centre labels."""
    n = fields.shape[-1]
    views = []
    for s in scales:
        lo = (n - size * s) // 2
        crop = fields[..., lo : lo + size * s, lo : lo + size * s]
        if s > 1:
            crop = F.avg_pool2d(crop.float(), s).add_(0.5).to(fields.dtype)  # round half up
        views.append(crop)
    lo = (n - size) // 2
    return torch.stack(views, dim=1), labels[:, lo : lo + size, lo : lo + size]


def deform_on_device(batch: dict) -> dict:
    """Finish a batch's deformed copies where the batch now is (the GPU, in the training step).

    `datasets.collate` puts them under ``batch["deform"]``: their (augmented) whole fields,
    labels, control grids, batch positions and the view's scales; their ``image`` and ``label``
    entries are placeholders, replaced here by the views cut from the deformed fields.
    """
    copies = batch.pop("deform", None)
    if copies is None:
        return batch
    fields, labels = deform_batch(copies["field"], copies["field_label"], copies["grid"])
    image = batch["image"]
    size = image.shape[-1]
    views, target = cut_views(fields, labels, size, copies["scales"][0].tolist())
    index = copies["index"].to(image.device)
    batch["image"][index] = views if image.ndim == 5 else views[:, 0]
    batch["label"][index] = target.to(batch["label"].dtype)
    return batch
