"""One exception type for bad user input, so the CLI can print one line and exit non-zero."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input that the user can fix: the message names the file and what is wrong.

    Also constructible from one message, as a DataLoader re-raises a worker's exception in the
    main process (``InputError(text)``, text = "Caught InputError in DataLoader worker process N.
    Original Traceback ..."), so a file that goes bad mid-run is still a one-line input error.
    """

    def __init__(self, path: str | Path | None, problem: str | None = None):
        if problem is None:
            path, problem = None, _from_worker(str(path))
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def _from_worker(text: str) -> str:
    """The original message of a worker's re-raised traceback text, and which worker raised it."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2 or "Original Traceback" not in text:
        return text
    where = lines[0].removeprefix("Caught ").removeprefix("InputError ").rstrip(".")
    last = lines[-1].split("InputError: ", 1)[-1]
    return f"{last} (read {where})" if where else last
