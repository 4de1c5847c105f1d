"""Packed token sequences of Lance samples (spec §2.3, §4.1, §4.2).

A sample is the chat-templated token sequence of one request in which every visual block
``<|vision_start|> K×<|video_pad|> <|vision_end|>`` holds one pad per LLM token of the block (ViT:
merged patches; VAE latents: t·h·w voxels). It is cut into contiguous attention *splits* — text runs
``causal``, the ViT block ``full``, a clean VAE condition ``full_noise``, the generated target
``noise`` — and every token carries a modality id (markers carry their block's).

The user's caption (t2i/t2v/i2v prompt, edit instruction) is located as the first exact occurrence of
its stand-alone tokenisation and becomes a ``causal`` split of its own; the CFG-unconditional sample
is the same sequence without those tokens.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import LATENT, ConfigError, LatentConfig, LLMConfig
from .prompts import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START, VISUAL_PLACEHOLDER
from .prompts import default_understanding_instruction, generation_system_prompt, render_chat

CAUSAL, FULL, FULL_NOISE, NOISE = "causal", "full", "full_noise", "noise"

# Token modality ids, as the reference numbers them (REFERENCE = subject reference image, unused by
# the seven tasks but honoured by MaPE).
TEMPLATE, CAPTION, TARGET, EDIT_SOURCE, REFERENCE, VIT = -1, 0, 1, 2, 3, 4

VIT_BLOCK, SOURCE_BLOCK, TARGET_BLOCK = "vit", "source", "target"
_BLOCK_MODALITY = {VIT_BLOCK: VIT, SOURCE_BLOCK: EDIT_SOURCE, TARGET_BLOCK: TARGET}
_BLOCK_MODE = {VIT_BLOCK: FULL, SOURCE_BLOCK: FULL_NOISE, TARGET_BLOCK: NOISE}

TEXT_TO_VISUAL_TASKS = ("t2i", "t2v", "i2v")
EDIT_TASKS = ("image_edit", "video_edit")
UNDERSTANDING_TASKS = ("x2t_image", "x2t_video")


@dataclass(frozen=True)
class Split:
    start: int
    length: int
    mode: str

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def causal(self) -> bool:
        return self.mode == CAUSAL

    @property
    def uses_generation_expert(self) -> bool:
        """Whether the split holds VAE-latent tokens (the reference then runs it in ``gen`` mode)."""
        return self.mode in (FULL_NOISE, NOISE)


@dataclass(frozen=True)
class VisualBlock:
    role: str                     # VIT_BLOCK, SOURCE_BLOCK or TARGET_BLOCK
    grid: tuple[int, int, int]    # ViT: patch grid (t, H/14, W/14); VAE: latent shape (t, h, w)
    num_tokens: int               # LLM tokens between the two markers
    start: int = 0                # index of the block's <|vision_start|>
    clean_frames: int = 0         # leading latent frames of a target that are given, not generated (i2v)

    @property
    def end(self) -> int:
        """One past the block's <|vision_end|>."""
        return self.start + self.num_tokens + 2

    @property
    def token_range(self) -> range:
        return range(self.start + 1, self.start + 1 + self.num_tokens)

    @property
    def modality(self) -> int:
        return _BLOCK_MODALITY[self.role]

    @property
    def mode(self) -> str:
        return _BLOCK_MODE[self.role]

    @property
    def is_latent(self) -> bool:
        return self.role != VIT_BLOCK

    def rope_grid(self, spatial_merge_size: int) -> tuple[int, int, int]:
        """The grid ``get_rope_index`` expects. Latent sides are scaled up by the merge size so that
        its division by the merge size gives back the latent grid."""
        t, h, w = self.grid
        if self.is_latent:
            return t, h * spatial_merge_size, w * spatial_merge_size
        return t, h, w


