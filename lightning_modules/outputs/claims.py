"""Per-slide claims, so several `wsiseg segment` processes can share one output folder.

A claim is an exclusive ``fcntl.flock`` on ``OUT/.wsiseg-claims/NAME.lock``, held from planning
until the process ends. The kernel drops it when its holder dies (even by SIGKILL), so a crashed
run never blocks the slide (its empty lock file stays and is simply locked again). A holder
deletes its lock file before it lets go, so a claimer checks that the file it locked is still
the one at that path (same inode), else tries again: two processes never both hold a claim.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

FOLDER = ".wsiseg-claims"


class Claims:
    """The slides this process has claimed in `out_dir` (one open lock file each)."""

    def __init__(self, out_dir: str | Path):
        self.folder = Path(out_dir) / FOLDER
        self._held: dict[str, int] = {}

    def claim(self, name: str) -> bool:
        """Claim slide output `name`; False when another live process holds it."""
        if name in self._held:
            return True
        path = self.folder / f"{name}.lock"
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was just removed by a releasing process
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder had just deleted: try the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
        self._held[name] = fd
        return True

    def release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is None:
            return
        (self.folder / f"{name}.lock").unlink(missing_ok=True)  # still ours: we hold the lock
        os.close(fd)  # closing the only descriptor drops the lock
        try:
            self.folder.rmdir()  # the last claim gone: leave no trace
        except OSError:
            pass

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)
