"""Configuration of the Lance LLM, its vision tower and the latent geometry.

Values are read from the official ``llm_config.json`` and ``Qwen2.5-VL-ViT/config.json``; the
fixed run-time settings of the reference (``inference_lance.sh``) live in ``LatentConfig``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration file is missing a field, has a wrong value or disagrees with the weights."""


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _require(data: dict, key: str, source: str):
    if key not in data:
        raise ConfigError(f"{source}: required field '{key}' is missing")
    return data[key]


@dataclass(frozen=True)
class LLMConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    spatial_merge_size: int = 2
    tokens_per_second: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict, source: str = "llm_config.json") -> "LLMConfig":
        rope_scaling = _require(data, "rope_scaling", source)
        section = rope_scaling.get("mrope_section") if isinstance(rope_scaling, dict) else None
        if not section or len(section) != 3:
            raise ConfigError(f"{source}: rope_scaling.mrope_section must list 3 integers, got {section!r}")
        vision = data.get("vision_config", {})
        cfg = cls(
            hidden_size=int(_require(data, "hidden_size", source)),
            intermediate_size=int(_require(data, "intermediate_size", source)),
            num_hidden_layers=int(_require(data, "num_hidden_layers", source)),
            num_attention_heads=int(_require(data, "num_attention_heads", source)),
            num_key_value_heads=int(_require(data, "num_key_value_heads", source)),
            vocab_size=int(_require(data, "vocab_size", source)),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            rope_theta=float(data.get("rope_theta", 1e6)),
            mrope_section=tuple(int(s) for s in section),
            image_token_id=int(_require(data, "image_token_id", source)),
            video_token_id=int(_require(data, "video_token_id", source)),
            vision_start_token_id=int(_require(data, "vision_start_token_id", source)),
            vision_end_token_id=int(_require(data, "vision_end_token_id", source)),
            spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
            tokens_per_second=int(vision.get("tokens_per_second", 2)),
        )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(f"{source}: hidden_size {cfg.hidden_size} is not divisible by "
                              f"num_attention_heads {cfg.num_attention_heads}")
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ConfigError(f"{source}: num_attention_heads {cfg.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {cfg.num_key_value_heads}")
        if 2 * sum(cfg.mrope_section) != cfg.head_dim:
            raise ConfigError(f"{source}: mrope_section {list(cfg.mrope_section)} must sum to head_dim/2 = "
                              f"{cfg.head_dim // 2}")
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "LLMConfig":
        return cls.from_dict(read_json(path), str(path))


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = field(default_factory=tuple)
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> "VisionConfig":
        cfg = cls(
            depth=int(_require(data, "depth", source)),
            hidden_size=int(_require(data, "hidden_size", source)),
            intermediate_size=int(_require(data, "intermediate_size", source)),
            num_heads=int(_require(data, "num_heads", source)),
            out_hidden_size=int(_require(data, "out_hidden_size", source)),
            in_channels=int(data.get("in_channels", data.get("in_chans", 3))),
            patch_size=int(data.get("patch_size", 14)),
            temporal_patch_size=int(data.get("temporal_patch_size", 2)),
            spatial_merge_size=int(data.get("spatial_merge_size", 2)),
            window_size=int(data.get("window_size", 112)),
            fullatt_block_indexes=tuple(int(i) for i in data.get("fullatt_block_indexes", ())),
        )
        if cfg.hidden_size % cfg.num_heads:
            raise ConfigError(f"{source}: hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        bad = [i for i in cfg.fullatt_block_indexes if not 0 <= i < cfg.depth]
        if bad:
            raise ConfigError(f"{source}: fullatt_block_indexes {bad} are outside 0..{cfg.depth - 1}")
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "VisionConfig":
        return cls.from_dict(read_json(path), str(path))


@dataclass(frozen=True)
class LatentConfig:
    """Wan 2.2 latent geometry and the reference's fixed generation settings."""

    channels: int = 48
    spatial_factor: int = 16
    temporal_factor: int = 4
    max_latent_size: int = 64
    max_num_frames: int = 121
    time_frequency_dim: int = 256

    @property
    def max_latent_frames(self) -> int:
        return self.max_num_frames // self.temporal_factor + 1


LATENT = LatentConfig()

# Full-size configuration of the released Lance_3B / Lance_3B_Video (spec §1). Used to build the
# architecture on the meta device (key inventories, benchmarks) when no config file is at hand.
LANCE_3B_LLM = LLMConfig(
    hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1e6,
    mrope_section=(16, 24, 24), image_token_id=151655, video_token_id=151656,
    vision_start_token_id=151652, vision_end_token_id=151653, spatial_merge_size=2, tokens_per_second=2,
)
QWEN25_VL_3B_VISION = VisionConfig(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
    fullatt_block_indexes=(7, 15, 23, 31),
)
