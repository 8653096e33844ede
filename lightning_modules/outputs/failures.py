"""``OUT/failures.csv``: the slides of a batch that could not be segmented, and why.

One row per slide (slide, stage, reason in one line). Every run of `wsiseg segment` on a folder
updates it under a lock: rows of slides it wrote complete are dropped, its own failures replace
older rows of the same slide, other rows (another process's, an earlier run's) stay. A folder
whose last runs all succeeded has no failures file.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from pathlib import Path

NAME = "failures.csv"
FIELDS = ("slide", "stage", "reason")


def one_line(err: BaseException | str, slide: str | Path | None = None) -> str:
    """The error as one line, without a leading ``<slide>: `` (the row names the slide)."""
    text = "; ".join(s.strip() for s in str(err).strip().splitlines() if s.strip())
    prefix = f"{slide}: "
    return text[len(prefix) :] if slide is not None and text.startswith(prefix) else text


def read(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / NAME
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def update(out_dir: Path, failed: list[tuple[str, str, str]], done: list[str]) -> Path | None:
    """Merge this run's `failed` rows and `done` slides into the file; its path, or None when
    no failure is left (the file is then removed)."""
    out_dir = Path(out_dir)
    path = out_dir / NAME
    if not failed and not path.exists():
        return None  # nothing to record or clear
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f".{NAME}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes finishing at once
        mine = {str(s) for s, _, _ in failed} | {str(s) for s in done}
        rows = [r for r in read(out_dir) if r.get("slide") not in mine]
        rows += [dict(zip(FIELDS, (str(s), stage, one_line(r, s)), strict=True))
                 for s, stage, r in failed]  # fmt: skip
        if not rows:
            path.unlink(missing_ok=True)
            return None
        buf = io.StringIO()
        writer = csv.DictWriter(buf, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        tmp = path.with_name(NAME + ".part")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, path)
    return path
