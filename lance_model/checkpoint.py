"""Find, open and validate the official Lance model files.

Layout of a models folder (the official Hugging Face repository, ``HF_REPO``)::

    Lance_3B/          model.safetensors, llm_config.json, tokenizer.json (+ vocab.json, merges.txt, ...)
    Lance_3B_Video/    the same; model.safetensors also holds the vision tower as vit_model.*
    Qwen2.5-VL-ViT/    config.json, vit.safetensors (bare vision-tower names)
    Wan2.2_VAE.pth     torch.save state dict of the Wan 2.2 VAE (or ComfyUI's wan2.2_vae.safetensors)

Opening a folder reads only headers and configs and memory-maps the weights; every tensor name
and shape is checked against the architecture its config describes, so a wrong, truncated or
mismatched file fails here with the file, key and shapes named, not deep inside a forward pass.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError, LLMConfig, VisionConfig
from .inventory import POS_TABLE_KEY, Shapes, expert_shapes, format_shape, module_shapes, vision_shapes
from .safetensors_mmap import SafetensorsError, SafetensorsFile
from .tokenizer import LanceTokenizer, TokenizerError
from .vit import CHECKPOINT_PREFIX

HF_REPO = "bytedance-research/Lance"
HF_REPO_URL = f"https://huggingface.co/{HF_REPO}"
# The reference prefers model.safetensors and falls back to ema.safetensors.
LANCE_WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
LLM_CONFIG_JSON = "llm_config.json"
IMAGE_FOLDER_NAME = "Lance_3B"
VIDEO_FOLDER_SUFFIX = "_Video"
VIT_FOLDER_NAME = "Qwen2.5-VL-ViT"
VIT_WEIGHTS = "vit.safetensors"
VIT_CONFIG_JSON = "config.json"
VAE_FILE_NAME = "Wan2.2_VAE.pth"
# ComfyUI's repackaged copy of the same weights (identical key names).
VAE_SAFETENSORS_NAME = "wan2.2_vae.safetensors"

# llm_config.json fields that name special tokens, and the token each must be.
SPECIAL_TOKEN_FIELDS = (
    ("vision_start_token_id", "<|vision_start|>"),
    ("vision_end_token_id", "<|vision_end|>"),
    ("image_token_id", "<|image_pad|>"),
    ("video_token_id", "<|video_pad|>"),
)


class CheckpointError(ValueError):
    """A model file is missing, unreadable, or disagrees with its configuration."""


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def check_shapes(file: Path, found: Shapes, expected: Shapes, source: str) -> None:
    """Raise ``CheckpointError`` unless ``found`` has exactly the names and shapes of ``expected``."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"{file}: missing tensor '{missing[0]}' (expected shape "
                              f"{format_shape(expected[missing[0]])}){_more(missing)}")
    extra = [k for k in found if k not in expected]
    if extra:
        raise CheckpointError(f"{file}: unexpected tensor '{extra[0]}' {format_shape(found[extra[0]])}"
                              f"{_more(extra)}; it is not part of the architecture that {source} describes")
    for key, shape in expected.items():
        if found[key] != shape:
            raise CheckpointError(f"{file}: tensor '{key}' has shape {format_shape(found[key])} but {source} "
                                  f"implies {format_shape(shape)}")


def _missing(path: Path) -> CheckpointError:
    return CheckpointError(f"{path}: missing file; the model download is incomplete, fetch this file again")


