"""The model steps of the understanding tasks (x2t_image, x2t_video; spec §6): ViT tokens of the image or
clip + question → answer. They run the understanding expert only.

1. ``prefill_question`` — the prompt ends with ``<|im_start|>assistant\\n``; all of it but its last token
   is prefilled split by split (text causal, the ViT block bidirectional).
2. ``decode_answer`` — feeds that last token, then each new one at consecutive text positions, until
   ``<|im_end|>`` or ``max_new_tokens``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .kv_cache import KVCache
from .kv_plan import understanding_prefill
from .mot import MoTDecoder
from .positions import understanding_positions
from .prompts import ENDOFTEXT, IM_END
from .sampling import TextSettings, generate_text
from .sequence import PackedSample, build_understanding
from .vision_tokens import VisionTokens


@dataclass(eq=False)
class PromptState:
    """A prefilled x2t prompt, ready to decode (once: decoding extends the cache)."""

    sample: PackedSample
    positions: torch.Tensor   # [3, len(sample) + max_new_tokens]
    cache: KVCache            # every prompt token but the last

    @property
    def max_new_tokens(self) -> int:
        return self.positions.shape[1] - len(self.sample)


@dataclass(frozen=True)
class Answer:
    ids: list[int]   # generated token ids, without the stop token
    text: str        # their decoded text, stripped


@torch.no_grad()
def prefill_question(decoder: MoTDecoder, tokenizer, task: str, question: str, vision: VisionTokens, *,
                     instruction: str | None = None, max_new_tokens: int = TextSettings.max_new_tokens) -> PromptState:
    """Prefill the prompt asking ``question`` about the media behind ``vision``. ``instruction`` is the
    system prompt (default: the reference's example for the medium)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    cfg = decoder.config
    sample = build_understanding(task, tokenizer, cfg, question, vision.grid, instruction)
    positions = understanding_positions(sample, cfg, tokenizer.token_id(ENDOFTEXT), max_new_tokens)
    embeds = decoder.embed_tokens(sample.token_ids)
    slots = sample.vit_token_indexes
    if vision.embeds.shape[0] != slots.numel():
        raise ValueError(f"{vision.embeds.shape[0]} ViT tokens do not match their grid {list(vision.grid)} "
                         f"({slots.numel()} tokens); encode them together")
    embeds[slots] = vision.embeds.to(embeds.device, embeds.dtype)
    cache = decoder.new_cache()
    for split in understanding_prefill(sample):
        span = slice(split.start, split.end)
        decoder.prefill(embeds[span], positions[:, span], cache, causal=split.causal)
    return PromptState(sample, positions, cache)


@torch.no_grad()
def decode_answer(decoder: MoTDecoder, tokenizer, state: PromptState, settings: TextSettings = TextSettings(),
                  generator: torch.Generator | None = None,
                  on_token: Callable[[int], None] | None = None) -> Answer:
    """Greedy (temperature 0, the reference) or sampled decoding with ``generator``; ``on_token(id)`` sees
    every new token (an exception raised there stops decoding). The prompt's cache is released at the end."""
    if settings.max_new_tokens > state.max_new_tokens:
        raise ValueError(f"the prompt was prefilled for at most {state.max_new_tokens} new tokens, "
                         f"{settings.max_new_tokens} asked; prefill it with that max_new_tokens")
    last = len(state.sample) - 1
    try:
        ids = generate_text(decoder, state.cache, int(state.sample.token_ids[last]), state.positions[:, last:],
                            vocab_limit=len(tokenizer), stop_token=tokenizer.token_id(IM_END),
                            settings=settings, generator=generator, on_token=on_token)
    finally:
        state.cache.free()
    return Answer(ids=ids, text=tokenizer.decode(ids).strip())
