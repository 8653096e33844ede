"""Is this TIFF a usable slide? Checks made once when a `Slide` opens a file, so a truncated,
empty or corrupt file is refused in one line naming it, before any work starts on it.

tifffile only logs (it does not raise) when a page of a pyramid cannot be read, and hands back
a shorter pyramid; `tifffile_log` turns that into an error and keeps its log lines off a
refused file's one-line message.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from datamodules.errors import InputError


class _HeldLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def tifffile_log(path: Path):
    """Hold tifffile's log while a file is opened: a refused file gets one line (ours), and an
    unreadable page of the image series (truncated or corrupt IFDs, which tifffile only logs
    before it hands back a shorter pyramid) is refused; an accepted file's messages pass on."""
    log = logging.getLogger("tifffile")
    held, propagate = _HeldLog(), log.propagate
    log.addHandler(held)
    log.propagate = False
    try:
        yield
        for record in held.records:
            message = record.getMessage()
            if "series raised TiffFileError" in message:
                problem = message.rpartition("raised ")[2]
                raise InputError(path, f"file is truncated or corrupt ({problem})")
    except BaseException:
        held.records = []
        raise
    finally:
        log.removeHandler(held)
        log.propagate = propagate
        for record in held.records:
            log.handle(record)


def check_complete(path: Path, handle) -> None:
    """Refuse truncated and empty files up front: an image series with pixels, every pyramid
    level's IFD and every tile inside the file, and no level whose tiles are all missing."""
    size = path.stat().st_size
    tif = handle.ts_tifffile
    if not tif.pages or not tif.series:
        raise InputError(path, "TIFF holds no image (no pages)")
    for page in tif.pages:
        if any(offset >= size for offset in page.subifds or ()):
            raise InputError(path, f"file is truncated ({size} bytes; a pyramid level lies beyond)")
    series = tif.series[0]
    if 0 in series.shape[:2] or 0 in tuple(handle.dimensions):
        raise InputError(path, f"TIFF image is {series.shape[1]}x{series.shape[0]} pixels: no data")
    for level in series.levels:
        for page in level.pages:
            if page is None or not hasattr(page, "dataoffsets"):
                continue
            offsets, counts = page.dataoffsets, page.databytecounts
            if not offsets or not any(counts):
                raise InputError(path, "TIFF has no image data (no tiles or strips in a level)")
            end = max(o + c for o, c in zip(offsets, counts, strict=False))
            if end > size:
                raise InputError(path, f"file is truncated ({size} bytes, image data needs {end})")
