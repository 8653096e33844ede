"""Whole-slide inference: every tissue cell of a slide through a method's own view, in order.

`WholeSlideData` is a LightningDataModule over whole slides: per slide a grid at the method's
target geometry (cell = the view's target patch; DMMN: 256² at 20x, each seen through its
1024² three-magnification field), kept where the Otsu tissue mask has tissue, read by the
view in DataLoader workers in row-major order. Under DDP the slides (not the tiles) are split
over ranks, so every rank stitches whole slides; `SlideWriter`
(lightning_modules.callbacks.slide_writer)
turns the batches into files. Nothing here is method-specific: each method's ``predict_step``
returns class probabilities for the target patch.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.errors import InputError
from datamodules.sampling.geometry import TileGeometry
from datamodules.sampling.tissue import tissue_fraction, tissue_mask
from datamodules.slides.shared_cache import SharedTileCache
from datamodules.slides.slide import Slide
from datamodules.slides.tilecache import use_shared_cache
from datamodules.views.base import View

SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff", ".png", ".jpg", ".jpeg",
}  # fmt: skip
#: Folder scans skip these: label masks next to their slides and this command's own outputs.
EXCLUDE = ("*_mask.*", "*_overlay.png", "*.part*")
OUTPUTS = ("_mask.tiff", "_overlay.png", ".geojson", ".json")


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """The files `wsiseg segment` writes per slide (the JSON last: its presence = complete)."""
    keys = ("mask", "overlay", "geojson", "json")
    return {k: Path(out_dir) / f"{name}{suffix}" for k, suffix in zip(keys, OUTPUTS, strict=True)}


def is_done(out_dir: Path, name: str) -> bool:
    return all(p.is_file() for p in output_paths(out_dir, name).values())


def find_slides(inputs, out_dir: Path | None = None, exclude=EXCLUDE) -> list[Path]:
    """Slide files from files, folders (slide suffixes, non-recursive) and ``.txt`` lists."""
    found: list[Path] = []
    out_dir = Path(out_dir).resolve() if out_dir else None
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            members = sorted(
                q
                for q in p.iterdir()
                if q.is_file()
                and q.suffix.lower() in SLIDE_SUFFIXES
                and not any(fnmatch.fnmatch(q.name, pat) for pat in exclude)
                and (out_dir is None or q.resolve().parent != out_dir)
            )
            if not members:
                raise InputError(p, f"no slide files ({', '.join(sorted(SLIDE_SUFFIXES))}) here")
            found.extend(members)
        elif p.suffix.lower() == ".txt" and p.is_file():
            lines = [s.strip() for s in p.read_text().splitlines()]
            found.extend(
                (p.parent / s) if not Path(s).is_absolute() else Path(s)
                for s in lines
                if s and not s.startswith("#")
            )
        elif p.exists():
            found.append(p)
        else:
            raise InputError(p, "no such slide, folder or list")
    if not found:
        raise InputError(None, "no slides given")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def output_names(slides: list[Path]) -> list[str]:
    """Output name per slide: its stem, or stem + suffix where stems clash (a.tif, a.tiff)."""
    stems = [p.stem for p in slides]
    names = [
        s if stems.count(s) == 1 else f"{s}_{p.suffix.lstrip('.')}"
        for s, p in zip(stems, slides, strict=True)
    ]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(None, f"two slides would both write outputs named {dup!r}: rename one")
    return names


class TrackedSlide(Slide):
    """A `Slide` that records which stored tiles its reads needed (`touched`), so decode
    amplification = tiles decoded / distinct tiles needed can be reported per slide."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.touched: set[int] = set()

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        tiled = self.tiled_level(level)
        if tiled is not None:
            self.touched.update((level << 40) + t for t in tiled.tiles_covering(x, y, w, h))
        return super()._read_level(level, x, y, w, h)


@dataclass
class SlideJob:
    """One slide to segment: its grid (cols, rows) of cells, the cells on tissue, the geometry."""

    name: str
    slide: Slide
    grid: tuple[int, int]
    cells: np.ndarray  # (N, 2) int64 (row, col), row-major
    geometry: TileGeometry

    @property
    def cell_side(self) -> float:
        """Level-0 pixels per cell."""
        return self.geometry.footprint(self.slide.mpp)