def _open_safetensors(path: Path) -> SafetensorsFile:
    try:
        return SafetensorsFile(path)
    except SafetensorsError as e:
        raise CheckpointError(str(e)) from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise _missing(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _config(kind, data: dict, source: str):
    try:
        return kind.from_dict(data, source)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def variant_from_folder_name(folder: Path) -> str | None:
    """What the official folder names promise: ``*_Video`` is the video model, ``Lance_3B`` the image one."""
    if folder.name.lower().endswith(VIDEO_FOLDER_SUFFIX.lower()):
        return "video"
    return "image" if folder.name == IMAGE_FOLDER_NAME else None


def _check_variant(weights: Path, found: str, n_vit: int, requested: str | None) -> None:
    expected = requested or variant_from_folder_name(weights.parent)
    if expected is None or expected == found:
        return
    evidence = f"{n_vit} {CHECKPOINT_PREFIX}* tensors" if n_vit else f"no {CHECKPOINT_PREFIX}* tensors"
    why = (f"the {expected} model was requested" if requested
           else f"its folder name '{weights.parent.name}' promises the {expected} model")
    raise CheckpointError(f"{weights}: holds the {found} model ({evidence}) but {why}")


def check_special_tokens(tokenizer: LanceTokenizer, cfg: LLMConfig, config_file: Path) -> None:
    """The token ids in ``llm_config.json`` must name the tokens the reference means by them."""
    for field, token in SPECIAL_TOKEN_FIELDS:
        try:
            found = tokenizer.token_id(token)
        except TokenizerError as e:
            raise CheckpointError(f"{e} (needed for {field} of {config_file})") from None
        if found != getattr(cfg, field):
            raise CheckpointError(f"{tokenizer.source}: token '{token}' has id {found} but {config_file} sets "
                                  f"{field} = {getattr(cfg, field)}")
    if len(tokenizer) > cfg.vocab_size:
        raise CheckpointError(f"{tokenizer.source}: {len(tokenizer)} tokens do not fit the {cfg.vocab_size} "
                              f"embedding rows set by vocab_size in {config_file}")


def check_vit_fits(vision: VisionConfig, llm: LLMConfig, vision_source: str, llm_source: str) -> None:
    """Vision features enter the LLM without a connector, so the widths must agree."""
    if vision.out_hidden_size != llm.hidden_size:
        raise CheckpointError(f"{vision_source}: out_hidden_size {vision.out_hidden_size} differs from "
                              f"hidden_size {llm.hidden_size} in {llm_source}")


def _bundled_vision_config(data: dict, config_file: Path, llm: LLMConfig, required: bool) -> VisionConfig | None:
    source = f"{config_file} (vision_config)"
    try:
        vision = VisionConfig.from_dict(data.get("vision_config") or {}, source)
    except ConfigError as e:
        if required:
            raise CheckpointError(f"{e}; it describes the bundled {CHECKPOINT_PREFIX}* tensors") from None
        return None  # the image model's vision tower is described by Qwen2.5-VL-ViT/config.json instead
    if required:
        check_vit_fits(vision, llm, source, str(config_file))
    return vision


@dataclass(frozen=True)
class LanceCheckpoint:
    """One opened ``Lance_3B`` / ``Lance_3B_Video`` folder; tensor dicts are memory-mapped views."""

    folder: Path
    weights_file: Path
    variant: str  # 'image' | 'video': whether the file bundles a vision tower
    llm_config: LLMConfig
    vision_config: VisionConfig | None  # llm_config.json's vision_config (describes vit_model.*)
    tokenizer: LanceTokenizer
    und: dict[str, torch.Tensor]
    gen: dict[str, torch.Tensor]
    vit: dict[str, torch.Tensor] | None  # video only; names without the vit_model. prefix
    stored_pos_table_shape: tuple[int, ...] | None  # informational: the table is recomputed, never loaded

    @property
    def config_file(self) -> Path:
        return self.folder / LLM_CONFIG_JSON

    @classmethod
    def open(cls, folder: str | Path, expect_variant: str | None = None) -> "LanceCheckpoint":
        """Open and validate a Lance folder. ``expect_variant`` ('image'/'video') defaults to what the
        official folder name promises (``variant_from_folder_name``)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder; expected a Lance model folder such as "
                                  f"{IMAGE_FOLDER_NAME}/ or {IMAGE_FOLDER_NAME}{VIDEO_FOLDER_SUFFIX}/")
        weights = next((folder / n for n in LANCE_WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise _missing(folder / LANCE_WEIGHT_FILES[0])
        config_file = folder / LLM_CONFIG_JSON
        config_data = _read_json(config_file)
        cfg = _config(LLMConfig, config_data, str(config_file))
        try:
            tokenizer = LanceTokenizer.from_dir(folder)
        except TokenizerError as e:
            raise CheckpointError(str(e)) from None

        st = _open_safetensors(weights)
        found = {name: entry.shape for name, entry in st.entries.items()}
        vit_keys = [k for k in found if k.startswith(CHECKPOINT_PREFIX)]
        variant = "video" if vit_keys else "image"
        _check_variant(weights, variant, len(vit_keys), expect_variant)

        und_shapes, gen_shapes = expert_shapes(cfg)
        expected = {**und_shapes, **gen_shapes}
        vision = _bundled_vision_config(config_data, config_file, cfg, required=variant == "video")
        if variant == "video":
            expected.update(vision_shapes(vision, CHECKPOINT_PREFIX))
        pos_shape = found.pop(POS_TABLE_KEY, None)
        if pos_shape is not None and (len(pos_shape) != 2 or pos_shape[1] != cfg.hidden_size):
            raise CheckpointError(f"{weights}: tensor '{POS_TABLE_KEY}' has shape {format_shape(pos_shape)} but "
                                  f"{config_file} implies [rows, {cfg.hidden_size}]")
        check_shapes(weights, found, expected, str(config_file))
        check_special_tokens(tokenizer, cfg, config_file)

        return cls(
            folder=folder, weights_file=weights, variant=variant, llm_config=cfg, vision_config=vision,
            tokenizer=tokenizer,
            und={k: st.tensor(k) for k in und_shapes},
            gen={k: st.tensor(k) for k in gen_shapes},
            vit={k[len(CHECKPOINT_PREFIX):]: st.tensor(k) for k in vit_keys} if vit_keys else None,
            stored_pos_table_shape=pos_shape,
        )


@dataclass(frozen=True)
class VitCheckpoint:
    """The ``Qwen2.5-VL-ViT`` folder: config plus memory-mapped bare-named weights."""

    folder: Path
    config: VisionConfig
    state_dict: dict[str, torch.Tensor]

    @property
    def config_file(self) -> Path:
        return self.folder / VIT_CONFIG_JSON

    @property
    def weights_file(self) -> Path:
        return self.folder / VIT_WEIGHTS

    @classmethod
    def open(cls, folder: str | Path) -> "VitCheckpoint":
        folder = Path(folder)
        config_file = folder / VIT_CONFIG_JSON
        cfg = _config(VisionConfig, _read_json(config_file), str(config_file))
        weights = folder / VIT_WEIGHTS
        if not weights.is_file():
            raise _missing(weights)
        st = _open_safetensors(weights)
        check_shapes(weights, {k: e.shape for k, e in st.entries.items()}, vision_shapes(cfg), str(config_file))
        return cls(folder=folder, config=cfg, state_dict=st.tensors())


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        raise CheckpointError(f"{path}: cannot be read as a torch.save state dict ({e}); download it again") \
            from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: holds a {type(state_dict).__name__}, not a state dict")
    return state_dict


@dataclass(frozen=True)
class VaeCheckpoint:
    path: Path
    dim: int
    dec_dim: int
    state_dict: dict[str, torch.Tensor]

    @classmethod
    def open(cls, path: str | Path) -> "VaeCheckpoint":
        """Validate a Wan 2.2 VAE (``.pth`` or ``.safetensors``) against ComfyUI's module tree (needs ComfyUI
        importable)."""
        from .vae import build_wan22_vae, wan22_widths

        path = Path(path)
        if not path.is_file():
            raise _missing(path)
        state_dict = _open_safetensors(path).tensors() if path.suffix == ".safetensors" else _torch_load(path)
        try:
            dim, dec_dim = wan22_widths(state_dict)
        except KeyError as e:
            raise CheckpointError(f"{path}: missing tensor '{e.args[0]}'; not a Wan 2.2 VAE state dict") from None
        expected = module_shapes(build_wan22_vae(dim, dec_dim))
        found = {k: tuple(v.shape) for k, v in state_dict.items()}
        check_shapes(path, found, expected, f"the Wan 2.2 VAE with dim={dim}, dec_dim={dec_dim}")
        return cls(path=path, dim=dim, dec_dim=dec_dim, state_dict=state_dict)


@dataclass(frozen=True)
class ModelsFolder:
    """What a models folder contains, found by content so renamed Lance folders are still seen."""

    root: Path
    lance_folders: tuple[Path, ...]
    vit_folder: Path | None
    vae_file: Path | None

    @classmethod
    def find(cls, root: str | Path) -> "ModelsFolder":
        root = Path(root)
        subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        lance = tuple(p for p in subdirs
                      if any((p / n).is_file() for n in (LLM_CONFIG_JSON, *LANCE_WEIGHT_FILES)))
        vit = next((p for p in subdirs if p.name == VIT_FOLDER_NAME or (p / VIT_WEIGHTS).is_file()), None)
        vae = next((root / n for n in (VAE_FILE_NAME, VAE_SAFETENSORS_NAME) if (root / n).is_file()), None)
        return cls(root=root, lance_folders=lance, vit_folder=vit, vae_file=vae)

    @property
    def empty(self) -> bool:
        return not (self.lance_folders or self.vit_folder or self.vae_file)
