"""A seeded, epoch-aware sampler that also splits the data between ranks (like DistributedSampler),
so that the order of every epoch is a pure function of (seed, epoch) and can be replayed on resume."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # samples of this rank's epoch already consumed (resume mid-epoch)
        # training pads to equal shares (every rank steps together); evaluation splits without duplicates
        self.num_samples = math.ceil(n / world_size) if shuffle else len(range(rank, n, world_size))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            if self.shuffle:
                order += order[: self.num_samples * self.world_size - self.n]  # pad to a multiple of the ranks
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self):
        """(index, sample seed) pairs: the seed fixes that sample's random augmentation, so an epoch
        replays identically however it is split between workers or resumed."""
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
        return iter((i, (base + i) % 2**62) for i in self.indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
