"""`WSIDataModule`: slides + labels + sampler + view + augmentation, split by slide.

Two kinds of `root`: a folder with a ``manifest.json`` (the synthetic benchmark, or any dataset
listed the same way) or a plain folder of slides with one annotation file per slide
(``<stem><label_suffix>``: Aperio/ASAP XML, GeoJSON or a label-mask TIFF), split by slide with a
seeded shuffle. The default root is the synthetic benchmark, generated on first use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.datasets import PatchDataset, SlideSource, augmentation, collate
from datamodules.errors import InputError
from datamodules.labels.classmaps import load_class_map
from datamodules.labels.sources import MaskLabels, open_labels
from datamodules.sampling.balancing import (
    balanced_index,
    expected_counts_after_balancing,
    format_counts,
)
from datamodules.sampling.elastic_torch import deform_on_device
from datamodules.sampling.eval_sampler import EvalShardSampler
from datamodules.sampling.grid import grid_index
from datamodules.sampling.train_order import EpochSampler, resume_offset
from datamodules.slides.slide import Slide
from datamodules.views.base import View
from datamodules.views.multimag import MultiMagView

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
DEFAULT_ROOT = "data/synthetic"


class WSIDataModule(pl.LightningDataModule):
    """Patches on a stride-`view.size` grid of each slide, tissue-masked, > `min_annotated`
    labelled; optional DMMN class balancing on the training split.

    Args:
        root: folder with manifest.json, or a folder of slides (see the module doc).
        class_map: class map name (bach, tiger, tiger_stroma, dmmn) or YAML path.
        view: patch geometry (default: DMMN's MultiMagView, 256² at 20x/10x/5x).
        labels: for manifests, which label file of each slide: "mask" or "annotations".
        slide_glob / label_suffix: for plain folders: which files are slides, and the suffix of
            each slide's label file (e.g. ".xml" or "_mask.tiff").
        mpp: level-0 mpp for slides whose metadata lacks it.
        pad_value: grey level of pixels outside a slide (255 = white glass; DMMN: 0, the
            paper's zero padding); `wsiseg segment` pads with the same value.
        val_fraction / test_fraction: plain folders only: share of slides per split.
        min_annotated: keep targets with more than this labelled fraction (DMMN: 1 %).
        min_tissue: keep targets with at least this Otsu tissue fraction (0 = no masking).
        balance_rates: DMMN elastic class balancing: r_c extra deformed copies of each patch of
            class c per epoch, a list indexed by class (0 = used once; None = off).
        class_order: highest-order class first; decides a patch's class for balancing.
        balance_deform: elastically deform the extra copies (the paper); False repeats them
            as they are (only augmentation differs): ~10x cheaper, for CPU-budget runs.
        deform_on_device: deform the copies where the batch is (the GPU), after the transfer
            (`on_after_batch_transfer`), instead of in the loader's workers.
        augment: rotations, flips, brightness/contrast/colour jitter on the training split.
        max_patches: per split cap (train, val, test); training draws a fresh random subset
            of the balanced patches each epoch, val/test use one fixed seeded subset; None = all.
        synthesize: generate the synthetic benchmark when `root` is missing and is the default.
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        class_map: str = "bach",
        view: View | None = None,
        labels: str = "mask",
        slide_glob: str = "*.svs",
        label_suffix: str = ".xml",
        mpp: float | None = None,
        pad_value: int = 255,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        min_annotated: float = 0.01,
        min_tissue: float = 0.1,
        balance_rates: list[int] | None = None,
        class_order: list[int] | None = None,
        balance_deform: bool = True,
        deform_on_device: bool = False,
        augment: bool = True,
        max_patches: tuple[int | None, int | None, int | None] = (None, None, None),
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        synthesize: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["view"])
        self.root = Path(root)
        self.view = view if view is not None else MultiMagView()
        self.hparams["view"] = view_spec(self.view)  # `wsiseg segment` rebuilds it from a ckpt
        self.class_map = load_class_map(class_map)
        self.num_classes = self.class_map.num_classes
        self.datasets: dict[str, PatchDataset] = {}
        self.class_pixel_counts: np.ndarray | None = None
        self.counts_before: np.ndarray | None = None

    # ------------------------------------------------------------------ sources
    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.synthesize and str(self.root) == DEFAULT_ROOT:
            from datamodules.synthetic.generator import ensure_dataset

            ensure_dataset(self.root)

    def sources(self) -> list[SlideSource]:
        if (self.root / "manifest.json").is_file():
            return self._manifest_sources()
        if self.root.is_dir():
            return self._folder_sources()
        hint = " (run `make data` or `wsiseg synth`)" if str(self.root) == DEFAULT_ROOT else ""
        raise InputError(self.root, f"no such data folder{hint}")

    def _source(self, name, slide_path, label_path, split) -> SlideSource:
        slide = Slide(slide_path, mpp=self.hparams.mpp, pad_value=self.hparams.pad_value)
        labels = open_labels(label_path, self.class_map, slide)
        if isinstance(labels, MaskLabels):
            labels.check_values()  # a class map that does not fit fails before training
        return SlideSource(name, slide, labels, split)

    def _manifest_sources(self) -> list[SlideSource]:
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
            entries = manifest["slides"]
        except (ValueError, KeyError) as err:
            raise InputError(path, f"not a wsiseg manifest: {err}") from err
        key = self.hparams.labels
        out = []
        for e in entries:
            files = e.get("files", {})
            if "image" not in files or key not in files:
                raise InputError(path, f"slide {e.get('name')!r} lists no 'image' and {key!r} file")
            if e.get("split") not in SPLITS:
                raise InputError(path, f"slide {e.get('name')!r}: split must be one of {SPLITS}")
            out.append(
                self._source(
                    e["name"], self.root / files["image"], self.root / files[key], e["split"]
                )
            )
        return out

    def _folder_sources(self) -> list[SlideSource]:
        hp = self.hparams
        slides = sorted(p for p in self.root.glob(hp.slide_glob) if p.is_file())
        pairs = []
        for p in slides:
            label = p.with_name(p.stem + hp.label_suffix)
            if label.exists():
                pairs.append((p, label))
            else:
                log.warning("%s: no label file %s, skipped", p, label.name)
        if not pairs:
            raise InputError(
                self.root, f"no slides matching {hp.slide_glob!r} with a {hp.label_suffix!r} label"
            )
        order = np.random.default_rng(hp.seed)
        idx = order.permutation(len(pairs))
        n_test = int(round(hp.test_fraction * len(pairs)))
        n_val = int(round(hp.val_fraction * len(pairs)))
        split_of = {}
        for rank, i in enumerate(idx):
            split_of[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        return [self._source(p.stem, p, lab, split_of[i]) for i, (p, lab) in enumerate(pairs)]

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        sources = self.sources()
        patches = self.split_patches(sources)
        for split_i, split in enumerate(SPLITS):
            entries, counts = patches[split]
            if split == "train":
                entries, counts = self._balance(entries, counts)
            else:  # fixed, seeded evaluation subsets; training draws a fresh subset per epoch
                entries, counts = self._subset(entries, counts, hp.max_patches[split_i], split_i)
            transform = (
                augmentation(self.view.num_views, getattr(self.view, "extra_targets", None))
                if split == "train" and hp.augment
                else None
            )
            self.datasets[split] = PatchDataset(
                sources,
                entries,
                self.view,
                transform,
                seed=hp.seed,
                deform_on_device=hp.deform_on_device and split == "train",
            )

    def slide_patches(self, i: int, src: SlideSource) -> tuple[list, list]:
        """Grid patches of source `i`: entries (i, x, y, deform=False) and class pixel counts."""
        hp = self.hparams
        grid = grid_index(
            src.slide,
            src.labels,
            self.num_classes,
            self.view.size,
            self.view.mpp,
            min_annotated=hp.min_annotated,
            min_tissue=hp.min_tissue,
        )
        entries = [(i, float(x), float(y), False) for x, y in grid.positions]
        return entries, list(grid.class_counts)

    def split_patches(self, sources: list[SlideSource]) -> dict[str, tuple[list, np.ndarray]]:
        """Patches per split, each slide's in its slide's split (no slide in two splits);
        subclasses may split otherwise (`TigerDataModule` can split by patch)."""
        out = {}
        for split in SPLITS:
            members = [(i, s) for i, s in enumerate(sources) if s.split == split]
            entries, counts = [], []
            for i, src in members:
                e, c = self.slide_patches(i, src)
                entries += e
                counts += c
            if not entries and members:
                names = ", ".join(s.name for _, s in members)
                raise InputError(
                    self.root,
                    f"no {split} patch has > {self.hparams.min_annotated:.0%} annotated pixels "
                    f"on tissue (slides: {names})",
                )
            out[split] = (entries, np.array(counts, np.int64).reshape(-1, self.num_classes))
        return out

    def _subset(self, entries, counts, cap, salt):
        if cap is None or len(entries) <= cap:
            return entries, counts
        pick = np.sort(
            np.random.default_rng([self.hparams.seed, salt]).choice(len(entries), cap, False)
        )
        return [entries[i] for i in pick], counts[pick]

    def _balance(self, entries, counts):
        hp = self.hparams
        self.counts_before = counts.sum(0)
        if not hp.balance_rates:
            self.class_pixel_counts = self.counts_before
            return entries, counts
        order = hp.class_order or list(range(self.num_classes))[::-1]
        classes = [patch_class_from_counts(c, order) for c in counts]
        index = balanced_index(classes, hp.balance_rates)
        after = expected_counts_after_balancing(counts, classes, hp.balance_rates)
        self.class_pixel_counts = after
        print(format_counts(self.counts_before, after, list(self.class_map.classes)), flush=True)
        new_entries = [(*entries[i][:3], deform and hp.balance_deform) for i, deform in index]
        return new_entries, counts[[i for i, _ in index]]

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str) -> DataLoader:
        if not self.datasets:
            self.setup()
        hp = self.hparams
        dataset = self.datasets[split]
        sampler = self._train_sampler(dataset) if split == "train" else None
        trainer = getattr(self, "trainer", None)
        if split != "train" and trainer is not None and trainer.world_size > 1:
            # Lightning's own DDP sampler would repeat patches to even the ranks out.
            sampler = EvalShardSampler(
                dataset, trainer.world_size, trainer.global_rank, hp.batch_size
            )
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            drop_last=False,
            collate_fn=collate,
            # worker base seeds from the loader's own generator: a loader started by a resumed
            # run does not shift torch's global stream (lightning_modules/callbacks/rng.py)
            generator=torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0))),
        )

    def _train_sampler(self, dataset) -> EpochSampler:
        """A fresh order (capped at ``max_patches[0]``) per epoch, seeded by the data seed and
        `seed_everything`'s (PL_GLOBAL_SEED), one share per DDP rank;
        see datamodules.sampling.train_order.
        """
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return EpochSampler(
            dataset,
            num_samples=self.hparams.max_patches[0],
            seed=[self.hparams.seed, int(os.environ.get("PL_GLOBAL_SEED", 0))],
            num_replicas=world,
            rank=rank,
            batch_size=self.hparams.batch_size,
            resume_offset=self._resume_offset,
            tag_seeds=True,
        )

    def _resume_offset(self) -> tuple[int, int] | None:
        """(epoch, batches done) when the trainer resumes mid-epoch from a checkpoint."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        return resume_offset(trainer)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Class-balancing copies the loader left to the device (``deform_on_device``)."""
        return deform_on_device(batch) if isinstance(batch, dict) else batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split's patches (whole-slide inference has its own command)."""
        return self._loader("test")


def view_spec(view: View) -> dict:
    """``{class_path, init_args}`` of a view, as in the YAMLs: plain data, so checkpoints stay
    loadable with ``weights_only=True`` and hparams.yaml stays plain YAML."""
    fields = dataclasses.asdict(view) if dataclasses.is_dataclass(view) else dict(vars(view))
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    return {"class_path": f"{type(view).__module__}.{type(view).__qualname__}", "init_args": args}


def patch_class_from_counts(counts: np.ndarray, class_order) -> int | None:
    """Highest-order class present in a patch, from its per-class pixel counts."""
    present = {c for c, n in enumerate(counts) if n > 0}
    for c in class_order:
        if c in present:
            return c
    return None
