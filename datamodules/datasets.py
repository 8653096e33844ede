"""Patch datasets: (slide, labels, position) -> a view's images and target labels as tensors.

Samples are dicts: ``image`` uint8 ``(V, 3, H, W)`` (``(3, H, W)`` for one view), ``label`` int64
``(H, W)`` with 255 = unlabeled, ``meta`` (slide name, level-0 x, y). Images stay uint8 until the
LightningModule normalizes them on its device. A view may return a third item, a dict of extra
arrays (e.g. RAZN's zoomed fields and their labels, of other sizes): each becomes a sample entry
of its own, ``(H', W', 3)`` images as uint8 ``(3, H', W')`` and ``(H', W')`` labels as int64,
augmented with the same random parameters as the views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from datamodules.labels.classmaps import IGNORE
from datamodules.sampling.balancing import control_grid, item_rng
from datamodules.sampling.elastic_torch import deform_field
from datamodules.slides.slide import Slide


@dataclass
class SlideSource:
    """One slide with its labels and split; `Slide` and label sources pickle without handles."""

    name: str
    slide: Slide
    labels: object  # a LabelSource: .read(location, size, mpp) -> (h, w) uint8
    split: str


def augmentation(num_views: int, extra_targets: dict[str, str] | None = None):
    """Rotations by 90°, flips, brightness/contrast and colour jitter, applied with the same
    random parameters to every view and the label (views share a centre, so they stay aligned).

    ``extra_targets`` (name -> "image" | "mask") adds a view's extra arrays; they may differ in
    size from the views (a zoomed field), so the shape check is off for them.
    """
    import albumentations as A

    extra = {f"image{i}": "image" for i in range(1, num_views)}
    extra.update(extra_targets or {})
    return A.Compose(
        [
            A.RandomRotate90(p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
            A.ColorJitter(brightness=0.0, contrast=0.0, saturation=0.1, hue=0.03, p=0.5),
        ],
        additional_targets=extra,
        is_check_shapes=not extra_targets,
    )


class PatchDataset(Dataset):
    """Patches of `sources` at `entries` = (source index, level-0 x, y, deform) through `view`.

    ``deform`` entries are DMMN's class-balancing copies: the whole field is elastically deformed
    with its labels before the magnifications are cut, each copy with its own seeded warp
    (`elastic_torch.deform_field`: the elasticdeform warp at <= 1/10 of its CPU cost). With
    ``deform_on_device`` the field is only read and augmented here, and the copy carries it with
    its seeded control grid to the training step (`collate`, `elastic_torch.deform_on_device`).
    """

    def __init__(
        self, sources, entries, view, transform=None, seed: int = 0, deform_on_device=False
    ):
        self.sources = list(sources)
        self.entries = list(entries)
        self.view = view
        self.transform = transform
        self.seed = seed
        self.deform_on_device = deform_on_device

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int | tuple[int, int]) -> dict:
        i, seed = i if isinstance(i, tuple) else (i, None)  # EpochSampler(tag_seeds=True)
        s, x, y, deform = self.entries[i]
        src = self.sources[s]
        if deform:
            field, field_labels = self.view.read_field(src.slide, src.labels, (x, y))
            if self.deform_on_device:
                return self._device_copy(i, src.name, x, y, field, field_labels, seed)
            field, field_labels = deform_field(field, field_labels, item_rng(self.seed, i))
            views, label, extra = (*self.view.cut(field, field_labels), {})
        else:
            views, label, *rest = self.view.read(src.slide, src.labels, (x, y))
            extra = rest[0] if rest else {}
        if self.transform is not None:
            views, label, extra = self._augment(views, label, extra, seed)
        image = torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2)
        if image.shape[0] == 1:
            image = image[0]
        sample = {
            "image": image,
            "label": torch.from_numpy(np.ascontiguousarray(label)).long(),
            "meta": {"slide": src.name, "x": float(x), "y": float(y)},
        }
        for name, arr in extra.items():
            t = torch.from_numpy(np.ascontiguousarray(arr))
            sample[name] = t.permute(2, 0, 1) if t.ndim == 3 else t.long()
        return sample

    def _device_copy(self, i, name, x, y, field, field_labels, seed=None) -> dict:
        """A deformed copy to finish on the device: the field augmented as a whole (rotations
        and flips commute with the centred cut; a rotated grid is as likely as the grid), the
        control grid drawn as the CPU path draws it, placeholder views and label."""
        if self.transform is not None:
            self._seed_transform(seed)
            out = self.transform(image=field, mask=field_labels)
            field, field_labels = out["image"], out["mask"]
        n, views = self.view.size, self.view.num_views
        image = torch.zeros((views, 3, n, n) if views > 1 else (3, n, n), dtype=torch.uint8)
        return {
            "image": image,
            "label": torch.full((n, n), IGNORE, dtype=torch.long),
            "meta": {"slide": name, "x": float(x), "y": float(y)},
            "field": torch.from_numpy(np.ascontiguousarray(field)).permute(2, 0, 1),
            "field_label": torch.from_numpy(np.ascontiguousarray(field_labels)),
            "grid": torch.from_numpy(control_grid(item_rng(self.seed, i))).float(),
            "scales": torch.tensor(self.view.scales),
        }

    def _seed_transform(self, seed=None) -> None:
        # albumentations draws from OS entropy unless seeded: seed it with the sample's seed
        # (training: from the sampler, so resumed runs agree), else from torch's generator,
        # which seed_everything (and Lightning's worker_init_fn in workers) makes reproducible.
        if hasattr(self.transform, "set_random_seed"):
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()))
            self.transform.set_random_seed(int(seed))

    def _augment(self, views: np.ndarray, label: np.ndarray, extra: dict | None = None, seed=None):
        """(views, label), or (views, label, extra) when extra arrays are given."""
        more = {f"image{i}": views[i] for i in range(1, len(views))}
        self._seed_transform(seed)
        out = self.transform(image=views[0], mask=label, **more, **(extra or {}))
        stacked = [out["image"]] + [out[f"image{i}"] for i in range(1, len(views))]
        if extra is None:
            return np.stack(stacked), out["mask"]
        return np.stack(stacked), out["mask"], {k: out[k] for k in extra}


DEVICE_COPY_KEYS = ("field", "field_label", "grid", "scales")


def collate(samples: list[dict]) -> dict:
    """`default_collate`, with the copies to deform on the device gathered under ``"deform"``
    (their batch positions as ``index``); batches without any have no ``"deform"``."""
    index = [k for k, s in enumerate(samples) if "field" in s]
    if not index:
        return default_collate(samples)
    plain = [{k: v for k, v in s.items() if k not in DEVICE_COPY_KEYS} for s in samples]
    batch = default_collate(plain)
    copies = default_collate([{key: samples[k][key] for key in DEVICE_COPY_KEYS} for k in index])
    batch["deform"] = {"index": torch.tensor(index), **copies}
    return batch
