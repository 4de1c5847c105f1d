"""Golden-fixture cases for the MoT decoder, the flow sampler and x2t decoding.

Everything a case needs is read from the stored reference tensors (sequence, positions, ViT output,
clean latents, noise), so these tests exercise only the decoder, the latent glue and the sampler.
The tests run the cases on the CPU in bf16, as the reference did; ``bench/gpu_agreement.py`` also
runs them on a GPU and in fp32 (``device``, ``dtype``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from lance_model.config import LATENT, LLMConfig
from lance_model.kv_cache import KVCache
from lance_model.latent import latent_pos_ids
from lance_model.mot import MoTDecoder, build_experts
from lance_model.sampling import Branch, FlowSettings, NoiseBlock

GEN_TASKS = ("t2i", "t2v", "i2v", "image_edit", "video_edit")
X2T_TASKS = ("x2t_image", "x2t_video")


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ on ``expected``'s device; infinite when the shapes differ (no
    broadcasting)."""
    if actual.shape != expected.shape:
        return float("inf")
    actual, expected = actual.to(expected.device).float(), expected.float()
    return float((actual - expected).norm() / expected.norm())


@lru_cache(maxsize=None)
def load_decoder(ckpt_dir: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16) -> MoTDecoder:
    """The checkpoint's decoder with its weights on ``device`` in ``dtype``, computing in ``dtype``."""
    cfg = LLMConfig.from_file(Path(ckpt_dir) / "llm_config.json")
    und, gen = build_experts(cfg, dtype=dtype)
    state = load_file(str(Path(ckpt_dir) / "model.safetensors"))
    for expert in (und, gen):
        own = expert.state_dict().keys()
        expert.load_state_dict({k: state[k].to(device, dtype) for k in own}, strict=True, assign=True)
    return MoTDecoder(und, gen, dtype=dtype)


@lru_cache(maxsize=None)
def _task_files(golden_dir: str, task: str):
    folder = Path(golden_dir) / task
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    return settings, load_file(str(folder / "tensors.safetensors"))


def _prefix_embeddings(decoder: MoTDecoder, tensors) -> torch.Tensor:
    embeds = decoder.embed_tokens(tensors["seq.packed_text_ids"])
    if "vit.output_0" in tensors:
        embeds[tensors["seq.packed_vit_token_indexes"]] = tensors["vit.output_0"].to(embeds)
    return embeds


@dataclass
class GenCase:
    task: str
    decoder: MoTDecoder
    tensors: dict
    block: NoiseBlock
    cond: Branch
    uncond: Branch
    x_initial: torch.Tensor   # latents of the noise block [N, 48], bf16 (stored), on the CPU
    updated_rows: torch.Tensor  # block-local rows the sampler moves
    block_offset: int  # rows of the sample's VAE tokens that precede the block (edit source)
    settings: FlowSettings


@lru_cache(maxsize=None)
def gen_case(golden_dir: str, task: str, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.bfloat16) -> GenCase:
    """The task's noise block and both branches' prefilled caches, by ``load_decoder(…, device, dtype)``.
    The stored tensors and the block's latents stay on the CPU (the decoder moves its inputs)."""
    settings, tensors = _task_files(golden_dir, task)
    decoder = load_decoder(str(Path(golden_dir) / settings["checkpoint"]), device, dtype)
    embeds = _prefix_embeddings(decoder, tensors)
    length = embeds.shape[0]

    # Every VAE element numbers its table rows from 0; condition latents enter at t = 0.
    grids = [((t - 1) // LATENT.temporal_factor + 1, h // LATENT.spatial_factor, w // LATENT.spatial_factor)
             for t, h, w in tensors["seq.video_sizes"].tolist()]
    pids = torch.cat([latent_pos_ids(*g) for g in grids])
    x_all = tensors["gen.x_t_initial"]
    t_all = torch.zeros(x_all.shape[0])
    t_all[tensors["gen.updated_rows"]] = 1.0
    vae_index = tensors["seq.packed_vae_token_indexes"]
    embeds[vae_index] = decoder.embed_latents(x_all, t_all, pids)
    is_vae = torch.zeros(length, dtype=torch.bool)
    is_vae[vae_index] = True

    splits = list(zip(settings["attn_modes"], settings["split_lens"]))
    caption = tensors["seq.sample_modality"] == 0
    cond_cache, uncond_cache = decoder.new_cache(), decoder.new_cache()
    start = decoder.prefill_splits(embeds, tensors["pos.cond"], splits, is_vae, cond_cache)
    decoder.prefill_splits(embeds, tensors["pos.cond"], splits, is_vae, uncond_cache, skip_token_mask=caption)
    block_len = settings["split_lens"][[m for m, _ in splits].index("noise")]
    uncond_start = len(uncond_cache)

    n_block = block_len - 2
    offset = x_all.shape[0] - n_block
    block = NoiseBlock(marker_embeds=embeds[[start, start + block_len - 1]], pids=pids[offset:])
    args = settings["reference_cli_args"]
    return GenCase(
        task=task, decoder=decoder, tensors=tensors, block=block,
        cond=Branch(cond_cache, tensors["pos.cond"][:, start:start + block_len]),
        uncond=Branch(uncond_cache, tensors["pos.uncond"][:, uncond_start:uncond_start + block_len]),
        x_initial=x_all[offset:], updated_rows=tensors["gen.updated_rows"] - offset, block_offset=offset,
        settings=FlowSettings(steps=args["validation_num_timesteps"], shift=args["validation_timestep_shift"],
                              cfg_scale=args["cfg_text_scale"], cfg_interval=tuple(settings["cfg_interval"])),
    )


@dataclass
class X2TCase:
    decoder: MoTDecoder
    tensors: dict
    cache: KVCache  # the prompt, prefilled
    context_len: int  # prompt tokens prefilled; the prompt's last token is fed by decode step 0
    vocab_limit: int
    stop_token: int


def x2t_case(golden_dir: str, task: str, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.bfloat16) -> X2TCase:
    """A fresh case (its cache is consumed by decoding) with the prompt prefilled by
    ``load_decoder(…, device, dtype)``."""
    settings, tensors = _task_files(golden_dir, task)
    ckpt = Path(golden_dir) / settings["checkpoint"]
    decoder = load_decoder(str(ckpt), device, dtype)
    prompt_len = int(tensors["seq.ce_loss_indexes"][0]) + 1
    context_len = prompt_len - 1
    embeds = _prefix_embeddings(decoder, tensors)[:context_len]
    splits, start = [], 0
    for mode, length in zip(settings["attn_modes"], settings["split_lens"]):
        length = min(length, context_len - start)
        if length > 0:
            splits.append((mode, length))
        start += length
    positions = tensors["pos.prompt_plus_256_pads"]
    cache = decoder.new_cache()
    decoder.prefill_splits(embeds, positions[:, :context_len], splits, torch.zeros(context_len, dtype=torch.bool),
                           cache)
    tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    return X2TCase(decoder, tensors, cache, context_len, vocab_limit=tokenizer.get_vocab_size(with_added_tokens=True),
                   stop_token=tokenizer.token_to_id("<|im_end|>"))
