"""Tiny checkpoints made through the real `wsiseg fit`, once per test session.

`wsiseg segment` and `wsiseg evaluate` need a checkpoint as users have them (with the model's
class path and the view saved by the CLI). One optimizer step is enough: the tests check
geometry, files and agreement between code paths, not accuracy. Checkpoints are cached under
pytest's session base folder, so test modules share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from lightning_modules.cli.main import main
from tests.cli_args import experiment_args, short_train


class Spec(NamedTuple):
    """A cached checkpoint: its folder name, the experiment, the test overlay, extra options."""

    name: str
    exp: str
    tiny: str
    extra: tuple[str, ...] = ()


#: DMMN-M3 at 20x, DMMN's own geometry (256² targets in a 1024² field), widths x1/16.
DMMN_20X = Spec("dmmn_20x", "dmmn_m3", "tiny.yaml", ("--model.init_args.width", "0.0625"))
#: DSMN-S2 (one U-Net) at 5x (targets 4x wider, 16x fewer): cheap whole-slide runs.
DMMN_5X = Spec(
    "dmmn_s2_5x",
    "dmmn_m3",
    "tiny.yaml",
    (
        *("--model.init_args.width", "0.0625", "--model.init_args.arch", "s2"),
        *("--data.init_args.view.init_args.magnification", "5"),
    ),
)
#: RAZN (one zoom level) on 64² fields at 5x, width x1/16 (tests/conf/razn_tiny.yaml).
RAZN_5X = Spec("razn_5x", "razn", "razn_tiny.yaml")


def tiny_checkpoint(base: Path, data_root: Path, spec: Spec = DMMN_20X) -> Path:
    """`last.ckpt` of a one-step run of `spec` on `data_root` (trained on first use)."""
    out = Path(base) / "ckpts" / spec.name
    ckpt = out / spec.exp / "version_0" / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt
    extra = (*short_train(train_batches=1), *spec.extra)
    rc = main(experiment_args("fit", spec.exp, data_root, out, tiny=spec.tiny, extra=extra))
    assert rc == 0 and ckpt.is_file(), f"training the test checkpoint failed (rc {rc})"
    return ckpt
