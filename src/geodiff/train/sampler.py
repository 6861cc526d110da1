"""The training data order: one global permutation per epoch, split across ranks, resumable mid-epoch.

:class:`EpochSampler` is torch's :class:`~torch.utils.data.DistributedSampler` (the
permutation of epoch e is drawn from ``seed + e``, the same on every rank; rank r takes
every world-size-th index from position r) with two additions:

- it yields ``(index, epoch)`` keys, so that :class:`geodiff.data.loader.StoreDataset`
  derives each sample's random draws (crop, diffusion noise) from (seed, epoch, index)
  alone: the same numbers whichever rank, batch or DataLoader worker reads the sample;
- :meth:`EpochSampler.set_epoch` takes a number of samples to skip, so that a run resumed
  after step k continues the epoch at the sample where it was killed.

With world size W and per-rank batch B/W, batch k of the W ranks together holds the
samples of batch k of one process with batch B (positions kB to kB + B - 1 of the
permutation): DDP's averaged gradient is the single process's.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """:class:`DistributedSampler` (shuffled, ``drop_last``) yielding ``(index, epoch)``, resumable mid-epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch `epoch` (from 0) at this rank's sample `skip` (0: from the start)."""
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.skip:]
        return iter([(index, self.epoch) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip
