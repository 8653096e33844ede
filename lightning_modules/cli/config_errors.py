"""Config mistakes (a misspelt key, a wrong type, a missing file) as one line naming the YAML.

jsonargparse reports them as a screenful of usage plus a nested message that names the key but
not the file it came from; with several ``--config`` overlays the user has to guess. The parser
below raises an `InputError` instead, which `wsiseg` prints as one line.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml
from pytorch_lightning.cli import LightningArgumentParser

from datamodules.errors import InputError


class WsisegArgumentParser(LightningArgumentParser):
    """Lightning's parser whose final parse error is an `InputError` (nested parsers, which
    jsonargparse runs with ``exit_on_error=False`` to try alternatives, behave as before)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            super().error(message, ex)
        args = list(getattr(self, "args", None) or [])
        path, text = explain(message, args, self._known_keys())
        raise InputError(path, text) from ex

    def _known_keys(self) -> list[str]:
        keys = [a.dest for a in self._actions]
        sub = getattr(self, "_subcommands_action", None)
        for parser in (getattr(sub, "_name_parser_map", None) or {}).values():
            keys += [a.dest for a in parser._actions]
        return keys


def config_files(args: list[str]) -> list[Path]:
    """The ``--config``/``-c`` files of a command line, in order."""
    out = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            out.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            out.append(Path(arg.split("=", 1)[1]))
    return out


def _keys(tree, prefix: str = "") -> set[str]:
    """Dotted paths of every key in a YAML tree, ``init_args`` left out (as jsonargparse says)."""
    found = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            name = str(key)
            path = prefix if name == "init_args" else f"{prefix}.{name}".lstrip(".")
            found.add(path)
            found |= _keys(value, path)
    elif isinstance(tree, list):
        for value in tree:
            found |= _keys(value, prefix)
    return found


def defining_file(key: str, files: list[Path]) -> Path | None:
    """The last config file that sets `key` (the one that took effect), if any."""
    hit = None
    for path in files:
        try:
            keys = _keys(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
        if key in keys:
            hit = path
    return hit


def explain(message: str, args: list[str], known: list[str]) -> tuple[Path | None, str]:
    """(file to blame, one-line problem) for a jsonargparse error message about `args`."""
    files = config_files(args)
    command = args[0] if args and not args[0].startswith("-") else "fit"
    missing = re.search(r"File does not exist: '([^']+)'", message)
    if missing:
        return Path(missing.group(1)), "config file not found"
    lines = [line.strip(" -") for line in message.splitlines() if line.strip()]
    detail = [
        line
        for line in lines[1:]
        if ("not accepted" in line or line.startswith(("Expected", "Given value:")))
        and "NoneType" not in line
    ]
    if any("Got value:" in line for line in detail):  # the bad value itself is named already
        detail = [line for line in detail if not line.startswith("Given value:")]
    # nested parsers (a class's init_args) name their key in steps: "model", then "optimizer"
    parser_keys = re.findall(r'Parser key "([^"]+)"', message)
    first = lines[0].rstrip(":") if lines else message
    if len(parser_keys) > 1:
        first = f'Parser key "{".".join(parser_keys)}"'
    text = "; ".join(dict.fromkeys([first, *detail]))
    option = re.findall(r"(?:does not accept option|Option) '([^']+)'", message)
    key = ".".join([*parser_keys, *option[-1:]])
    if option:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close and close[0] != key:
            text += f" (did you mean {close[0]!r}?)"
    given = [a.replace(".init_args.", ".") for a in args]
    on_command_line = any(a == f"--{key}" or a.startswith(f"--{key}=") for a in given)
    path = defining_file(key, files) if key and not on_command_line else None
    return path, text if path else f"{text} (see `wsiseg {command} --help`)"
