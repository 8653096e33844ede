"""Per-slide claims, so several `wsiseg segment` processes can share one output folder.

A claim is an exclusive ``fcntl.flock`` on ``OUT/.wsiseg-claims/NAME.lock``, held from planning
until the process ends. The kernel drops it when its holder dies (even by SIGKILL), so a crashed
run never blocks the slide; nothing needs cleaning up. Lock files are never deleted: unlinking a
lock file while another process waits on it would let two processes hold "the same" lock.
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
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
        self._held[name] = fd
        return True

    def release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the lock

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)