def plan_slide(
    slide: Slide,
    view: View,
    name: str,
    min_tissue: float = 0.0,
    use_tissue: bool = True,
    margin: int = 0,
) -> SlideJob:
    """The grid of `view`'s geometry over `slide` (each tile read and predicted with `margin`
    extra pixels on each side), keeping cells with tissue fraction > min_tissue."""
    geometry = view.geometry.with_margin(margin)
    rows, cols = geometry.grid(slide.dimensions, slide.mpp)
    if use_tissue:
        mask, mask_mpp = tissue_mask(slide)
        frac = tissue_fraction(
            mask, mask_mpp, slide.mpp, geometry.stride, geometry.mpp, dimensions=slide.dimensions
        )[:rows, :cols]
        keep = frac > min_tissue
    else:
        keep = np.ones((rows, cols), bool)
    cells = np.argwhere(keep).astype(np.int64)  # row-major
    return SlideJob(name, slide, (cols, rows), cells, geometry)


class _NoLabels:
    """Views read labels alongside images; inference has none."""

    def read(self, location, size, mpp=None) -> np.ndarray:
        return np.zeros((int(size[1]), int(size[0])), np.uint8)


class TileDataset(Dataset):
    """Every tissue cell of `jobs`, slide after slide, each through `view` at the output corner
    of its job's geometry (a geometry with a margin reads through the view widened by it)."""

    def __init__(self, jobs: list[SlideJob], view: View):
        self.jobs = jobs
        margins = {(j.geometry.output - view.geometry.output) // 2 for j in jobs}
        if len(margins) > 1:
            raise ValueError(f"jobs planned with different margins {sorted(margins)}")
        self.margin = margins.pop() if margins else 0
        m = self.margin
        self.view = dataclasses.replace(view, size=view.size + 2 * m) if m else view
        g = self.view.geometry
        for job in jobs:
            if (g.input, g.output) != (job.geometry.input, job.geometry.output):
                raise InputError(
                    None,
                    f"{type(view).__name__} widened by {m} px reads {g.input}² and predicts "
                    f"{g.output}², but its tiles need {job.geometry.input}² and "
                    f"{job.geometry.output}²: its size does not set both (no --overlap for it)",
                )
        counts = [len(j.cells) for j in jobs]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        j = int(np.searchsorted(self.offsets, i, side="right") - 1)
        job = self.jobs[j]
        k = i - int(self.offsets[j])
        start = time.perf_counter()
        row, col = (int(v) for v in job.cells[k])
        slide = job.slide
        location = job.geometry.output_corner(row, col, slide.mpp)
        slide.handle  # noqa: B018 - open here, so the counters below are this process's
        decoded = slide.tile_stats.decoded
        touched = getattr(slide, "touched", None)
        if touched is not None:
            touched.clear()
        views, _, *rest = self.view.read(slide, _NoLabels(), location)
        image = torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2)
        sample = {
            "image": image[0] if image.shape[0] == 1 else image,
            "meta": {
                "job": j,
                "row": row,
                "col": col,
                "output": job.geometry.output,  # the label grid the writer expects
                "decoded": slide.tile_stats.decoded - decoded,
                "tiles": np.fromiter(touched or (), np.int64),
            },
        }
        for key, arr in (rest[0] if rest else {}).items():  # e.g. RAZN's zoomed fields
            if np.ndim(arr) == 3:  # images only: label extras are the dummy labels above
                sample[key] = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        sample["meta"]["read_seconds"] = time.perf_counter() - start
        return sample


def collate(items: list[dict]) -> dict:
    """Default collation of the images; ``meta`` stays numpy (one array per field, the tile
    lists a list): from a worker each tensor costs a shared-memory file and a socket round
    trip, ~1 ms a batch per field, while small arrays travel inside the pickle."""
    metas = [item.pop("meta") for item in items]
    batch = default_collate(items)
    batch["meta"] = {k: np.array([m[k] for m in metas]) for k in metas[0] if k != "tiles"}
    batch["meta"]["tiles"] = [m["tiles"] for m in metas]
    return batch


