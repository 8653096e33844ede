"""One exception type for bad user input, so the CLI can print one line and exit non-zero."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input that the user can fix: the message names the file and what is wrong."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
