"""A tiny random-weight Lance model set in the exact official layout, for fast tests.

Same file names, key names, dtypes and config formats as the released checkpoints (see
``checkpoint.py``), at sizes that run in milliseconds on a CPU. Dimensions deliberately differ
from the golden fixtures' tiny model so code cannot silently depend on either. The tokenizer is
a small byte-level BPE trained on a built-in multilingual corpus with Qwen2's pipeline and the 22
Qwen2.5 added tokens appended in Qwen order. Everything is a pure function of the seed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

from .checkpoint import (IMAGE_FOLDER_NAME, LLM_CONFIG_JSON, SPECIAL_TOKEN_FIELDS, VAE_FILE_NAME,
                         VIDEO_FOLDER_SUFFIX, VIT_CONFIG_JSON, VIT_FOLDER_NAME, VIT_WEIGHTS)
from .config import LLMConfig, VisionConfig
from .inventory import POS_TABLE_KEY, STORED_POS_TABLE_FRAMES, expert_shapes, module_shapes, pos_table_shape, \
    vision_shapes
from .tokenizer import MERGES_TXT, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON, VOCAB_JSON, qwen2_pipeline
from .vit import CHECKPOINT_PREFIX

# The added tokens of Qwen2.5 in id order, with the "special" flag of its tokenizer_config.json
# (special tokens are dropped by decode(skip_special_tokens=True)).
QWEN25_ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)

TINY_BASE_VOCAB = 384  # 256 byte symbols + 128 merges
TINY_LLM_DIMS = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6, mrope_section=(4, 6, 6))
TINY_VISION = VisionConfig(depth=4, hidden_size=64, intermediate_size=176, num_heads=2,
                           out_hidden_size=TINY_LLM_DIMS["hidden_size"], fullatt_block_indexes=(0, 2))
TINY_VAE_DIM, TINY_VAE_DEC_DIM = 8, 16
# ComfyUI's native VAELoader builds every Wan 2.2 VAE at the released widths, so a model set meant for
# the real server needs them; the narrow widths keep pure-library tests fast.
VAE_WIDTHS = {"official": (160, 256), "tiny": (TINY_VAE_DIM, TINY_VAE_DEC_DIM)}
TINY_VIDEO_POS_TABLE_FRAMES = 5  # 2 latent frames: the stored table is never read, keep the file small

CORPUS = (
    "A red fox jumps over the lazy dog in the snow.",
    "Describe the image: a small white cat sits on a wooden table next to a blue cup.",
    "The camera slowly pans from left to right across the city at night, lights reflecting on the river.",
    "Make the sky pink and add a white moon above the mountains.",
    "What color is the square in the center of the picture? It is green, with a thin black border.",
    "The user’s instruction changes the background while keeping the person’s face and clothes.",
    "Two children play football on the beach; waves roll in and the sun sets behind them.",
    "Generate a video of a hot-air balloon rising over green hills in the early morning light.",
    "Ein kleiner Hund läuft über die Straße, und die Kinder lachen fröhlich.",
    "Le chat noir dort sur le canapé près de la fenêtre ouverte.",
    "El niño pequeño come una manzana roja en el jardín.",
    "一只小猫坐在窗台上看着外面的雨。",
    "青い空と白い雲、そして遠くの山。",
    "Большая собака бежит по зелёному полю.",
    "Numbers: 1, 2, 3, 10, 42, 100, 2025; prices like $3.50 and 20% off.",
    "Keep the shape, size and texture of every object, and explain how the colors should change.",
)


def train_tiny_tokenizer() -> Tokenizer:
    tokenizer = qwen2_pipeline(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=TINY_BASE_VOCAB, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    if tokenizer.get_vocab_size() != TINY_BASE_VOCAB:
        raise RuntimeError(f"the tiny corpus yields {tokenizer.get_vocab_size()} BPE tokens, not {TINY_BASE_VOCAB}")
    tokenizer.add_tokens([AddedToken(name, special=special, normalized=False)
                          for name, special in QWEN25_ADDED_TOKENS])
    return tokenizer


def _tokenizer_files(tokenizer: Tokenizer) -> dict[str, bytes]:
    """``tokenizer.json`` plus the slow-tokenizer files the reference reads."""
    spec = json.loads(tokenizer.to_str())
    vocab = dict(sorted(tokenizer.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    added = {str(tokenizer.token_to_id(name)): dict(content=name, lstrip=False, normalized=False, rstrip=False,
                                                    single_word=False, special=special)
             for name, special in QWEN25_ADDED_TOKENS}
    config = dict(
        add_bos_token=False, add_prefix_space=False, added_tokens_decoder=added,
        additional_special_tokens=[name for name, special in QWEN25_ADDED_TOKENS[1:] if special],
        bos_token=None, clean_up_tokenization_spaces=False, eos_token="<|im_end|>", errors="replace",
        model_max_length=131072, pad_token="<|endoftext|>", split_special_tokens=False,
        tokenizer_class="Qwen2Tokenizer", unk_token=None,
    )
    return {
        TOKENIZER_JSON: tokenizer.to_str(pretty=True).encode(),
        VOCAB_JSON: _json_bytes(vocab),
        MERGES_TXT: ("#version: 0.2\n" + "\n".join(merges) + "\n").encode(),
        TOKENIZER_CONFIG_JSON: _json_bytes(config),
    }


def tiny_llm_config(tokenizer: Tokenizer) -> LLMConfig:
    """Embedding rows exceed the tokenizer (as in the real model) so the logit mask matters."""
    ids = {field: tokenizer.token_to_id(token) for field, token in SPECIAL_TOKEN_FIELDS}
    rows = 64 * (tokenizer.get_vocab_size() // 64 + 1)
    return LLMConfig(vocab_size=rows, **TINY_LLM_DIMS, **ids)


def _llm_config_json(cfg: LLMConfig, tokenizer: Tokenizer) -> dict:
    """In the format of the released llm_config.json (Qwen2.5-VL style)."""
    return dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl", torch_dtype="bfloat16",
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, hidden_act="silu", max_position_embeddings=128000,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        rope_scaling=dict(type="mrope", mrope_section=list(cfg.mrope_section)),
        tie_word_embeddings=True,  # as released; Lance overrides it (lm_head is stored separately)
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"), eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
        vision_token_id=tokenizer.token_to_id("<|vision_pad|>"), image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_config=dict(_vit_config_json(TINY_VISION), spatial_merge_size=cfg.spatial_merge_size,
                           tokens_per_second=cfg.tokens_per_second),
    )


def _vit_config_json(cfg: VisionConfig) -> dict:
    return dict(
        model_type="qwen2_5_vl", torch_dtype="bfloat16", depth=cfg.depth, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_heads=cfg.num_heads, in_channels=cfg.in_channels,
        out_hidden_size=cfg.out_hidden_size, patch_size=cfg.patch_size, spatial_merge_size=cfg.spatial_merge_size,
        temporal_patch_size=cfg.temporal_patch_size, window_size=cfg.window_size,
        fullatt_block_indexes=list(cfg.fullatt_block_indexes), hidden_act="silu", tokens_per_second=2,
    )


def _llm_weight_std(name: str, shape: tuple[int, ...]) -> float:
    # Larger output projections and glue layers keep residual updates and latents non-negligible.
    if "o_proj" in name or "down_proj" in name:
        return 0.08
    if name.startswith(("vae2llm.", "llm2vae.")):
        return 0.1
    if name.startswith("time_embedder."):
        return 0.05
    return 0.02


def _fan_in_std(name: str, shape: tuple[int, ...]) -> float:
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return fan_in ** -0.5


def _random_tensors(shapes: dict, gen: torch.Generator, weight_std, dtype) -> dict[str, torch.Tensor]:
    """Norm scales 1+N(0,0.1) (so und/gen twins differ), biases N(0,0.02), weights N(0, weight_std)."""
    tensors = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if name.endswith("gamma") or (name.endswith("weight") and len(shape) == 1):
            value = 1 + 0.1 * noise
        elif name.endswith("bias"):
            value = 0.02 * noise
        else:
            value = weight_std(name, shape) * noise
        tensors[name] = value.to(dtype)
    return tensors


def _lance_tensors(cfg: LLMConfig, tokenizer: Tokenizer, variant: str, gen: torch.Generator):
    und, gen_shapes = expert_shapes(cfg)
    tensors = _random_tensors({**und, **gen_shapes}, gen, _llm_weight_std, torch.bfloat16)
    # Rows past the tokenizer get large logits: decoding is only right if they are masked.
    tensors["language_model.lm_head.weight"][tokenizer.get_vocab_size():] *= 4
    frames = STORED_POS_TABLE_FRAMES["image"] if variant == "image" else TINY_VIDEO_POS_TABLE_FRAMES
    tensors[POS_TABLE_KEY] = torch.randn(pos_table_shape(cfg, frames), generator=gen).to(torch.bfloat16)
    if variant == "video":
        tensors.update(_vit_tensors(gen, CHECKPOINT_PREFIX))
    return tensors


def _vit_tensors(gen: torch.Generator, prefix: str = "") -> dict[str, torch.Tensor]:
    return _random_tensors(vision_shapes(TINY_VISION, prefix), gen, _llm_weight_std, torch.bfloat16)


def _vae_tensors(gen: torch.Generator, widths: str) -> dict[str, torch.Tensor]:
    from .vae import build_wan22_vae

    if widths not in VAE_WIDTHS:
        raise ValueError(f"VAE widths must be one of {sorted(VAE_WIDTHS)}, got {widths!r}")
    shapes = module_shapes(build_wan22_vae(*VAE_WIDTHS[widths]))
    # The released widths are stored in bf16 (1.4 GB instead of 2.8 GB); ComfyUI casts on load.
    dtype = torch.float32 if widths == "tiny" else torch.bfloat16
    tensors = _random_tensors(shapes, gen, _fan_in_std, dtype)
    tensors["decoder.head.2.weight"] *= 2  # decoded pixels span a visible range
    # conv1 emits [mean, log-variance]: a posterior std of about exp(-2) keeps sampling meaningful
    z = tensors["conv1.weight"].shape[0] // 2
    tensors["conv1.weight"][z:] *= 0.1
    tensors["conv1.bias"][z:] -= 4
    return tensors


def _json_bytes(data) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def _write_atomically(path: Path, data: bytes | dict) -> None:
    """Write beside the target and rename, so an interrupted run never leaves a partial file.
    A dict is a state dict for ``torch.save``, streamed straight to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        if isinstance(data, dict):
            torch.save(data, temp)
        else:
            temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@dataclass(frozen=True)