@dataclass(frozen=True, eq=False)
class PackedSample:
    token_ids: torch.Tensor         # int64 [L]
    modality: torch.Tensor          # int64 [L]
    splits: tuple[Split, ...]
    blocks: tuple[VisualBlock, ...]
    caption: Split | None           # the caption's own split; None for x2t and unconditional samples

    def __len__(self) -> int:
        return self.token_ids.numel()

    @property
    def split_lens(self) -> list[int]:
        return [s.length for s in self.splits]

    @property
    def attn_modes(self) -> list[str]:
        return [s.mode for s in self.splits]

    @property
    def target(self) -> VisualBlock | None:
        return next((b for b in self.blocks if b.role == TARGET_BLOCK), None)

    @property
    def text_indexes(self) -> torch.Tensor:
        """Tokens embedded from the vocabulary: all but the visual slots (markers included)."""
        slot = torch.zeros(len(self), dtype=torch.bool)
        for block in self.blocks:
            slot[block.token_range.start:block.token_range.stop] = True
        return torch.nonzero(~slot).flatten()

    @property
    def vit_token_indexes(self) -> torch.Tensor:
        return _ranges([b.token_range for b in self.blocks if not b.is_latent])

    @property
    def vae_token_indexes(self) -> torch.Tensor:
        """Slots of all latent blocks (clean sources and targets), in sequence order."""
        return _ranges([b.token_range for b in self.blocks if b.is_latent])

    @property
    def noisy_target_indexes(self) -> torch.Tensor:
        """Target slots the sampler updates (an i2v target's clean leading frames excluded)."""
        return _ranges([_noisy_range(b) for b in self.blocks if b.role == TARGET_BLOCK])

    @property
    def updated_latent_rows(self) -> torch.Tensor:
        """``noisy_target_indexes`` as rows of the latent-token list (``vae_token_indexes`` order)."""
        return torch.searchsorted(self.vae_token_indexes, self.noisy_target_indexes)

    def unconditional(self) -> "PackedSample":
        """The CFG-unconditional sample: the caption's tokens and split removed, nothing else changed."""
        if self.caption is None:
            raise ValueError("this sample has no caption to drop (x2t samples and unconditional samples)")
        cut = self.caption
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[cut.start:cut.end] = False

        def shifted(start: int) -> int:
            return start - cut.length if start >= cut.end else start

        return PackedSample(
            token_ids=self.token_ids[keep],
            modality=self.modality[keep],
            splits=tuple(dataclasses.replace(s, start=shifted(s.start)) for s in self.splits if s != cut),
            blocks=tuple(dataclasses.replace(b, start=shifted(b.start)) for b in self.blocks),
            caption=None,
        )


def _noisy_range(block: VisualBlock) -> range:
    _, h, w = block.grid
    return range(block.token_range.start + block.clean_frames * h * w, block.token_range.stop)


def _ranges(ranges: list[range]) -> torch.Tensor:
    if not ranges:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([torch.arange(r.start, r.stop, dtype=torch.int64) for r in ranges])


# ----------------------------------------------------------------------------------------------------
# Block geometry


