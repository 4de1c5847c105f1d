"""Which splits a KV-cache sampler runs, in which order, at which positions (spec §5.3, §5.5, §6).

Generation: the splits before the first ``noise`` split are prefilled one by one into the conditional
cache; the unconditional cache takes the same walk without the caption split. As in the reference,
the unconditional cache stores its tokens at their *conditional* positions, while the noise block's
unconditional query uses the positions of the caption-free sequence — so for t2i/t2v/i2v the query
sits ``len(caption)`` positions before the cached template tokens.

Understanding: every prompt token but the last is prefilled split by split; decoding starts by
feeding the last prompt token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LLMConfig
from .positions import generation_positions
from .sequence import NOISE, PackedSample, Split


@dataclass(frozen=True, eq=False)
class GenerationPlan:
    cond_positions: torch.Tensor       # [3, L] positions of the conditional sample
    uncond_positions: torch.Tensor     # [3, L - len(caption)] positions of the caption-free sample
    cond_prefix: tuple[Split, ...]     # prefill order of the conditional cache
    uncond_prefix: tuple[Split, ...]   # prefill order of the unconditional cache (conditional coordinates)
    noise: Split                       # the target block, in conditional coordinates

    @property
    def shared_prefix(self) -> tuple[Split, ...]:
        """Leading splits both caches compute identically (everything before the caption): a sampler may
        prefill them once and fork the cache."""
        shared = []
        for cond, uncond in zip(self.cond_prefix, self.uncond_prefix):
            if cond != uncond:
                break
            shared.append(cond)
        return tuple(shared)

    @property
    def uncond_noise_positions(self) -> torch.Tensor:
        """Query positions of the noise block in the unconditional pass: the caption-free positions,
        taken at the unconditional cache length (which is where the block sits in that sequence)."""
        start = sum(s.length for s in self.uncond_prefix)
        return self.uncond_positions[:, start:start + self.noise.length]

    @property
    def cond_noise_positions(self) -> torch.Tensor:
        return self.cond_positions[:, self.noise.start:self.noise.end]


def plan_generation(sample: PackedSample, cfg: LLMConfig) -> GenerationPlan:
    if sample.caption is None:
        raise ValueError("generation needs a sample with a caption split (build it with build_text_to_visual "
                         "or build_edit)")
    prefix = []
    for split in sample.splits:
        if split.mode == NOISE:
            break
        prefix.append(split)
    else:
        raise ValueError("the sample has no noise split to generate")
    noise = sample.splits[len(prefix)]
    return GenerationPlan(
        cond_positions=generation_positions(sample, cfg),
        uncond_positions=generation_positions(sample.unconditional(), cfg),
        cond_prefix=tuple(prefix),
        uncond_prefix=tuple(s for s in prefix if s != sample.caption),
        noise=noise,
    )


def understanding_prefill(sample: PackedSample) -> tuple[Split, ...]:
    """Splits that prefill an x2t prompt: all tokens but the last, which the first decode step feeds."""
    context = len(sample) - 1
    out = []
    for split in sample.splits:
        end = min(split.end, context)
        if end > split.start:
            out.append(Split(split.start, end - split.start, split.mode))
    return tuple(out)
