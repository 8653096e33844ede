"""The training split's patch order: a function of (seed, epoch), so runs and resumed runs agree.

`torch.utils.data.RandomSampler` with one generator draws epoch e's order from the generator's
state after e earlier epochs *in this process*: a run resumed at epoch 3 draws epoch 0's order
again, and under DDP Lightning wraps it in yet another shuffling sampler. `EpochSampler` draws
epoch e's order from a generator seeded with (seed, epoch) alone; it is a `DistributedSampler`,
so Lightning leaves it unwrapped under DDP and calls its `set_epoch` every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def epoch_order(n: int, num_samples: int, seed: int | list[int], epoch: int) -> list[int]:
    """`num_samples` of `range(n)` without replacement (``num_samples == n``: a permutation)."""
    keys = [int(k) for k in (seed if isinstance(seed, list | tuple) else [seed])]
    state = np.random.SeedSequence([*keys, int(epoch)]).generate_state(2, np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
    return torch.randperm(n, generator=generator)[:num_samples].tolist()


class EpochSampler(DistributedSampler):
    """Per epoch, `num_samples` dataset indices (default: all, shuffled) seeded by (seed, epoch),
    dealt round-robin to `num_replicas` ranks (padded by repeating the first ones, as
    `DistributedSampler` does, so every rank has as many).

    ``tag_seeds``: yield ``(index, seed)``, the seed for that sample's augmentation (see
    `sample_seeds`). ``resume_offset``: a callable giving (epoch, batches already trained in
    it) when a run resumes in the middle of an epoch, else None; the rank's share then starts
    after those batches, so the resumed run trains on the patches the interrupted one had not
    reached yet.
    """

    def __init__(
        self,
        dataset,
        num_samples: int | None = None,
        seed: int | list[int] = 0,
        num_replicas: int = 1,
        rank: int = 0,
        batch_size: int = 1,
        resume_offset: Callable[[], tuple[int, int] | None] | None = None,
        tag_seeds: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True)
        n = len(dataset)
        self.draw = n if num_samples is None else min(int(num_samples), n)
        self.num_samples = -(-self.draw // num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas
        self.order_seed = seed
        self.batch_size = int(batch_size)
        self.resume_offset = resume_offset
        self.tag_seeds = bool(tag_seeds)

    def indices(self, epoch: int) -> list[int]:
        """This rank's share of epoch `epoch`, in order."""
        order = epoch_order(len(self.dataset), self.draw, self.order_seed, epoch)
        order += order[: self.total_size - len(order)]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.epoch, 0
        resumed = self.resume_offset() if self.resume_offset is not None else None
        if resumed is not None:
            epoch, batches = resumed
            skip = batches * self.batch_size
        order = self.indices(epoch)
        if not self.tag_seeds:
            return iter(order[skip:])
        seeds = self.sample_seeds(epoch)
        return iter(list(zip(order, seeds, strict=True))[skip:])

    def sample_seeds(self, epoch: int) -> list[int]:
        """One seed per position of this rank's share of `epoch`, from (seed, epoch, rank)
        alone: a sample's augmentation does not depend on which worker draws it, or whether
        the run was resumed (`tag_seeds` yields ``(index, seed)`` pairs)."""
        keys = [int(k) for k in (self.order_seed if isinstance(self.order_seed, list | tuple)
                                 else [self.order_seed])]  # fmt: skip
        sequence = np.random.SeedSequence([*keys, int(epoch), self.rank, 1])
        return [int(s) >> 1 for s in sequence.generate_state(self.num_samples, np.uint32)]

    def __len__(self) -> int:
        return self.num_samples


def resume_offset(trainer) -> tuple[int, int] | None:
    """(epoch, batches already trained in it) for the epoch `trainer` is about to iterate.

    Read when the loader's iterator starts, which Lightning does at different points: with
    workers, for the first (or resumed) epoch before its loops reset their counters; without
    workers, lazily, after. Before a reset the counters of a checkpoint taken on the epoch's
    last batch still say "last batch": the next epoch starts from its beginning.
    """
    fit = getattr(trainer, "fit_loop", None)
    if fit is None:
        return None
    progress = fit.epoch_loop.batch_progress
    epoch, done = int(trainer.current_epoch), int(progress.current.ready)
    if progress.is_last_batch:
        return epoch + 1, 0
    return epoch, done