def latent_shape(frames: int, height: int, width: int, latent: LatentConfig = LATENT) -> tuple[int, int, int]:
    """Latent grid ``(t, h, w)`` of a ``frames×height×width`` clip (Wan 2.2: 4× in time after the first
    frame, 16× in space; sides are floored like the reference)."""
    if frames < 1 or height < latent.spatial_factor or width < latent.spatial_factor:
        raise ValueError(f"a clip of {frames}×{height}×{width} (frames×H×W) has no latent; need ≥1 frame "
                         f"and sides ≥{latent.spatial_factor} px")
    return ((frames - 1) // latent.temporal_factor + 1, height // latent.spatial_factor,
            width // latent.spatial_factor)


def _vit_block(grid, merge: int) -> VisualBlock:
    t, gh, gw = (int(v) for v in grid)
    if min(t, gh, gw) < 1 or gh % merge or gw % merge:
        raise ValueError(f"ViT grid {[t, gh, gw]} (temporal patches, H/14, W/14) must be positive with both "
                         f"spatial sides divisible by the merge size {merge}; crop images to multiples of "
                         f"{14 * merge} px")
    return VisualBlock(VIT_BLOCK, (t, gh, gw), t * gh * gw // (merge * merge))


def _latent_block(role: str, shape, clean_frames: int = 0) -> VisualBlock:
    t, h, w = (int(v) for v in shape)
    if min(t, h, w) < 1:
        raise ValueError(f"latent shape {[t, h, w]} must be positive")
    return VisualBlock(role, (t, h, w), t * h * w, clean_frames=clean_frames)


# ----------------------------------------------------------------------------------------------------
# Builders


def build_text_to_visual(task: str, tokenizer, cfg: LLMConfig, prompt: str, target_latent) -> PackedSample:
    """t2i / t2v / i2v: the prompt, then the target latent block ``target_latent = (t, h, w)``.

    For i2v the first latent frame of the target is the encoded image (clean, never updated)."""
    if task not in TEXT_TO_VISUAL_TASKS:
        raise ValueError(f"task must be one of {TEXT_TO_VISUAL_TASKS}, got {task!r}")
    clean_frames = 1 if task == "i2v" else 0
    target = _latent_block(TARGET_BLOCK, target_latent, clean_frames)
    if clean_frames >= target.grid[0]:
        raise ValueError(f"i2v needs at least 2 latent frames (5 video frames) so that something is "
                         f"generated after the given image; got latent shape {list(target.grid)}")
    text = render_chat(generation_system_prompt(task), prompt, VISUAL_PLACEHOLDER)
    return _pack(tokenizer, cfg, text, [target], caption=prompt)


def build_edit(task: str, tokenizer, cfg: LLMConfig, instruction: str, vit_grid, source_latent) -> PackedSample:
    """image_edit / video_edit: ViT block and clean VAE block of the source, the instruction, then a
    target of the source's latent shape."""
    if task not in EDIT_TASKS:
        raise ValueError(f"task must be one of {EDIT_TASKS}, got {task!r}")
    blocks = [_vit_block(vit_grid, cfg.spatial_merge_size),
              _latent_block(SOURCE_BLOCK, source_latent),
              _latent_block(TARGET_BLOCK, source_latent)]
    user = VISUAL_PLACEHOLDER + VISUAL_PLACEHOLDER + instruction
    text = render_chat(generation_system_prompt(task), user, VISUAL_PLACEHOLDER)
    return _pack(tokenizer, cfg, text, blocks, caption=instruction)


def build_understanding(task: str, tokenizer, cfg: LLMConfig, question: str, vit_grid,
                        instruction: str | None = None) -> PackedSample:
    """x2t_image / x2t_video: the prompt up to and including ``<|im_start|>assistant\\n``.

    ``instruction`` is the system prompt (default: the reference's example for the medium)."""
    if task not in UNDERSTANDING_TASKS:
        raise ValueError(f"task must be one of {UNDERSTANDING_TASKS}, got {task!r}")
    if instruction is None:
        instruction = default_understanding_instruction(task.removeprefix("x2t_"))
    text = render_chat(instruction, VISUAL_PLACEHOLDER + question, None)
    return _pack(tokenizer, cfg, text, [_vit_block(vit_grid, cfg.spatial_merge_size)], caption=None)


# ----------------------------------------------------------------------------------------------------
# Packing


def _vision_ids(tokenizer, cfg: LLMConfig) -> tuple[int, int, int]:
    ids = (cfg.vision_start_token_id, cfg.video_token_id, cfg.vision_end_token_id)
    names = (VISION_START, VIDEO_PAD, VISION_END)
    from_tokenizer = tuple(tokenizer.token_id(n) for n in names)
    if from_tokenizer != ids:
        raise ConfigError(f"the tokenizer and llm_config.json disagree on the ids of {', '.join(names)}: "
                          f"{list(from_tokenizer)} vs {list(ids)}; load both from the same checkpoint folder")
    return ids


def _pack(tokenizer, cfg: LLMConfig, text: str, specs: list[VisualBlock], caption: str | None) -> PackedSample:
    start_id, pad_id, end_id = _vision_ids(tokenizer, cfg)
    base = tokenizer.encode(text)
    _check_placeholders(base, len(specs), (start_id, pad_id, end_id, cfg.image_token_id))

    ids: list[int] = []
    splits: list[Split] = []
    blocks: list[VisualBlock] = []
    specs_left = iter(specs)
    run_start = 0
    i = 0
    while i < len(base):
        if base[i] != start_id:
            ids.append(base[i])
            i += 1
            continue
        block = dataclasses.replace(next(specs_left), start=len(ids))
        if block.start > run_start:
            splits.append(Split(run_start, block.start - run_start, CAUSAL))
        ids.append(start_id)
        ids.extend([pad_id] * block.num_tokens)
        ids.append(end_id)
        splits.append(Split(block.start, block.end - block.start, block.mode))
        blocks.append(block)
        run_start = block.end
        i += 3
    if len(ids) > run_start:
        splits.append(Split(run_start, len(ids) - run_start, CAUSAL))

    token_ids = torch.tensor(ids, dtype=torch.int64)
    modality = torch.full_like(token_ids, TEMPLATE)
    for block in blocks:
        modality[block.start:block.end] = block.modality
    caption_split = None
    if caption is not None:
        caption_split = _locate_caption(tokenizer, token_ids, caption)
        splits = _split_off(splits, caption_split)
        modality[caption_split.start:caption_split.end] = CAPTION
    return PackedSample(token_ids, modality, tuple(splits), tuple(blocks), caption_split)


def _check_placeholders(base: list[int], expected: int, vision_ids: tuple[int, ...]) -> None:
    """The template holds exactly ``expected`` [start, pad, end] triples; any other vision token came
    from user text and would corrupt the block layout."""
    start_id, pad_id, end_id, _ = vision_ids
    triples = sum(1 for k in range(len(base) - 2) if base[k:k + 3] == [start_id, pad_id, end_id])
    stray = sum(1 for t in base if t in vision_ids) - 3 * triples
    if triples != expected or stray:
        raise ValueError(f"the prompt text contains vision special tokens ({VISION_START}, {VIDEO_PAD}, "
                         f"{VISION_END} or {IMAGE_PAD}); remove them from the prompt/instruction/question")


def _locate_caption(tokenizer, token_ids: torch.Tensor, caption: str) -> Split:
    """First exact occurrence of the caption's stand-alone tokenisation (as the reference searches it;
    a caption that also occurs verbatim earlier, e.g. inside the system prompt, is found there)."""
    needle = tokenizer.encode(caption)
    if not needle:
        raise ValueError("the prompt is empty; Lance needs a non-empty prompt/instruction (its tokens are "
                         "what classifier-free guidance removes)")
    target = torch.tensor(needle, dtype=torch.int64)
    n = target.numel()
    for start in torch.nonzero(token_ids == target[0]).flatten().tolist():
        if start + n <= token_ids.numel() and torch.equal(token_ids[start:start + n], target):
            return Split(start, n, CAUSAL)
    raise ValueError(
        "the prompt's tokens do not appear unchanged inside the chat template: the byte-level tokenizer "
        "merged its first characters with the line break of the template before it. This happens when "
        "the prompt starts with a line break (or with spaces followed by a line break); remove the "
        "leading line breaks/whitespace from the prompt")


def _split_off(splits: list[Split], caption: Split) -> list[Split]:
    """Cut the causal text run that contains the caption into (before, caption, after)."""
    out = []
    for s in splits:
        if s.mode == CAUSAL and s.start <= caption.start and caption.end <= s.end:
            before = Split(s.start, caption.start - s.start, CAUSAL)
            after = Split(caption.end, s.end - caption.end, CAUSAL)
            out.extend(p for p in (before, caption, after) if p.length)
        else:
            out.append(s)
    return out
