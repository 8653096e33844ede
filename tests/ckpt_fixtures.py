"""Tiny DMMN checkpoints made through the real `wsiseg fit`, once per test session.

`wsiseg segment` and `wsiseg evaluate` need a checkpoint as users have them (with the model's
class path and the view saved by the CLI). One optimizer step is enough: the tests check
geometry, files and agreement between code paths, not accuracy. Checkpoints are cached under
pytest's session base folder, so test modules share them.
"""

from __future__ import annotations

from pathlib import Path

from lightning_modules.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "dmmn_m3.yaml"
TRAINER = ROOT / "experiments" / "trainer" / "cpu.yaml"
TINY = ROOT / "tests" / "conf" / "tiny.yaml"

#: 20x, DMMN's own geometry (256² targets in a 1024² field), widths x1/16.
DMMN_20X = ("dmmn_20x", ["--model.init_args.width", "0.0625"])
#: DSMN-S2 (one U-Net) at 5x (targets 4x wider, 16x fewer): cheap whole-slide runs.
DMMN_5X = (
    "dmmn_s2_5x",
    [
        *("--model.init_args.width", "0.0625", "--model.init_args.arch", "s2"),
        *("--data.init_args.view.init_args.magnification", "5"),
    ],
)


def tiny_checkpoint(base: Path, data_root: Path, spec=DMMN_20X) -> Path:
    """`last.ckpt` of a one-step DMMN-M3 run on `data_root` (trained on first use)."""
    name, extra = spec
    out = Path(base) / "ckpts" / name
    ckpt = out / "dmmn_m3" / "version_0" / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt
    args = [
        "fit",
        *("--config", str(EXPERIMENT), "--config", str(TRAINER), "--config", str(TINY)),
        *("--data.init_args.root", str(data_root)),
        *("--trainer.default_root_dir", str(out)),
        *("--trainer.logger.init_args.save_dir", str(out)),
        *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"),
        *("--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0"),
        *extra,
    ]
    rc = main(args)
    assert rc == 0 and ckpt.is_file(), f"training the test checkpoint failed (rc {rc})"
    return ckpt
