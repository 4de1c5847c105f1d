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

from .attention import attention
from .config import LATENT, LLMConfig
from .kv_cache import KVCache
from .latent import embed_latent_tokens, timestep_sinusoid
from .layers import RMSNorm, SwiGLU
from .ops import TorchOps
from .rope import apply_rope, mrope_cos_sin, mrope_inv_freq

PREFIX_SPLIT_MODES = ("causal", "full", "full_noise")
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

    def forward(self, t: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        # The sinusoid is fp32; the MLP runs in the compute dtype, as under the reference's autocast.
        return self.mlp(timestep_sinusoid(t, self.frequency_dim).to(dtype))


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


class _Routing:
    """Local row indices of a chunk's und and gen tokens (a chunk with gen tokens runs in ``gen`` mode)."""

    def __init__(self, gen_rows: torch.Tensor, length: int, device):
        is_gen = torch.zeros(length, dtype=torch.bool, device=device)
        is_gen[gen_rows.to(device)] = True
        self.und = (~is_gen).nonzero().flatten()
        self.gen = is_gen.nonzero().flatten()


class MoTDecoder:
    """Forward passes of the mixture-of-transformers LLM over a chunk of tokens after a cached prefix.

    Tokens are routed by type: rows listed in ``gen_rows`` (VAE latent tokens) use the generation
    expert, all others (text, ViT tokens, the markers around every visual block) the understanding
    expert; attention is shared. A chunk with gen rows runs in the reference's ``gen`` mode (QK-norm
    and RoPE in fp32), otherwise in ``und`` mode (bf16 throughout), spec §8.

    Each expert computes on its own device, in ``dtype`` whatever its weights are stored in (ComfyUI's
    cast-on-the-fly ops handle fp8/fp32 storage); activations move, weights never do. The device
    defaults to where the expert's first parameter lives; under ComfyUI pass the patchers' load
    devices, since partially loaded weights may sit on the CPU. The residual stream, attention and the
    KV cache live on the und device.
    """

    def __init__(self, und: UnderstandingExpert, gen: GenerationExpert | None = None,
                 dtype: torch.dtype = torch.bfloat16, und_device=None, gen_device=None):
        self.und, self.gen, self.dtype = und, gen, dtype
        self.config = und.config
        self.und_device = torch.device(und_device) if und_device is not None else _param_device(und)
        self.gen_device = (torch.device(gen_device) if gen_device is not None
                           else _param_device(gen) if gen is not None else None)
        self.inv_freq = mrope_inv_freq(self.config.head_dim, self.config.rope_theta)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    @torch.no_grad()
    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.und.embed_tokens(token_ids.to(self.und_device)).to(self.dtype)

    @torch.no_grad()
    def embed_latents(self, x: torch.Tensor, t: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """LLM rows for latent tokens ``x`` ``[N, C]`` at flow times ``t`` ``[N]`` (see ``latent``)."""
        rows = embed_latent_tokens(self._require_gen(), x.to(self.gen_device), t, pids, self.dtype)
        return rows.to(self.und_device)

    @torch.no_grad()
    def prefill(self, embeds, positions, cache: KVCache, *, causal: bool, gen_rows=None) -> None:
        """Append one split (``embeds`` ``[L, D]``, MRoPE ``positions`` ``[3, L]``) to ``cache``."""
        self._layers(embeds, positions, cache, causal=causal, gen_rows=gen_rows, update_cache=True)

    @torch.no_grad()
    def prefill_splits(self, embeds, positions, splits, gen_token_mask, cache: KVCache,
                       skip_token_mask=None) -> int:
        """Prefill the splits ``[(attn_mode, length), …]`` of a sequence up to its first ``noise`` split.

        ``causal`` splits attend causally, ``full``/``full_noise`` bidirectionally; tokens flagged in
        ``gen_token_mask`` ``[L]`` use the generation expert. Splits whose tokens are flagged in
        ``skip_token_mask`` are left out (the unconditional branch drops the caption) while the other
        tokens keep the ``positions`` given, as the reference's cached uncond prefix does. Returns the
        index of the first token not prefilled (the noise split's start, or L).
        """
        start = 0
        for mode, length in splits:
            if mode == "noise":
                break
            if mode not in PREFIX_SPLIT_MODES:
                raise ValueError(f"unknown split mode {mode!r}; expected one of {PREFIX_SPLIT_MODES + ('noise',)}")
            span = slice(start, start + length)
            skipped = skip_token_mask[span] if skip_token_mask is not None else None
            if skipped is not None and skipped.any() and not skipped.all():
                raise ValueError(f"split at tokens {start}..{start + length - 1} is only partly dropped from the "
                                 "unconditional branch; dropped (caption) tokens must form whole splits")
            if skipped is None or not skipped.any():
                gen_rows = gen_token_mask[span].nonzero().flatten()
                self.prefill(embeds[span], positions[:, span], cache, causal=mode == "causal", gen_rows=gen_rows)
            start += length
        return start

    @torch.no_grad()
    def velocity(self, embeds, positions, cache: KVCache, gen_rows: torch.Tensor) -> torch.Tensor:
        """Flow velocity ``[len(gen_rows), C]`` of a bidirectional block read against ``cache``."""
        hidden = self._layers(embeds, positions, cache, causal=False, gen_rows=gen_rows, update_cache=False)
        gen = self._require_gen()
        latent_hidden = hidden[gen_rows.to(hidden.device)].to(self.gen_device)
        return gen.llm2vae(gen.final_norm(latent_hidden).to(self.dtype))

    @torch.no_grad()
    def logits(self, embeds, positions, cache: KVCache) -> torch.Tensor:
        """Next-token logits ``[L, vocab]`` of a causal text chunk, appended to ``cache``."""
        hidden = self._layers(embeds, positions, cache, causal=True, gen_rows=None, update_cache=True)
        return self.und.lm_head(self.und.final_norm(hidden).to(self.dtype))

    def decode_step(self, token_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed text tokens ``[L]`` at ``positions`` ``[3, L]``; returns their next-token logits."""
        return self.logits(self.embed_tokens(token_ids), positions, cache)

    def _require_gen(self) -> GenerationExpert:
        if self.gen is None:
            raise ValueError("this pass contains VAE latent tokens but MoTDecoder was built without the "
                             "generation expert; pass gen= when creating it")
        return self.gen

    def _layers(self, embeds, positions, cache, *, causal, gen_rows, update_cache):
        """All decoder layers; returns the last hidden states before the final (per-expert) norm."""
        hidden = embeds.to(self.und_device, self.dtype)
        if positions.shape[-1] != hidden.shape[0]:
            raise ValueError(f"{hidden.shape[0]} tokens but positions for {positions.shape[-1]}")
        routing = None
        if gen_rows is not None and gen_rows.numel() > 0:
            self._require_gen()
            routing = _Routing(gen_rows, hidden.shape[0], hidden.device)
        cos, sin = mrope_cos_sin(positions.to(hidden.device), self.inv_freq, self.config.mrope_section,
                                 self.dtype)
        for index in range(self.config.num_hidden_layers):
            hidden = self._layer(index, hidden, cos, sin, cache, causal, routing, update_cache)
        return hidden

    def _layer(self, index, hidden, cos, sin, cache, causal, routing, update_cache):
        cfg, dtype = self.config, self.dtype
        und_layer = self.und.layers[index]
        gen_layer = self.gen.layers[index] if routing is not None else None
        qk_dtype = torch.float32 if routing is not None else dtype

        def qkv(layer):
            def project(x):
                x = layer.input_norm(x).to(dtype)
                q = layer.q_proj(x).unflatten(-1, (cfg.num_attention_heads, cfg.head_dim))
                k = layer.k_proj(x).unflatten(-1, (cfg.num_key_value_heads, cfg.head_dim))
                v = layer.v_proj(x).unflatten(-1, (cfg.num_key_value_heads, cfg.head_dim))
                return layer.q_norm(q.to(qk_dtype)).to(qk_dtype), layer.k_norm(k.to(qk_dtype)).to(qk_dtype), v
            return project

        q, k, v = self._routed(hidden, routing, qkv(und_layer), qkv(gen_layer) if gen_layer else None)
        q = apply_rope(q, cos, sin).to(dtype)
        k = apply_rope(k, cos, sin).to(dtype)
        v = v.to(dtype)
        past_k, past_v = cache.layer(index)
        if past_k is not None:
            k, v = torch.cat([past_k, k]), torch.cat([past_v, v])
        if update_cache:
            cache.store(index, k, v)
        attn = attention(q, k, v, causal).flatten(1)

        hidden = hidden + self._routed(attn, routing, und_layer.o_proj, gen_layer.o_proj if gen_layer else None)

        def mlp(layer):
            return lambda x: layer.ffn(layer.post_attention_norm(x).to(dtype))

        return hidden + self._routed(hidden, routing, mlp(und_layer), mlp(gen_layer) if gen_layer else None)

    def _routed(self, x, routing, und_fn, gen_fn):
        """Apply ``und_fn`` to the und rows and ``gen_fn`` to the gen rows of ``x`` on each expert's
        device; reassemble the result(s) in row order on ``x``'s device."""
        if routing is None:
            return _move(und_fn(x.to(self.und_device)), x.device)
        und_out = _move(und_fn(x[routing.und].to(self.und_device)), x.device)
        gen_out = _move(gen_fn(x[routing.gen].to(self.gen_device)), x.device)
        if isinstance(und_out, torch.Tensor):
            return _interleave(und_out, gen_out, routing, x.shape[0])
        return tuple(_interleave(u, g, routing, x.shape[0]) for u, g in zip(und_out, gen_out))


def _interleave(und_part, gen_part, routing, length):
    out = und_part.new_empty((length,) + tuple(und_part.shape[1:]))
    out[routing.und] = und_part
    out[routing.gen] = gen_part.to(und_part.dtype)
    return out


def _move(result, device):
    if isinstance(result, torch.Tensor):
        return result.to(device)
    return tuple(t.to(device) for t in result)


def _param_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    raise ValueError(f"{type(module).__name__} has no parameters to infer its device from; pass the device")
