"""Builds the packed samples of the seven golden tasks from their inputs (prompt, request, the sizes of
the preprocessed media) the way a node would, for the sequence and position tests; the fixtures
``gen_case`` and ``und_case`` run a test once per generation / understanding task."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lance_model.config import LLMConfig, VisionConfig
from lance_model.preprocess import pad_to_temporal_patches, patchify_with_merge
from lance_model.sequence import (EDIT_TASKS, TEXT_TO_VISUAL_TASKS, UNDERSTANDING_TASKS, PackedSample, build_edit,
                                  build_text_to_visual, build_understanding, latent_shape)
from lance_model.tokenizer import LanceTokenizer

GENERATION_TASKS = TEXT_TO_VISUAL_TASKS + EDIT_TASKS


@dataclass
class GoldenCase:
    task: str
    folder: Path
    settings: dict
    tensors: dict
    tokenizer: LanceTokenizer
    cfg: LLMConfig
    sample: PackedSample


@lru_cache(maxsize=None)
def _checkpoint(folder: Path) -> tuple[LanceTokenizer, LLMConfig]:
    return LanceTokenizer.from_dir(folder), LLMConfig.from_file(folder / "llm_config.json")


def _media_shape(settings: dict, stream: str) -> tuple[int, int, int]:
    """(frames, H, W) of the bucketed media the reference fed to the VAE or the ViT."""
    _, frames, height, width = settings["notes"][f"preproc/{stream}_in0_frameXX.png"]["shape_cthw"]
    return frames, height, width


def _vit_grid(golden_dir: Path, settings: dict) -> tuple[int, int, int]:
    vision = VisionConfig.from_file(golden_dir / "ckpt" / "Qwen2.5-VL-ViT" / "config.json")
    frames, height, width = _media_shape(settings, "vit")
    clip = pad_to_temporal_patches(torch.zeros(3, frames, height, width), vision.temporal_patch_size)
    return patchify_with_merge(clip, vision)[1]


def _target_latent(settings: dict) -> tuple[int, int, int]:
    args = settings["reference_cli_args"]
    if settings["task"] == "i2v":  # the target takes the VAE bucket of the input image
        _, height, width = _media_shape(settings, "vae")
    else:
        height, width = args["video_height"], args["video_width"]
    frames = 1 if settings["task"] == "t2i" else args["num_frames"]
    return latent_shape(frames, height, width)


def golden_case(golden_dir: Path, task: str) -> GoldenCase:
    folder = golden_dir / task
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "tensors.safetensors"))
    tokenizer, cfg = _checkpoint(golden_dir / settings["checkpoint"])
    prompt = (folder / "inputs" / "prompt.txt").read_text(encoding="utf-8")
    if task in TEXT_TO_VISUAL_TASKS:
        sample = build_text_to_visual(task, tokenizer, cfg, prompt, _target_latent(settings))
    elif task in EDIT_TASKS:
        source = latent_shape(*_media_shape(settings, "vae"))
        sample = build_edit(task, tokenizer, cfg, prompt, _vit_grid(golden_dir, settings), source)
    else:
        request = json.loads((folder / "inputs" / "request.json").read_text(encoding="utf-8"))
        (entry,) = request.values()
        instruction, question, _answer = entry["interleave_array"][1]
        sample = build_understanding(task, tokenizer, cfg, question, _vit_grid(golden_dir, settings), instruction)
    return GoldenCase(task, folder, settings, tensors, tokenizer, cfg, sample)


@pytest.fixture(scope="module", params=GENERATION_TASKS)
def gen_case(request, golden_dir) -> GoldenCase:
    return golden_case(golden_dir, request.param)


@pytest.fixture(scope="module", params=UNDERSTANDING_TASKS)
def und_case(request, golden_dir) -> GoldenCase:
    return golden_case(golden_dir, request.param)
