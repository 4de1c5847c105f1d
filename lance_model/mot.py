"""The mixture-of-transformers LLM as two separable experts.

The official checkpoint stores both experts interleaved under ``language_model.model.layers.L``
(the generation twin of every per-layer weight carries a ``_moe_gen`` suffix). Here each expert is
its own ``nn.Module`` whose ``state_dict`` keys are exactly the checkpoint keys it owns, so the
node layer can hand each expert to ComfyUI's memory manager separately and loading needs no
renaming:

* ``UnderstandingExpert``: ``embed_tokens``, the und layers, ``norm``, ``lm_head``.
* ``GenerationExpert``: the ``_moe_gen`` layers, ``norm_moe_gen``, ``time_embedder``, ``vae2llm``,
  ``llm2vae``.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import LATENT, LLMConfig
from .layers import RMSNorm, SwiGLU
from .ops import TorchOps

UND_SUFFIX = ""
GEN_SUFFIX = "_moe_gen"


class ExpertLayer(nn.Module):
    """One decoder layer's weights for one expert (names carry the expert's suffix)."""

    def __init__(self, cfg: LLMConfig, suffix: str, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.suffix = suffix
        d, hd = cfg.hidden_size, cfg.head_dim
        kv = cfg.num_key_value_heads * hd
        attn = nn.Module()
        attn.add_module("q_proj" + suffix, ops.Linear(d, cfg.num_attention_heads * hd, bias=True, device=device, dtype=dtype))
        attn.add_module("k_proj" + suffix, ops.Linear(d, kv, bias=True, device=device, dtype=dtype))
        attn.add_module("v_proj" + suffix, ops.Linear(d, kv, bias=True, device=device, dtype=dtype))
        attn.add_module("o_proj" + suffix, ops.Linear(cfg.num_attention_heads * hd, d, bias=False, device=device, dtype=dtype))
        attn.add_module("q_norm" + suffix, RMSNorm(hd, cfg.rms_norm_eps, device=device, dtype=dtype))
        attn.add_module("k_norm" + suffix, RMSNorm(hd, cfg.rms_norm_eps, device=device, dtype=dtype))
        self.self_attn = attn
        self.add_module("mlp" + suffix, SwiGLU(d, cfg.intermediate_size, bias=False, ops=ops, device=device, dtype=dtype))
        self.add_module("input_layernorm" + suffix, RMSNorm(d, cfg.rms_norm_eps, device=device, dtype=dtype))
        self.add_module("post_attention_layernorm" + suffix,
                        RMSNorm(d, cfg.rms_norm_eps, device=device, dtype=dtype))

    def _attn(self, name: str) -> nn.Module:
        return getattr(self.self_attn, name + self.suffix)

    @property
    def q_proj(self):
        return self._attn("q_proj")

    @property
    def k_proj(self):
        return self._attn("k_proj")

    @property
    def v_proj(self):
        return self._attn("v_proj")

    @property
    def o_proj(self):
        return self._attn("o_proj")

    @property
    def q_norm(self):
        return self._attn("q_norm")

    @property
    def k_norm(self):
        return self._attn("k_norm")

    @property
    def ffn(self):
        return getattr(self, "mlp" + self.suffix)

    @property
    def input_norm(self):
        return getattr(self, "input_layernorm" + self.suffix)

    @property
    def post_attention_norm(self):
        return getattr(self, "post_attention_layernorm" + self.suffix)


def _language_model(cfg: LLMConfig, suffix: str, ops, device, dtype) -> tuple[nn.Module, nn.Module]:
    language_model = nn.Module()
    model = nn.Module()
    model.layers = nn.ModuleList(
        ExpertLayer(cfg, suffix, ops=ops, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers))
    language_model.model = model
    return language_model, model


class UnderstandingExpert(nn.Module):
    """Text/ViT expert plus the shared token embedding and the LM head."""

    def __init__(self, cfg: LLMConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.language_model, model = _language_model(cfg, UND_SUFFIX, ops, device, dtype)
        model.embed_tokens = ops.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
        model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.language_model.lm_head = ops.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device, dtype=dtype)

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.model.layers

    @property
    def embed_tokens(self) -> nn.Module:
        return self.language_model.model.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.model.norm

    @property
    def lm_head(self) -> nn.Module:
        return self.language_model.lm_head


class TimestepEmbedder(nn.Module):
    """``mlp.0`` (256→D), SiLU, ``mlp.2`` (D→D) applied to a sinusoid of the raw timestep."""

    def __init__(self, hidden_size: int, frequency_dim: int = LATENT.time_frequency_dim, ops=TorchOps,
                 device=None, dtype=None):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            ops.Linear(frequency_dim, hidden_size, bias=True, device=device, dtype=dtype),
            nn.SiLU(),
            ops.Linear(hidden_size, hidden_size, bias=True, device=device, dtype=dtype),
        )


class GenerationExpert(nn.Module):
    """Latent-token expert plus the latent glue (time embedder, vae2llm, llm2vae)."""

    def __init__(self, cfg: LLMConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.language_model, model = _language_model(cfg, GEN_SUFFIX, ops, device, dtype)
        model.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.time_embedder = TimestepEmbedder(cfg.hidden_size, ops=ops, device=device, dtype=dtype)
        self.vae2llm = ops.Linear(LATENT.channels, cfg.hidden_size, bias=True, device=device, dtype=dtype)
        self.llm2vae = ops.Linear(cfg.hidden_size, LATENT.channels, bias=True, device=device, dtype=dtype)

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.model.norm_moe_gen


def pos_table_rows(max_num_frames: int = LATENT.max_num_frames, max_latent_size: int = LATENT.max_latent_size) -> int:
    """Rows of the fixed 3-D sin-cos table the reference builds (and the checkpoint stores)."""
    return (max_num_frames // LATENT.temporal_factor + 1) * max_latent_size * max_latent_size


def build_experts(cfg: LLMConfig, ops=TorchOps, device="meta", dtype=torch.bfloat16):
    return (UnderstandingExpert(cfg, ops=ops, device=device, dtype=dtype),
            GenerationExpert(cfg, ops=ops, device=device, dtype=dtype))