class WholeSlideData(pl.LightningDataModule):
    """Slides -> tiles for `trainer.predict`; the slides are split over DDP ranks.

    Args:
        slides: slide files.
        out_dir: where outputs go (slides already complete there are skipped with `resume`).
        view: the method's view (from its checkpoint).
        mpp: level-0 mpp for slides without (or with a wrong) one in their metadata.
        min_tissue: segment cells whose Otsu tissue fraction exceeds this (0 = any tissue).
        use_tissue: False segments every cell of the grid.
        margin: extra context in pixels on each side of a target (cropped from the output).
        resume: skip slides whose outputs are all present.
        pad_value: grey level outside the slide, as in training (DMMN: 0, the paper).
        claim: ``claim(name) -> bool`` takes a slide for this process (False: another has it,
            skip it; see lightning_modules.outputs.claims).
        skip_bad: a slide whose planning fails is recorded in `failures` and left out,
            instead of stopping the run.
        names: output name per slide (default: `output_names`; a batch passes the names of
            the whole batch when it runs a subset of it).
    """

    def __init__(
        self,
        slides: list[str | Path],
        out_dir: str | Path,
        view: View,
        mpp: float | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        min_tissue: float = 0.0,
        use_tissue: bool = True,
        margin: int = 0,
        resume: bool = False,
        pad_value: int = 255,
        claim=None,
        skip_bad: bool = False,
        names: list[str] | None = None,
    ):
        super().__init__()
        self.slides = [Path(s) for s in slides]
        self.names = list(names) if names is not None else output_names(self.slides)
        self.out_dir = Path(out_dir)
        self.view = view
        self.mpp = mpp
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.min_tissue, self.use_tissue = float(min_tissue), bool(use_tissue)
        self.margin, self.resume = int(margin), bool(resume)
        self.pad_value = int(pad_value)
        self.claim, self.skip_bad = claim, bool(skip_bad)
        self.jobs: list[SlideJob] = []
        self.skipped: list[str] = []
        self.claimed: list[str] = []  # taken by another process
        self.failures: list[tuple[str, str, str]] = []  # (slide, stage, reason)

    def _assignment(self) -> list[list[int]]:
        """Slides still to do, spread over ranks by area (largest first to the least loaded)."""
        world = self.trainer.world_size if self.trainer else 1
        todo, skipped, claimed = [], [], []
        for i, name in enumerate(self.names):
            if self.resume and is_done(self.out_dir, name):
                skipped.append(i)
            elif self.claim is not None and not self.claim(name):
                claimed.append(i)
            elif self.claim is not None and self.resume and is_done(self.out_dir, name):
                skipped.append(i)  # finished by another process just now
            else:
                todo.append(i)
        self.skipped = [self.names[i] for i in skipped]
        self.claimed = [self.names[i] for i in claimed]
        areas = {i: np.prod(Slide(self.slides[i], mpp=self.mpp).dimensions) for i in todo}
        ranks: list[list[int]] = [[] for _ in range(world)]
        load = [0] * world
        for i in sorted(todo, key=lambda i: -areas[i]):
            r = int(np.argmin(load))
            ranks[r].append(i)
            load[r] += int(areas[i])
        return ranks

    def setup(self, stage: str | None = None) -> None:
        if self.jobs:
            return
        strategy = self.trainer.strategy if self.trainer else None
        # rank 0 decides, before anyone writes, so every rank sees the same plan
        plan = self._assignment() if strategy is None or strategy.is_global_zero else None
        if strategy is not None and self.trainer.world_size > 1:
            plan = strategy.broadcast(plan, src=0)
            self.skipped = strategy.broadcast(self.skipped, src=0)
            self.claimed = strategy.broadcast(self.claimed, src=0)
        rank = self.trainer.global_rank if self.trainer else 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for i in sorted(plan[rank]):
            try:
                slide = TrackedSlide(self.slides[i], mpp=self.mpp, pad_value=self.pad_value)
                job = plan_slide(
                    slide, self.view, self.names[i], self.min_tissue, self.use_tissue, self.margin
                )
            except InputError as err:
                if not self.skip_bad:
                    raise
                self.failures.append((str(self.slides[i]), "plan", str(err)))
                continue
            self.jobs.append(job)

    def predict_dataloader(self) -> DataLoader:
        cache = shared_cache(self.jobs, self.num_workers)
        device = getattr(getattr(self.trainer, "strategy", None), "root_device", None)
        return DataLoader(
            TileDataset(self.jobs, self.view),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            worker_init_fn=None if cache is None else functools.partial(_read_through, cache),
            pin_memory=device is not None and device.type == "cuda",
        )

    # host -> device copy time, for the per-stage timings of `SlideWriter`
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        self.transfer_started = time.perf_counter()
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        self.transfer_seconds = time.perf_counter() - self.transfer_started
        return batch


def shared_cache(jobs: list[SlideJob], num_workers: int) -> SharedTileCache | None:
    """One decoded-tile cache for all `num_workers` DataLoader workers (None without workers),
    as large as their own caches would be together (``WSISEG_TILE_CACHE_MB`` each), with slots
    for the largest tile of the slides' levels (up to 4 MiB: larger strips stay per process)."""
    mb = float(os.environ.get("WSISEG_TILE_CACHE_MB", "512"))
    if num_workers < 1 or mb <= 0 or multiprocessing.get_start_method() != "fork":
        return None  # (spawned workers would not inherit the table: private caches then)
    sizes = [
        level.tile_bytes
        for job in jobs
        for i in range(job.slide.level_count)
        if (level := job.slide.tiled_level(i)) is not None and level.tile_bytes <= 4 * 2**20
    ]
    if not sizes:
        return None
    return SharedTileCache(int(mb * 2**20) * num_workers, max(sizes))


def _read_through(cache: SharedTileCache, worker_id: int) -> None:
    use_shared_cache(cache)
