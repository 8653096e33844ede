"""`TigerDataModule`: the TIGER challenge's WSIROIS folders, or plain image + mask folders.

Three layouts of `root`, recognised by what is there:

* **TIGER** (``root`` is or holds ``wsirois``)::

      wsirois/roi-level-annotations/tissue-bcss/{images,masks}/<slide>_[x1, y1, x2, y2].png
      wsirois/wsi-level-annotations/images/<slide>.tif
      wsirois/wsi-level-annotations/annotations-tissue-cells-xmls/<slide>.xml   (ASAP)

  ``source="rois"`` (default, the TIGER stroma project) reads the ROI PNGs and masks (values
  0-7, 0 = unannotated) at 0.5 um/px; ``source="wsi"`` reads the slides with their ASAP XML
  (unannotated = ignored, ``roi`` outlines skipped).
* **pairs**: ``root/images`` and ``root/masks`` with the same file stems (PNG or TIFF).
* **flat**: slides and label files side by side, ``<stem><label_suffix>`` (as `WSIDataModule`).

Patches are `view.size`² (512² at 20x by default) on a stride-`size` grid of each image, zero-
padded where an image ends (padding is labelled ignore), and patches without one annotated pixel
are dropped. Splits are 80/10/10 **by slide** (all ROIs of a slide in one split). ``split_by=
"patch"`` pools every patch and splits at random, as the TIGER stroma project did: neighbouring
patches of one ROI then land in train and test, which leaks slide appearance and inflates the
scores (see docs/smp_tiger.md). The default root is the synthetic TIGER set, made on first use.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.datasets import SlideSource
from datamodules.errors import InputError
from datamodules.labels.sources import MaskLabels, open_labels
from datamodules.slides.slide import IMAGE_SUFFIXES, Slide
from datamodules.views.base import View
from datamodules.views.single import SingleView
from datamodules.wsi import SPLITS, WSIDataModule

log = logging.getLogger(__name__)
DEFAULT_TIGER_ROOT = "data/synthetic_tiger"
ROI_LEVEL = Path("roi-level-annotations")
WSI_LEVEL = Path("wsi-level-annotations")
#: ``<slide>_[x1, y1, x2, y2]``: TIGER's ROI file stems (level-0 box of the ROI in its slide).
ROI_STEM = re.compile(r"^(?P<slide>.+?)_\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]$")
IMAGE_TYPES = {*IMAGE_SUFFIXES, ".tif", ".tiff", ".svs", ".ndpi", ".mrxs"}
LABEL_TYPES = (".xml", ".geojson", ".json", ".tif", ".tiff", ".png")


@dataclass(frozen=True)
class Item:
    """One image with its label file; `slide` groups ROIs of one slide for the split."""

    name: str
    slide: str
    image: Path
    label: Path


def slide_of(stem: str) -> str:
    """Slide name of a TIGER ROI stem (``TCGA-A1-..._[1, 2, 3, 4]`` -> ``TCGA-A1-...``)."""
    match = ROI_STEM.match(stem)
    return match.group("slide") if match else stem


def split_counts(n: int, fractions) -> list[int]:
    """Items per split: largest remainders, and every split with a positive share gets at least
    one item while there are enough (10 slides at 80/10/10 -> 8/1/1; 3 -> 1/1/1)."""
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise InputError(None, f"split_fractions must be 3 non-negative shares, got {fractions}")
    f = f / f.sum()
    counts = np.floor(f * n).astype(int)
    for i in np.argsort(-(f * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((f > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def assign_splits(names: list[str], fractions, seed: int) -> dict[str, str]:
    """Split name per unique name: a seeded shuffle of the sorted names, cut by `fractions`."""
    unique = sorted(set(names))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n_train, n_val, _ = split_counts(len(unique), fractions)
    return {
        name: "train" if k < n_train else "val" if k < n_train + n_val else "test"
        for k, name in enumerate(order)
    }


# ---------------------------------------------------------------------- finding files
def find_wsirois(root: Path) -> Path | None:
    """The ``wsirois`` folder at or under `root` (None when `root` is no TIGER tree)."""
    for cand in (root, root / "wsirois"):
        if (cand / ROI_LEVEL).is_dir() or (cand / WSI_LEVEL).is_dir():
            return cand
    return None


def _files(folder: Path, types) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in types)


def pair_items(images: Path, masks: Path) -> list[Item]:
    """Images and masks with the same stem (``x.png`` + ``x.png`` or ``x_mask.tif``)."""
    by_stem = {p.stem: p for p in _files(masks, IMAGE_TYPES)}
    items = []
    for image in _files(images, IMAGE_TYPES):
        mask = by_stem.get(image.stem) or by_stem.get(image.stem + "_mask")
        if mask is None:
            log.warning("%s: no mask in %s, skipped", image, masks)
            continue
        items.append(Item(image.stem, slide_of(image.stem), image, mask))
    return items


def wsi_items(wsi_level: Path, label_dirs) -> list[Item]:
    """TIGER slides with the first label file found for their stem in `label_dirs`."""
    images = wsi_level / "images"
    if not images.is_dir():
        raise InputError(
            images, "no such folder (TIGER slides are in wsi-level-annotations/images)"
        )
    items = []
    for image in _files(images, IMAGE_TYPES):
        label = next(
            (
                wsi_level / d / (image.stem + ext)
                for d in label_dirs
                for ext in LABEL_TYPES
                if (wsi_level / d / (image.stem + ext)).is_file()
            ),
            None,
        )
        if label is None:
            log.warning("%s: no annotations in %s, skipped", image, ", ".join(label_dirs))
            continue
        items.append(Item(image.stem, image.stem, image, label))
    return items


def flat_items(root: Path, slide_glob: str, label_suffix: str) -> list[Item]:
    """Slides and ``<stem><label_suffix>`` label files side by side in `root`."""
    items = []
    for image in sorted(p for p in root.glob(slide_glob) if p.is_file()):
        if image.name.endswith(label_suffix):
            continue
        label = image.with_name(image.stem + label_suffix)
        if label.is_file():
            items.append(Item(image.stem, slide_of(image.stem), image, label))
    return items


# ---------------------------------------------------------------------- data module
class TigerDataModule(WSIDataModule):
    """TIGER (or image + mask folder) patches for the smp baselines; see the module doc.

    Args:
        root: a TIGER ``wsirois`` tree (or its parent), an ``images/`` + ``masks/`` folder,
            or a flat folder of slides and label files.
        class_map: ``tiger_stroma`` (stroma 2, 6 vs 1, 3, 4, 5, 7; 0 ignored) or ``tiger``
            (the 7 classes), or any class map name / YAML path.
        view: patch geometry (default: `SingleView` 512² at 20x = 0.5 um/px).
        source: TIGER layout only: "rois" (ROI PNGs + masks) or "wsi" (slides + XML).
        roi_sets: which ``roi-level-annotations`` subfolders to read (e.g. add "tissue-cells").
        wsi_labels: ``wsi-level-annotations`` subfolders searched for a slide's labels.
        split_by: "slide" (default; no slide in two splits) or "patch" (the project's leaky
            random patch split).
        split_fractions: train/val/test shares.
        roi_mpp: resolution of plain images (PNG/JPEG carry none); TIGER is 0.5 um/px.
        mpp: overrides every image's resolution (e.g. TIFFs without resolution tags).
        slide_glob / label_suffix: flat folders: which files are slides / label suffix.
        min_annotated: keep patches with more than this annotated fraction (0: drop only
            patches without annotation).
        min_tissue: Otsu tissue fraction a patch needs (0 = off; ROIs are tissue already).
        augment: random rot90 and flips on the training split (the project's augmentation).
        color_jitter: add `WSIDataModule`'s brightness/contrast/colour jitter (not the
            project's).
        max_patches, batch_size, num_workers, seed: as `WSIDataModule`.
        synthesize: make the synthetic TIGER set when `root` is the default and missing.
    """

    def __init__(
        self,
        root: str = DEFAULT_TIGER_ROOT,
        class_map: str = "tiger_stroma",
        view: View | None = None,
        source: str = "rois",
        roi_sets: list[str] | None = None,
        wsi_labels: list[str] | None = None,
        split_by: str = "slide",
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        roi_mpp: float = 0.5,
        mpp: float | None = None,
        slide_glob: str = "*.tif",
        label_suffix: str = "_mask.tif",
        min_annotated: float = 0.0,
        min_tissue: float = 0.0,
        augment: bool = True,
        color_jitter: bool = False,
        max_patches: tuple[int | None, int | None, int | None] = (None, None, None),
        batch_size: int = 16,
        num_workers: int = 2,
        seed: int = 0,
        synthesize: bool = True,
    ):
        if source not in ("rois", "wsi"):
            raise InputError(None, f"source must be 'rois' or 'wsi', got {source!r}")
        if split_by not in ("slide", "patch"):
            raise InputError(None, f"split_by must be 'slide' or 'patch', got {split_by!r}")
        split_counts(10, split_fractions)  # validates the shares
        base = dict(
            root=root,
            class_map=class_map,
            view=view if view is not None else SingleView(size=512, magnification=20.0),
            slide_glob=slide_glob,
            label_suffix=label_suffix,
            mpp=mpp,
            val_fraction=split_fractions[1],
            test_fraction=split_fractions[2],
            min_annotated=min_annotated,
            min_tissue=min_tissue,
            augment=augment,
            max_patches=max_patches,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            synthesize=synthesize,
        )
        super().__init__(**base)
        # Under LightningCLI hparams hold only this class's arguments: add the parent's.
        for name, p in inspect.signature(WSIDataModule.__init__).parameters.items():
            if name not in ("self", "view") and name not in self.hparams:
                self.hparams[name] = base.get(name, p.default)
        self.roi_sets = list(roi_sets or ["tissue-bcss"])
        self.wsi_labels = list(
            wsi_labels or ["annotations-tissue-cells-xmls", "annotations-tissue-bcss-xmls"]
        )
        self.layout: str | None = None

    # ------------------------------------------------------------------ sources
    def prepare_data(self) -> None:
        if self.hparams.synthesize and str(self.root) == DEFAULT_TIGER_ROOT:
            from datamodules.synthetic.generator import ensure_dataset
            from datamodules.synthetic.tiger import SYNTH_DEFAULTS

            ensure_dataset(self.root, **SYNTH_DEFAULTS)

    def items(self) -> list[Item]:
        """Every (image, label) pair under `root`; sets `self.layout`."""
        root, hp = self.root, self.hparams
        if not root.is_dir():
            hint = " (run `wsiseg synth --layout tiger`)" if str(root) == DEFAULT_TIGER_ROOT else ""
            raise InputError(root, f"no such data folder{hint}")
        wsirois = find_wsirois(root)
        if wsirois is not None and hp.source == "rois":
            self.layout, items = "tiger rois", []
            for name in self.roi_sets:
                folder = wsirois / ROI_LEVEL / name
                if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
                    raise InputError(folder, "no images/ and masks/ folders for this ROI set")
                items += pair_items(folder / "images", folder / "masks")
        elif wsirois is not None:
            self.layout, items = "tiger wsi", wsi_items(wsirois / WSI_LEVEL, self.wsi_labels)
        elif (root / "images").is_dir() and (root / "masks").is_dir():
            self.layout, items = "pairs", pair_items(root / "images", root / "masks")
        else:
            self.layout, items = "flat", flat_items(root, hp.slide_glob, hp.label_suffix)
        if not items:
            raise InputError(
                root,
                f"no images with labels found ({self.layout} layout); expected a TIGER wsirois "
                "tree, images/ + masks/ folders, or slides with "
                f"'<stem>{hp.label_suffix}' label files matching {hp.slide_glob!r}",
            )
        return items

    def sources(self) -> list[SlideSource]:
        hp = self.hparams
        items = self.items()
        split_of = assign_splits([it.slide for it in items], hp.split_fractions, hp.seed)
        return [self._item_source(it, split_of[it.slide]) for it in items]

    def _item_source(self, item: Item, split: str) -> SlideSource:
        hp = self.hparams
        plain = item.image.suffix.lower() in IMAGE_SUFFIXES
        mpp = hp.mpp if hp.mpp is not None else (hp.roi_mpp if plain else None)
        slide = Slide(item.image, mpp=mpp, pad_value=0)  # zero padding, as the project
        labels = open_labels(item.label, self.class_map, slide)
        if isinstance(labels, MaskLabels):
            labels.check_values()
        return SlideSource(item.name, slide, labels, split)

    # ------------------------------------------------------------------ splits
    def split_patches(self, sources: list[SlideSource]) -> dict[str, tuple[list, np.ndarray]]:
        if self.hparams.split_by == "slide":
            return super().split_patches(sources)
        entries, counts = [], []
        for i, src in enumerate(sources):
            e, c = self.slide_patches(i, src)
            entries += e
            counts += c
        counts = np.array(counts, np.int64).reshape(-1, self.num_classes)
        order = np.random.default_rng(self.hparams.seed).permutation(len(entries))
        sizes = split_counts(len(entries), self.hparams.split_fractions)
        out, start = {}, 0
        for split, n in zip(SPLITS, sizes, strict=True):
            pick = np.sort(order[start : start + n])
            out[split] = ([entries[k] for k in pick], counts[pick])
            start += n
        if not out["train"][0]:
            raise InputError(self.root, "no patch with an annotated pixel to train on")
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        super().setup(stage)
        train = self.datasets["train"]
        if self.hparams.augment and not self.hparams.color_jitter:
            train.transform = rot_flip()
        log.info(
            "TIGER data (%s layout, split by %s): %s patches",
            self.layout,
            self.hparams.split_by,
            ", ".join(f"{s} {len(self.datasets[s])}" for s in SPLITS),
        )


def rot_flip():
    """Random 90° rotations and flips: the TIGER stroma project's augmentation."""
    import albumentations as A

    return A.Compose([A.RandomRotate90(p=1.0), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])


__all__ = [
    "DEFAULT_TIGER_ROOT",
    "Item",
    "TigerDataModule",
    "assign_splits",
    "slide_of",
    "split_counts",
]
