"""API-format graphs and model files for the reliability tests: the Lance tasks at tiny sizes, and the
broken model files a user might have (truncated, corrupt, half-copied, a Wan 2.1 VAE)."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from api_graph import ApiGraph
from safetensors.torch import save_file

from lance_model.checkpoint import VAE_FILE_NAME
from lance_model.comfy_lookup import import_comfy_module
from lance_model.tiny import TinyModels

WAN21_VAE_NAME = "wan_2.1_vae.safetensors"
PROMPT = "A red fox jumps over the lazy dog in the snow."
INSTRUCTION = "Make the sky pink."
QUESTION = "What is in the picture?"
SMALL_PRESET = "image_256res"


class Graph(ApiGraph):
    """The Lance tasks' nodes at the reliability tests' tiny sizes."""

    def text_encode(self, model, prompt: str = PROMPT, task: str = "text_to_image") -> list:
        return [self.add("LanceTextEncode", model=model, prompt=prompt, task=task), 0]

    def empty_latent(self, width: int = 32, height: int = 32, frames: int = 1) -> list:
        return [self.add("LanceEmptyLatent", width=width, height=height, frames=frames), 0]

    def sampler(self, model, cond, latent, steps: int = 1, seed: int = 1) -> list:
        return [self.add("LanceSampler", model=model, cond=cond, latent=latent, seed=seed, steps=steps, cfg=4.0,
                         shift=3.5, cfg_start=0.4, cfg_end=1.0, renorm="global", noise="comfy"), 0]

    def edit(self, model, vae, image, kind: str = "image", instruction: str = INSTRUCTION, fps: float = 12.0):
        node = self.add("LanceEditEncode", model=model, vae=vae, image=image, instruction=instruction, kind=kind,
                        fps=fps, resolution=SMALL_PRESET)
        return [node, 0], [node, 1]

    def caption(self, model, image, kind: str = "image", question: str = QUESTION, max_new_tokens: int = 4,
                sampling: str = "off") -> str:
        return self.add("LanceCaptioner", model=model, image=image, question=question, kind=kind, fps=12.0,
                        resolution=SMALL_PRESET, instruction="", max_new_tokens=max_new_tokens, sampling=sampling,
                        temperature=1.0, top_p=1.0, seed=0)

    def save_latent(self, samples, prefix: str = "reliability/latent") -> str:
        return self.add("SaveLatent", samples=samples, filename_prefix=prefix)

    def load_image(self, name: str) -> list:
        return [self.add("LoadImage", image=name), 0]


def t2i(steps: int = 1, side: int = 32, prompt: str = PROMPT, seed: int = 1) -> tuple[Graph, str]:
    """Text to image ending in SaveLatent; returns the graph and the sampler's node id."""
    graph = Graph()
    model = graph.loader()
    sampler = graph.sampler(model, graph.text_encode(model, prompt), graph.empty_latent(side, side), steps, seed)
    graph.save_latent(sampler)
    return graph, sampler[0]


# ------------------------------------------------------------------------------------------- model files


def link_models(models: TinyModels, models_dir: Path) -> None:
    """The tiny model set into a server's ``lance`` and ``vae`` folders."""
    for folder in (models.image, models.video, models.vit):
        (models_dir / "lance" / folder.name).symlink_to(folder, target_is_directory=True)
    (models_dir / "vae" / VAE_FILE_NAME).symlink_to(models.vae)


def truncated_copy(folder: Path, dest: Path) -> Path:
    """``folder`` with its model.safetensors cut in half, as an interrupted copy leaves it."""
    shutil.copytree(folder, dest)
    weights = dest / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    return dest


def corrupt_copy(folder: Path, dest: Path) -> Path:
    """``folder`` whose model.safetensors header is overwritten with garbage."""
    shutil.copytree(folder, dest)
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00\xff" * 16
    weights.write_bytes(bytes(data))
    return dest


def config_only_copy(folder: Path, dest: Path) -> Path:
    """``folder`` without its model.safetensors: a download that stopped after the small files."""
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("model.safetensors"))
    return dest


def write_wan21_vae(path: Path, dim: int = 8) -> Path:
    """A random Wan 2.1 VAE (16 latent channels) that ComfyUI's Load VAE accepts; narrow (``dim``) so it
    is small: ComfyUI reads the Wan 2.1 width from ``decoder.head.0.gamma``."""
    wan21 = import_comfy_module("comfy.ldm.wan.vae")
    torch.manual_seed(0)
    module = wan21.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True], dropout=0.0)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path
