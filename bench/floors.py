"""Lower bounds on time: the arithmetic each task must do over the card's matrix rate, or for
batch-1 decoding the bytes each token must read over its memory bandwidth.

Dense part: every token passes once through one expert's 36 layers (q, k, v, o projections and the
SwiGLU MLP), 2 FLOP per weight. Attention: QKᵀ and PV, 4·Nq·Nk·heads·head_dim per layer (the full
rectangle; a causal split needs half, which matters only for the short text prefill).
"""
from __future__ import annotations

from lance_model.config import LLMConfig

MATMUL_TFLOPS = 790.0      # bf16 dense matrix rate of an H100/H200 (798 measured for 8192³)
COPY_TB_PER_S = 3.0        # H100 device-to-device copy, bytes read + written


def layer_weights(cfg: LLMConfig) -> int:
    d, hd = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return d * q_out + 2 * d * kv_out + q_out * d + 3 * d * cfg.intermediate_size


def dense_flops(cfg: LLMConfig, tokens: int) -> float:
    return 2.0 * layer_weights(cfg) * cfg.num_hidden_layers * tokens


def attention_flops(cfg: LLMConfig, nq: int, nk: int, causal: bool = False) -> float:
    full = 4.0 * nq * nk * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
    return full / 2 if causal else full


def pass_flops(cfg: LLMConfig, nq: int, prefix: int) -> float:
    """One bidirectional block of ``nq`` tokens read against ``prefix`` cached tokens."""
    return dense_flops(cfg, nq) + attention_flops(cfg, nq, prefix + nq)


def seconds(flops: float) -> float:
    return flops / (MATMUL_TFLOPS * 1e12)


def decode_bytes_per_token(cfg: LLMConfig, context: int) -> float:
    """bf16 bytes one greedy step reads: the und layers, the LM head, and the KV cache."""
    weights = layer_weights(cfg) * cfg.num_hidden_layers + cfg.hidden_size * cfg.vocab_size
    kv = 2 * cfg.num_hidden_layers * context * cfg.num_key_value_heads * cfg.head_dim
    return 2.0 * (weights + kv)


def decode_floor_tokens_per_s(cfg: LLMConfig, context: int) -> float:
    return COPY_TB_PER_S * 1e12 / decode_bytes_per_token(cfg, context)
