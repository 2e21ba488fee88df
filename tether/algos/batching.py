"""Batch bookkeeping for one PPO update, derived from the config and never written back into it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.engine.optim import derive_seed


@dataclass(frozen=True)
class BatchPlan:
    """Sizes of one update: B sequences = prompts × samples, split into minibatches and micro-batches."""

    prompts: int
    samples_per_prompt: int
    num_minibatches: int
    micro_batch_size: int

    @property
    def sequences(self) -> int:
        return self.prompts * self.samples_per_prompt

    @property
    def minibatch_size(self) -> int:
        return self.sequences // self.num_minibatches

    @classmethod
    def from_config(cls, cfg) -> "BatchPlan":
        return cls(cfg.rollout_batch_size, cfg.samples_per_prompt, cfg.num_minibatches, cfg.micro_batch_size)

    def minibatches(self, generator: torch.Generator, sequences: int | None = None) -> list[torch.Tensor]:
        """One random permutation of the rollout, cut into ``num_minibatches`` minibatches of row indices.
        ``sequences``: the rows there are when fewer than planned (dynamic sampling short of groups); the
        minibatches then differ in size by at most one row, and empty ones are left out."""
        n = self.sequences if sequences is None else sequences
        perm = torch.randperm(n, generator=generator)
        return [mb for mb in perm.tensor_split(self.num_minibatches) if len(mb)]

    def micro_batches(self, minibatch: torch.Tensor) -> list[torch.Tensor]:
        return list(minibatch.split(self.micro_batch_size))


def prompt_indices(update: int, batch: int, n_prompts: int, seed: int) -> list[int]:
    """Prompt indices for ``update``: a fresh seeded shuffle of the prompt set on each pass over it, so the order is
    a pure function of (seed, update) and a resumed run draws exactly the prompts an uninterrupted one would."""
    return prompt_stream(update * batch, batch, n_prompts, seed)


def prompt_stream(start: int, count: int, n_prompts: int, seed: int) -> list[int]:
    """Positions ``start … start + count − 1`` of the seeded prompt order (a fresh shuffle of the prompt set on each
    pass over it): what :func:`prompt_indices` reads for a whole update, and dynamic sampling reads on from its
    prompt cursor."""
    out = []
    cache: dict[int, list[int]] = {}
    for k in range(start, start + count):
        epoch, pos = divmod(k, n_prompts)
        if epoch not in cache:
            g = torch.Generator().manual_seed(derive_seed(seed, "prompts", epoch))
            cache[epoch] = torch.randperm(n_prompts, generator=g).tolist()
        out.append(cache[epoch][pos])
    return out
