"""The `wsiseg` command: Lightning's fit/validate/test/predict plus the suite's own tools.

Bad input raises `InputError`; here it becomes one line on stderr and a non-zero exit. The
traceback is shown only with `--debug` (or WSISEG_DEBUG=1).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from datamodules.errors import InputError

LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI: --config experiments/<exp>.yaml)",
    "validate": "run one validation epoch on a checkpoint",
    "test": "evaluate a checkpoint on the test split",
    "predict": "run predict_step over a DataModule's predict split",
    "train": "fit, test the best checkpoint and write a results table (make train)",
}


CMD = "lightning_modules.cli.commands."


def _tool_commands() -> dict:
    """Extra subcommands: name -> (module, one-line help). Imported lazily to keep --help fast."""
    return {
        "synth": (CMD + "synth", "generate the synthetic benchmark slides"),
        "info": (CMD + "info", "describe a slide (and its annotations)"),
        "compare": (CMD + "compare", "one table + bar plot of finished runs"),
        "study": (CMD + "study", "experiments x seeds: run, then intervals and claim verdicts"),
        "segment": (CMD + "segment", "segment whole slides with a checkpoint"),
        "evaluate": (CMD + "evaluate", "score a predicted mask on the slide"),
    }


def _usage() -> str:
    lines = [
        "usage: wsiseg [--debug] COMMAND [options]",
        "",
        "Whole-slide-image segmentation experiments (DMMN, DA-RefineNet, RAZN, smp baselines).",
        "",
        "training and evaluation (PyTorch Lightning CLI; models and data chosen by class_path):",
    ]
    lines += [f"  {name:<10} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in _tool_commands().items()]
    lines += [
        "",
        "options:",
        "  --debug    show the full traceback when something fails",
        "",
        "examples:",
        "  wsiseg fit --config experiments/dmmn_m3.yaml",
        "  wsiseg synth --out data/synthetic",
        "  wsiseg info ../shared/data/real/small_HE.svs",
        "",
        "Run 'wsiseg COMMAND --help' for a command's options.",
    ]
    return "\n".join(lines)


_SIGTERM = {"received": False}


def _on_sigterm(signum, frame) -> None:
    """Remember a SIGTERM. Inside a Lightning run, Lightning's own handler calls this one too
    (and stops the loop); outside one, this is the only handler: stop now, as the default would."""
    _SIGTERM["received"] = True
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("WSISEG_DEBUG") == "1"
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command in LIGHTNING_COMMANDS:
            signal.signal(signal.SIGTERM, _on_sigterm)
            from lightning_modules.cli.lightning_cli import run_lightning, run_train
            from lightning_modules.cli.resume import release_unused_claims

            try:
                if command == "train":
                    return run_train(rest)
                run_lightning([command, *rest])
                return 0
            finally:
                release_unused_claims()
        tools = _tool_commands()
        if command not in tools:
            print(f"wsiseg: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
            return 2
        import importlib

        module = importlib.import_module(tools[command][0])
        return int(module.main(rest) or 0)
    except InputError as err:
        if debug:
            traceback.print_exc()
        print(f"wsiseg {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsiseg {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as err:  # Lightning stops on SIGTERM with an exit(None), i.e. status 0
        stopped = type(err).__name__ == "SIGTERMException" or _SIGTERM["received"]
        if command not in LIGHTNING_COMMANDS or not stopped:
            raise
        print(
            f"wsiseg {command}: stopped by SIGTERM; continue the run with --ckpt_path last",
            file=sys.stderr,
        )
        return 143
    except Exception as err:  # an unexpected failure: still one line unless --debug
        if command in LIGHTNING_COMMANDS and _SIGTERM["received"]:
            # SIGTERM to the whole process group (kill -- -PGID, scancel): the DataLoader
            # workers die first, so the loop fails before it can stop; still a stop, not a crash
            print(
                f"wsiseg {command}: stopped by SIGTERM (its DataLoader workers were terminated); "
                "continue the run with --ckpt_path last",
                file=sys.stderr,
            )
            return 143
        cause = _input_error_cause(err)
        if cause is not None:  # e.g. raised in a model's __init__, wrapped by jsonargparse
            if debug:
                traceback.print_exc()
            print(f"wsiseg {command}: error: {_one_line(cause)}", file=sys.stderr)
            return 2
        if debug:
            traceback.print_exc()
        where = "" if debug else " (run with --debug for the traceback)"
        print(f"wsiseg {command}: failed: {_describe(err)}{where}", file=sys.stderr)
        return 1


def _input_error_cause(err: BaseException) -> InputError | None:
    """The InputError an exception was raised from, if any (LightningCLI's parser re-raises
    errors from instantiating a class_path as its own ValueError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _one_line(err: BaseException) -> str:
    """A message as one line (tiffslide, jsonargparse and others put line breaks in theirs)."""
    return "; ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())


def _describe(err: BaseException) -> str:
    """``Type: message`` in one line. An exception a DataLoader worker raised comes back as its
    type with the worker's whole traceback as message: that becomes the original last line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 2 and lines[1].startswith("Original Traceback"):
        where = lines[0].removeprefix(f"Caught {type(err).__name__} ").rstrip(".")
        return f"{lines[-1]} ({where})"
    text = f"{type(err).__name__}: {_one_line(err)}".rstrip(": ")
    if isinstance(err, EOFError | ConnectionError) and _raised_in_dataloader(err):
        text = f"a DataLoader worker died while handing over a batch ({text})"
    died = "killed by signal" in text or "exited unexpectedly" in text or "died" in text
    if "DataLoader worker" in text and died:
        text += " (out of memory? try fewer --data.init_args.num_workers or a smaller batch)"
    return text


def _raised_in_dataloader(err: BaseException) -> bool:
    """Whether `err` came out of a DataLoader's iterator (a worker killed mid-transfer shows up
    as a bare EOFError or ConnectionResetError there)."""
    frames = traceback.extract_tb(err.__traceback__)
    return any(f.filename.replace("\\", "/").endswith("utils/data/dataloader.py") for f in frames)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