class TinyModels:
    root: Path

    @property
    def image(self) -> Path:
        return self.root / IMAGE_FOLDER_NAME

    @property
    def video(self) -> Path:
        return self.root / (IMAGE_FOLDER_NAME + VIDEO_FOLDER_SUFFIX)

    @property
    def vit(self) -> Path:
        return self.root / VIT_FOLDER_NAME

    @property
    def vae(self) -> Path:
        return self.root / VAE_FILE_NAME


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, vae_widths: str = "official") -> TinyModels:
    """Write ``Lance_3B/``, ``Lance_3B_Video/``, ``Qwen2.5-VL-ViT/`` and ``Wan2.2_VAE.pth`` into ``out_dir``.

    ``vae_widths``: ``"official"`` (loadable by ComfyUI's VAELoader) or ``"tiny"`` (fast, library only)."""
    out = TinyModels(Path(out_dir))
    tokenizer = train_tiny_tokenizer()
    cfg = tiny_llm_config(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    metadata = {"format": "pt"}
    shared = {LLM_CONFIG_JSON: _json_bytes(_llm_config_json(cfg, tokenizer)), **_tokenizer_files(tokenizer)}
    for variant, folder in (("image", out.image), ("video", out.video)):
        files = {"model.safetensors": safetensors_bytes(_lance_tensors(cfg, tokenizer, variant, gen), metadata),
                 **shared}
        for name, data in files.items():
            _write_atomically(folder / name, data)
    _write_atomically(out.vit / VIT_CONFIG_JSON, _json_bytes(_vit_config_json(TINY_VISION)))
    _write_atomically(out.vit / VIT_WEIGHTS, safetensors_bytes(_vit_tensors(gen), metadata))
    _write_atomically(out.vae, _vae_tensors(gen, vae_widths))
    return out
