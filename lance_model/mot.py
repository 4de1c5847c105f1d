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

from dataclasses import dataclass

import torch
from torch import nn

from . import fused_ops
from .attention_backends import attention_backend
from .config import LATENT, LLMConfig
from .cuda_graphs import graphs_enabled, resident_on
from .kv_cache import KVCache
from .latent import embed_latent_tokens, latent_pos_embedding, timestep_sinusoid
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
    """The rows of a chunk each expert takes, as runs of consecutive rows: a latent block is one run, so
    routed calls slice and concatenate instead of gathering and scattering, and routing needs no
    device-to-host sync. A chunk with gen rows runs in ``gen`` mode."""

    def __init__(self, gen_rows: torch.Tensor, length: int):
        is_gen = torch.zeros(length, dtype=torch.bool)
        is_gen[gen_rows.cpu()] = True
        edges = [0] + (torch.nonzero(is_gen[1:] != is_gen[:-1]).flatten() + 1).tolist() + [length]
        self.runs = [(slice(a, b), bool(is_gen[a])) for a, b in zip(edges[:-1], edges[1:])]
        self.und = [rows for rows, gen in self.runs if not gen]
        self.gen = [rows for rows, gen in self.runs if gen]


@dataclass(eq=False)
class PassLayout:
    """What a pass over a chunk needs besides its inputs and cache: the MRoPE tables ``[L, head_dim]``
    and the expert routing (None: und only). The sampler computes it once per branch and reuses it for
    every step, since the noise block keeps its positions."""

    cos: torch.Tensor
    sin: torch.Tensor
    routing: _Routing | None
    fused: bool = False   # element-wise chains as fused kernels (see ``fused_ops``)


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
    KV cache live on the und device; ``attention`` names the kernel (``attention_backends``).
    """

    def __init__(self, und: UnderstandingExpert, gen: GenerationExpert | None = None,
                 dtype: torch.dtype = torch.bfloat16, und_device=None, gen_device=None, attention: str = "auto"):
        self.und, self.gen, self.dtype = und, gen, dtype
        self.config = und.config
        self.und_device = torch.device(und_device) if und_device is not None else _param_device(und)
        self.gen_device = (torch.device(gen_device) if gen_device is not None
                           else _param_device(gen) if gen is not None else None)
        self.attention = attention_backend(attention, self.und_device)
        self.inv_freq = mrope_inv_freq(self.config.head_dim, self.config.rope_theta)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def graphs_usable(self, with_generation: bool) -> bool:
        """Whether passes may be replayed as CUDA graphs: both experts' weights resident on one CUDA
        device and an attention kernel that can be captured (see ``cuda_graphs``)."""
        if not graphs_enabled() or not self.attention.graph_safe:
            return False
        if with_generation and (self.gen is None or self.gen_device != self.und_device):
            return False
        return resident_on(self.und_device, self.und, self.gen if with_generation else None)

    @torch.no_grad()
    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.und.embed_tokens(token_ids.to(self.und_device)).to(self.dtype)

    @torch.no_grad()
    def latent_positions(self, pids: torch.Tensor) -> torch.Tensor:
        """Position-table rows of latent tokens ``pids`` on the gen device, in the compute dtype: a
        constant of a sampling run, to pass to ``embed_latents`` as ``pos``."""
        return latent_pos_embedding(pids.to(self.gen_device), self.config.hidden_size, self.dtype)

    @torch.no_grad()
    def embed_latents(self, x: torch.Tensor, t: torch.Tensor, pids: torch.Tensor | None = None, *,
                      pos: torch.Tensor | None = None) -> torch.Tensor:
        """LLM rows for latent tokens ``x`` ``[N, C]`` at flow times ``t`` ``[N]`` (see ``latent``), placed
        by their table rows ``pids`` or by precomputed ``pos`` (``latent_positions``)."""
        gen = self._require_gen()
        if pos is None:
            pos = self.latent_positions(pids)
        rows = embed_latent_tokens(gen, x.to(self.gen_device), t, dtype=self.dtype, pos=pos)
        return rows.to(self.und_device)

    def prepare_pass(self, positions: torch.Tensor, gen_rows: torch.Tensor | None = None,
                     fused: bool = False) -> PassLayout:
        """The layout of a pass over a chunk at MRoPE ``positions`` ``[3, L]`` with latent rows ``gen_rows``;
        ``fused``: use fused element-wise kernels where the device has them (for passes whose host time is
        hidden: CUDA graphs, long blocks)."""
        routing = None
        if gen_rows is not None and gen_rows.numel() > 0:
            self._require_gen()
            routing = _Routing(gen_rows, positions.shape[-1])
        cos, sin = mrope_cos_sin(positions.to(self.und_device), self.inv_freq, self.config.mrope_section,
                                 self.dtype)
        return PassLayout(cos, sin, routing, fused and fused_ops.fused_ops_usable(self.und_device))

    @torch.no_grad()
    def prefill(self, embeds, positions, cache: KVCache, *, causal: bool, gen_rows=None) -> None:
        """Append one split (``embeds`` ``[L, D]``, MRoPE ``positions`` ``[3, L]``) to ``cache``."""
        self._layers(embeds, self.prepare_pass(positions, gen_rows), cache, causal=causal, update_cache=True)

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
    def velocity(self, embeds, positions, cache: KVCache, gen_rows: torch.Tensor, *,
                 layout: PassLayout | None = None) -> torch.Tensor:
        """Flow velocity ``[len(gen_rows), C]`` of a bidirectional block read against ``cache``; ``layout``:
        the block's ``prepare_pass(positions, gen_rows)``, when already computed."""
        if layout is None:
            layout = self.prepare_pass(positions, gen_rows)
        if layout.routing is None:
            raise ValueError("velocity needs the block's latent rows (gen_rows); got none")
        hidden = self._layers(embeds, layout, cache, causal=False, update_cache=False)
        gen = self._require_gen()
        latent_hidden = _take(hidden, layout.routing.gen).to(self.gen_device)
        return gen.llm2vae(gen.final_norm(latent_hidden).to(self.dtype))

    @torch.no_grad()
    def logits(self, embeds, positions, cache: KVCache, *, layout: PassLayout | None = None) -> torch.Tensor:
        """Next-token logits ``[L, vocab]`` of a causal text chunk, appended to ``cache``."""
        if layout is None:
            layout = self.prepare_pass(positions)
        hidden = self._layers(embeds, layout, cache, causal=True, update_cache=True)
        return self.und.lm_head(self.und.final_norm(hidden).to(self.dtype))

    def decode_step(self, token_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed text tokens ``[L]`` at ``positions`` ``[3, L]``; returns their next-token logits."""
        return self.logits(self.embed_tokens(token_ids), positions, cache)

    def _require_gen(self) -> GenerationExpert:
        if self.gen is None:
            raise ValueError("this pass contains VAE latent tokens but MoTDecoder was built without the "
                             "generation expert; pass gen= when creating it")
        return self.gen

    def _layers(self, embeds, layout: PassLayout, cache, *, causal, update_cache):
        """All decoder layers; returns the last hidden states before the final (per-expert) norm.
        ``cache`` is a ``KVCache`` or anything with its ``attend`` (the decoder's in-place buffers)."""
        hidden = embeds.to(self.und_device, self.dtype)
        if layout.cos.shape[0] != hidden.shape[0]:
            raise ValueError(f"{hidden.shape[0]} tokens but positions for {layout.cos.shape[0]}")
        for index in range(self.config.num_hidden_layers):
            hidden = self._layer(index, hidden, layout, cache, causal, update_cache)
        return hidden

    def _layer(self, index, hidden, layout, cache, causal, update_cache):
        cfg, dtype, routing = self.config, self.dtype, layout.routing
        und_layer = self.und.layers[index]
        gen_layer = self.gen.layers[index] if routing is not None else None
        qk_dtype = torch.float32 if routing is not None else dtype
        norm = fused_ops.rms_norm if layout.fused else _rms_norm
        rotate = fused_ops.rope if layout.fused else _rope
        ffn = fused_ops.swiglu if layout.fused else _swiglu

        def qkv(layer):
            def project(x):
                x = norm(layer.input_norm, x, dtype)
                q = layer.q_proj(x).unflatten(-1, (cfg.num_attention_heads, cfg.head_dim))
                k = layer.k_proj(x).unflatten(-1, (cfg.num_key_value_heads, cfg.head_dim))
                v = layer.v_proj(x).unflatten(-1, (cfg.num_key_value_heads, cfg.head_dim))
                return norm(layer.q_norm, q, qk_dtype), norm(layer.k_norm, k, qk_dtype), v
            return project

        q, k, v = self._routed(hidden, routing, qkv(und_layer), qkv(gen_layer) if gen_layer else None)
        q = rotate(q, layout.cos, layout.sin, dtype)
        k = rotate(k, layout.cos, layout.sin, dtype)
        attn = cache.attend(index, q, k, v.to(dtype), causal, keep=update_cache, backend=self.attention).flatten(1)

        hidden = hidden + self._routed(attn, routing, und_layer.o_proj, gen_layer.o_proj if gen_layer else None)

        def mlp(layer):
            return lambda x: ffn(layer.ffn, norm(layer.post_attention_norm, x, dtype))

        return hidden + self._routed(hidden, routing, mlp(und_layer), mlp(gen_layer) if gen_layer else None)

    def _routed(self, x, routing, und_fn, gen_fn):
        """Apply ``und_fn`` to the und rows and ``gen_fn`` to the gen rows of ``x`` on each expert's
        device; reassemble the result(s) in row order on ``x``'s device."""
        if routing is None:
            return _move(und_fn(x.to(self.und_device)), x.device)
        und_out = _move(und_fn(_take(x, routing.und).to(self.und_device)), x.device)
        gen_out = _move(gen_fn(_take(x, routing.gen).to(self.gen_device)), x.device)
        if isinstance(und_out, torch.Tensor):
            return _assemble(und_out, gen_out, routing)
        return tuple(_assemble(u, g, routing) for u, g in zip(und_out, gen_out))


def _rms_norm(norm: RMSNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return norm(x.to(dtype)).to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return apply_rope(x, cos, sin).to(dtype)


def _swiglu(ffn: SwiGLU, x: torch.Tensor) -> torch.Tensor:
    return ffn(x)


def _take(x: torch.Tensor, runs: list[slice]) -> torch.Tensor:
    """The rows of ``runs`` of ``x``, in order (a view when they are one run)."""
    if len(runs) == 1:
        return x[runs[0]]
    if not runs:
        return x[:0]
    return torch.cat([x[rows] for rows in runs])


def _assemble(und_part: torch.Tensor, gen_part: torch.Tensor, routing: _Routing) -> torch.Tensor:
    """Both experts' rows back in chunk order, in the und part's dtype."""
    gen_part = gen_part.to(und_part.dtype)
    pieces, used = [], {True: 0, False: 0}
    for rows, is_gen in routing.runs:
        source, count = (gen_part if is_gen else und_part), rows.stop - rows.start
        pieces.append(source[used[is_gen]:used[is_gen] + count])
        used[is_gen] += count
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _move(result, device):
    if isinstance(result, torch.Tensor):
        return result.to(device)
    return tuple(t.to(device) for t in result)


def _param_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    raise ValueError(f"{type(module).__name__} has no parameters to infer its device from; pass the device")
