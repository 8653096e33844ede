"""`SlideWriter`: the predict-loop callback that turns tile predictions into per-slide files.

Batches arrive in the order of `WholeSlideData`'s plan (slide after slide, cells row-major), so
each slide is stitched as it streams: arg-max labels go tile by tile into a `GridStitcher`
feeding a `MaskTiffWriter` (bounded memory), and when a slide's last tile is in, its mask is
renamed into place and the overlay, GeoJSON and summary JSON are written (the JSON last, so
its presence means the slide is complete). Slides without tissue get an empty mask.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules.sampling.geometry import TileGeometry
from datamodules.wholeslide import SlideJob, output_paths
from lightning_modules.metrics import channel_argmax
from lightning_modules.outputs.mask_writer import GridStitcher, MaskTiffWriter
from lightning_modules.outputs.slide_files import write_geojson, write_json, write_overlay


def kept_labels(outputs: dict, geometry: TileGeometry) -> np.ndarray:
    """Mask values (class + 1, uint8) of the kept centre ``stride``² of each tile's output.

    Labels on another grid than the output (a predict_step that skips the base task's
    resizing) are resized to it by nearest neighbour first."""
    labels = outputs.get("labels")
    if labels is None:  # a predict_step with probabilities only (not switched off by this)
        labels = channel_argmax(outputs["probs"])
    side = geometry.output
    if tuple(labels.shape[-2:]) != (side, side):
        labels = F.interpolate(labels[:, None].float(), size=(side, side), mode="nearest")[:, 0]
    k, s = geometry.keep_offset, geometry.stride
    labels = labels[:, k : k + s, k : k + s].to(torch.uint8) + 1  # mask value = class + 1
    return labels.cpu().numpy()  # on a GPU: only the kept uint8 pixels come back


@dataclass
class _Open:
    """The slide being stitched and its running counters."""

    index: int
    job: SlideJob
    writer: MaskTiffWriter
    stitcher: GridStitcher
    start: float
    tiles: int = 0
    decoded: int = 0
    touched: set = field(default_factory=set)
    zoom: list = field(default_factory=list)
    stages: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


#: Per-stage seconds in the summary JSON: DataLoader workers' reads (CPU seconds summed over
#: tiles: workers run in parallel), waiting for a batch, host <-> device copies, predict_step
#: (on a GPU its kernels run asynchronously and are waited for by the copy back), stitching,
#: and the mask writer plus overlay/GeoJSON files.
STAGES = ("read", "wait", "transfer", "model", "stitch", "write")


class SlideWriter(pl.Callback):
    """Write mask TIFF, overlay PNG, GeoJSON and JSON per slide (see the module doc).

    Args:
        class_names, colors: the method's classes (mask value = class + 1; 0 = not segmented).
        info: run facts copied into every summary JSON (checkpoint, method, view, ...).
        progress: show a tiles/s progress bar (global rank 0).
    """

    def __init__(self, class_names, colors, info: dict[str, Any], progress: bool = True):
        self.class_names = [str(n) for n in class_names]
        self.colors = [tuple(int(v) for v in c) for c in colors]
        self.info = dict(info)
        self.progress = progress
        self.written: list[dict] = []
        self.finished: list[str] = []  # output names of the slides written complete
        self.failed: str | None = None  # the slide being stitched when the run failed
        self._cur: _Open | None = None
        self._next = 0
        self._bar = None

    # ------------------------------------------------------------------ hooks
    def on_predict_start(self, trainer, pl_module) -> None:
        self._probabilities = getattr(pl_module, "predict_probabilities", None)
        if self._probabilities is not None:
            pl_module.predict_probabilities = False  # labels are all this writer needs
        self._start(trainer, str(pl_module.device))

    def _start(self, trainer, device: str) -> None:
        data = trainer.datamodule
        self.jobs: list[SlideJob] = data.jobs
        self.out_dir, self.view, self.margin = data.out_dir, data.view, data.margin
        self.rank, self.world = trainer.global_rank, trainer.world_size
        self.device = device
        self._next, self._cur = 0, None
        self._started = True
        self._clock = self._batch_end = time.perf_counter()
        from tqdm.auto import tqdm

        total = sum(len(j.cells) for j in self.jobs)
        self._bar = tqdm(
            total=total,
            unit="tile",
            desc=f"segment {len(self.jobs)} slide(s)"
            + (f" [rank 0/{self.world}]" * (self.world > 1)),
            disable=not (self.progress and trainer.is_global_zero),
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0):
        self._batch_start = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        t0 = time.perf_counter()
        meta = batch["meta"]
        jobs, rows, cols = (meta[k].tolist() for k in ("job", "row", "col"))
        labels = kept_labels(outputs, self.jobs[jobs[0]].geometry) if jobs else None
        copied = time.perf_counter()
        transfer = getattr(trainer.datamodule, "transfer_seconds", 0.0)
        batch_stages = {
            "wait": max(0.0, self._batch_start - self._batch_end - transfer),
            "transfer": transfer + copied - t0,
            "model": t0 - self._batch_start,
        }
        decoded = meta["decoded"].tolist()
        reads = meta["read_seconds"].tolist() if "read_seconds" in meta else [0.0] * len(jobs)
        zoom = outputs.get("zoom")
        zoom = None if zoom is None else torch.as_tensor(zoom).float().flatten().tolist()
        for i, j in enumerate(jobs):
            cur = self._switch_to(j)
            before, start = cur.writer.seconds, time.perf_counter()
            cur.stitcher.put(rows[i], cols[i], labels[i])
            written = cur.writer.seconds - before
            cur.stages["stitch"] += time.perf_counter() - start - written
            cur.stages["write"] += written
            cur.stages["read"] += reads[i]
            for k, v in batch_stages.items():
                cur.stages[k] += v / len(jobs)
            cur.tiles += 1
            cur.decoded += decoded[i]
            cur.touched.update(meta["tiles"][i].tolist())
            if zoom is not None:
                cur.zoom.append(zoom[i])
        if self._bar is not None:
            self._bar.update(len(jobs))
        self._batch_end = time.perf_counter()

    def finish(self, trainer, model) -> None:
        """Write what the predict loop did not: Lightning skips the loop (and its hooks) on a
        rank whose slides have no tissue at all, and those slides still get their outputs."""
        if not getattr(self, "_started", False):
            self._start(trainer, str(model.device))
            self._bar = None
        self.on_predict_end(trainer, model)

    def on_predict_end(self, trainer, pl_module) -> None:
        if getattr(self, "_probabilities", None) is not None:
            pl_module.predict_probabilities = self._probabilities
        if self._cur is not None:
            self._finish()
        while self._next < len(self.jobs):  # trailing slides without tissue
            self._open(self._next)
            self._finish()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if getattr(self, "_probabilities", None) is not None:
            pl_module.predict_probabilities = self._probabilities
        if self._cur is not None:
            self.failed = self._cur.job.name
            self._cur.writer.abort()
            self._cur = None
        if self._bar is not None:
            self._bar.close()

    # ------------------------------------------------------------------ slides
    def _switch_to(self, index: int) -> _Open:
        while self._cur is None or self._cur.index != index:
            if self._cur is not None:
                self._finish()
            if self._next > index:
                raise RuntimeError(f"tiles of slide {index} arrived out of order")
            self._open(self._next)
        return self._cur

    def _open(self, index: int) -> None:
        job = self.jobs[index]
        slide = job.slide
        values = ", ".join(f"{i + 1} = {n}" for i, n in enumerate(self.class_names))
        writer = MaskTiffWriter(
            output_paths(self.out_dir, job.name)["mask"],
            slide.dimensions,
            slide.mpp,
            description=f"wsiseg label mask of {slide.path.name} by {self.info.get('method')}; "
            f"values: 0 = not segmented, {values}",
        )
        stitcher = GridStitcher.for_geometry(writer, job.grid, job.geometry, slide.mpp)
        start = self._clock if index == 0 else time.perf_counter()
        self._cur = _Open(index, job, writer, stitcher, start)
        self._next = index + 1

    def _finish(self) -> None:
        cur, self._cur = self._cur, None
        job, slide = cur.job, cur.job.slide
        paths = output_paths(self.out_dir, job.name)
        start = time.perf_counter()
        try:
            cur.stitcher.finish()
            cur.writer.close()
        except BaseException:
            self.failed = job.name
            cur.writer.abort()
            raise
        w = cur.writer
        try:  # all four files or none: the overlay reads the slide, which may fail
            write_overlay(
                paths["overlay"], slide, w.lowres, w.lowres_ds, self.class_names, self.colors
            )
            write_geojson(
                paths["geojson"], w.lowres, w.lowres_ds, self.class_names, self.colors, slide.mpp
            )
            seconds = time.perf_counter() - cur.start
            cur.stages["write"] += time.perf_counter() - start
            summary = self._summary(cur, seconds, paths)
            write_json(paths["json"], summary)
        except BaseException:
            self.failed = job.name
            for p in paths.values():
                p.unlink(missing_ok=True)
            raise
        self.written.append(summary)
        self.finished.append(job.name)
        self._clock = time.perf_counter()
        where = f"[rank {self.rank}] " if self.world > 1 else ""
        if not cur.tiles:
            msg = f"{slide.path}: no tissue found; wrote an empty mask (all 0 = not segmented)"
            warnings.warn(msg, stacklevel=1)
            line = f"{where}{job.name}: no tissue, empty mask -> {paths['mask']}"
        else:
            line = (
                f"{where}{job.name}: {cur.tiles} tiles in {seconds:.1f} s "
                f"({cur.tiles / max(seconds, 1e-9):.1f} tiles/s) -> {paths['mask']}"
            )
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def _summary(self, cur: _Open, seconds: float, paths) -> dict:
        slide, counts = cur.job.slide, cur.writer.counts
        px_mm2 = (slide.mpp * 1e-3) ** 2
        areas = {n: float(counts[i + 1] * px_mm2) for i, n in enumerate(self.class_names)}
        needed = len(cur.touched)
        return {
            "slide": str(slide.path),
            **{k: str(p) for k, p in paths.items() if k != "json"},
            "dimensions": list(slide.dimensions),
            "mpp": slide.mpp,
            **self.info,
            "classes": self.class_names,
            "mask_values": {
                "0": "not segmented",
                **{str(i + 1): n for i, n in enumerate(self.class_names)},
            },
            "grid": list(cur.job.grid),
            "tiles": cur.tiles,
            "seconds": seconds,
            "seconds_per_tile": seconds / cur.tiles if cur.tiles else None,
            "tiles_per_second": cur.tiles / seconds if cur.tiles and seconds > 0 else None,
            "areas_mm2": areas,
            "segmented_mm2": float(counts[1 : len(self.class_names) + 1].sum() * px_mm2),
            "zoom_rate": float(np.mean(cur.zoom)) if cur.zoom else None,
            "tiles_decoded": cur.decoded,
            "tiles_needed": needed,
            "decode_amplification": cur.decoded / needed if needed and cur.decoded else None,
            "stage_seconds": {k: round(v, 4) for k, v in cur.stages.items()},
            "device": self.device,
            "rank": self.rank,
            "world_size": self.world,
        }
