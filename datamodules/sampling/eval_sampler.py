"""`EvalShardSampler`: one rank's share of a validation/test split, each patch on exactly one rank.

Lightning's default for DDP is a `DistributedSampler`, which pads a split to a multiple of the
world size by repeating patches, so repeated patches count twice in the confusion matrix and
the loss. This sampler is a `DistributedSampler` too (so Lightning keeps it as it is) but pads
nothing; ranks may then run different numbers of batches, which evaluation allows: scores and
logged means are synchronised once, at the end of the epoch, not per step.
"""

from __future__ import annotations

from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from datamodules.errors import InputError


class EvalShardSampler(DistributedSampler):
    """Whole batches dealt round-robin (rank r gets batches r, r + W, …), so every rank's batches
    are those a single process would run and batch-level values (the loss) match a
    single-process run exactly, not only the pixel-count scores. With fewer batches than ranks,
    single patches are dealt instead. Every rank needs at least one patch: a rank with none
    would skip the end-of-epoch synchronisation the others wait in.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n, b = len(dataset), int(batch_size)
        if n < num_replicas:
            raise InputError(
                None,
                f"the evaluation split has {n} patch(es) for {num_replicas} processes; "
                "each process needs at least one (use fewer devices or more patches)",
            )
        starts = range(0, n, b)
        if len(starts) >= num_replicas:
            self.indices = [i for s in starts[rank::num_replicas] for i in range(s, min(s + b, n))]
        else:
            self.indices = list(range(rank, n, num_replicas))
        self.num_samples = len(self.indices)
        self.total_size = n

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
