"""`ResumeCheckpoint`: a resumable checkpoint in mid-epoch, and one when stopped by SIGTERM.

The experiments' monitored `ModelCheckpoint` saves (best val mIoU + ``last.ckpt``) only after
validation, so a job killed mid-epoch would lose the whole epoch. This one writes
``last-step.ckpt`` (the full trainer state: weights, every optimizer and LR scheduler, loop
counters, the other callbacks' state) every ``every_n_batches`` training batches and/or every
``every_minutes``, and once more when Lightning stops on SIGTERM (it finishes the running batch
first). ``--ckpt_path last`` picks the newest of ``last.ckpt`` and ``last-step.ckpt``.

Batches, not Lightning's global step: under manual optimisation (RAZN, three optimizers) the
global step counts optimizer steps, 0 to 3 per batch, and ``global_step % n`` would skip saves.
Other exceptions (a NaN loss, a crash) do not save: the last checkpoint stays the last good one.
Under DDP it also replaces Lightning's SIGTERM handler, which broadcasts to the other ranks from
inside the signal handler and deadlocks when the signal lands during a collective: here a handler
only takes note, and the ranks agree (one all-reduce) at the end of every training batch.
"""

from __future__ import annotations

import os
import time
from weakref import proxy

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from datamodules.errors import InputError
from lightning_modules.callbacks import rng


class ResumeCheckpoint(ModelCheckpoint):
    """``last-step.ckpt`` every ``every_n_batches`` training batches (None: off), every
    ``every_minutes`` of training (None: off) and on SIGTERM; ``dirpath`` as in
    `ModelCheckpoint` (default: the run's ``checkpoints/``)."""

    CHECKPOINT_NAME_LAST = "last-step"

    def __init__(
        self,
        every_n_batches: int | None = None,
        every_minutes: float | None = 10.0,
        dirpath: str | None = None,
    ) -> None:
        if every_n_batches is not None and int(every_n_batches) < 1:
            raise InputError(None, f"every_n_batches must be >= 1 or null, got {every_n_batches}")
        if every_minutes is not None and not float(every_minutes) > 0:
            raise InputError(None, f"every_minutes must be > 0 or null, got {every_minutes}")
        super().__init__(
            dirpath=dirpath,
            monitor=None,
            save_top_k=0,
            save_last=True,
            every_n_epochs=0,
            enable_version_counter=False,
        )
        self.every_n_batches = None if every_n_batches is None else int(every_n_batches)
        self.every_seconds = None if every_minutes is None else 60.0 * float(every_minutes)
        self._last_save_time = time.monotonic()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_batches=self.every_n_batches, every_seconds=self.every_seconds
        )

    def state_dict(self) -> dict:
        """Also the random-number state (in every checkpoint: Lightning saves each callback's
        state), so a resumed run draws what the uninterrupted one would (callbacks/rng.py)."""
        return {**super().state_dict(), "rng": rng.capture()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self._rng_to_restore = state_dict.pop("rng", None)
        super().load_state_dict(state_dict)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._sigterm, self._agree_on_sigterm = False, stage == "fit" and trainer.world_size > 1
        self._trainer_for_signal = trainer
        if self._agree_on_sigterm:  # before Lightning registers its handler (Trainer._run)
            trainer._signal_connector._sigterm_notifier_fn = self._note_sigterm

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if getattr(self, "_agree_on_sigterm", False):
            vars(trainer._signal_connector).pop("_sigterm_notifier_fn", None)  # Lightning's again
            self._agree_on_sigterm = False

    def _note_sigterm(self, signum, frame) -> None:
        """DDP: only note SIGTERM here (and pass it on to the other ranks, as Lightning does).
        Lightning's own handler broadcasts to the ranks from inside the signal handler, which
        deadlocks when the signal lands during another collective (DDP's all-reduce in backward)."""
        launcher = self._trainer_for_signal.strategy.launcher
        if not self._sigterm and launcher is not None:
            launcher.kill(signum)
        self._sigterm = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_save_time = time.monotonic()
        state, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if state is not None:  # as late as possible: setup may draw after the restore
            rng.restore(state)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        batches = trainer.fit_loop.total_batch_idx + 1
        due = self.every_n_batches is not None and batches % self.every_n_batches == 0
        late = (
            self.every_seconds is not None
            and trainer.is_global_zero
            and time.monotonic() - self._last_save_time >= self.every_seconds
        )
        if getattr(self, "_agree_on_sigterm", False):
            # One all-reduce: rank 0's clock and any rank's SIGTERM decide for every rank, at
            # the same batch (Lightning then stops all of them after it).
            flags = torch.tensor([self._sigterm, late], device=trainer.strategy.root_device)
            flags = trainer.strategy.reduce(flags.float(), reduce_op="sum")
            sigterm, late = bool(flags[0] > 0), bool(flags[1] > 0)
            if sigterm:
                trainer._signal_connector.received_sigterm = True
        if (due or late) and not self._should_skip_saving_checkpoint(trainer):
            self._save_resume_point(trainer)

    # Epoch ends and the end of training are the monitored checkpoint's (last.ckpt): no copy here.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer, pl_module) -> None:
        pass

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and not self._should_skip_saving_checkpoint(
            trainer
        ):
            self._save_resume_point(trainer)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Write ``<name>.partial``, then rename: a kill during the write leaves the previous
        checkpoint intact (Lightning's own save copies across file systems, not atomically)."""
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _save_resume_point(self, trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_save_time = time.monotonic()
