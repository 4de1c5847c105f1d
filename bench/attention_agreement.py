"""Whether the attention kernels agree: the same bf16 sampling with SDPA restricted to one backend at a
time and with each optional package's kernel, and one direct kernel call at a long video's attention
shape, each compared with an fp32 reference.

A backend that cannot run a call raises (SDPA: "No available kernel"); the row then records the error,
and fails only where the backend is expected to run (``required_sdpa_backends``).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from lance_model.attention_backends import SDPA, attention_backend, installed_backends
from lance_model.config import LLMConfig
from lance_model.generation import GenerationCondition, sample_latent
from lance_model.mot import MoTDecoder
from lance_model.sampling import FlowSettings

from agreement_rows import Row
from precision_runs import rel_l2, step0_velocities
from variants import variant_setting

# Math first: the other kernels' outputs are also compared with its bf16 output (kernel vs kernel).
SDPA_BACKENDS = ("MATH", "FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")
OPTIONAL_PACKAGES = ("flash_attn", "sage")
# Scores of one fp32 reference chunk (elements): 1 GiB, whatever the sequence length.
REFERENCE_CHUNK_SCORES = 2 ** 28


def required_sdpa_backends(device: torch.device) -> set[str]:
    """SDPA backends expected to take bf16 GQA attention here: on CUDA flash, cuDNN and math (the
    memory-efficient kernel has no grouped-KV form, so its error is recorded, not failed); elsewhere math."""
    return {"FLASH_ATTENTION", "CUDNN_ATTENTION", "MATH"} if device.type == "cuda" else {"MATH"}


def sdpa_only(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, name)])


@contextlib.contextmanager
def fp32_math_reference():
    """How every fp32 reference runs: eager passes (no CUDA graph) on SDPA's math kernel."""
    with variant_setting("eager"), sdpa_only("MATH"):
        yield


def _error_note(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"


def _attempt(label: str, context: Callable, measure: Callable[[], list[Row]], bound: float | None,
             required: bool) -> list[Row]:
    """``measure()`` under ``context()``; a kernel error becomes one row (failing where ``required``)."""
    try:
        with context():
            return measure()
    except RuntimeError as error:
        return [Row(f"{label}: runs", None, bound if required else None, note=_error_note(error))]


def _not_installed(label: str, package: str) -> Row:
    return Row(label, None, None, note=f"{package} not installed")


def sampling_backend_rows(decoder: MoTDecoder, condition: GenerationCondition, noise: torch.Tensor,
                          settings: FlowSettings, reference_v_cond: torch.Tensor, reference_latent: torch.Tensor,
                          bounds: tuple[float, float], label: str) -> list[Row]:
    """Step-0 v_cond and the free-running final latent of ``decoder`` (bf16) with each attention kernel
    for the sampling passes, against the fp32 math run. The prompt's prefill is not restricted (flash
    has no masked form for causal text after a prefix), so every run shares one bf16 ``condition``.
    CUDA graphs are off so that the SDPA restriction applies at every call."""
    velocity_bound, latent_bound = bounds
    required = required_sdpa_backends(noise.device)

    bf16_math: dict[str, torch.Tensor] = {}

    def versus_bf16_math(key: str, output: torch.Tensor) -> str:
        if key not in bf16_math:
            bf16_math[key] = output
            return ""
        return f"vs bf16 SDPA math: {rel_l2(output, bf16_math[key]) * 100:.3f}%"

    def measure(run_decoder: MoTDecoder, name: str) -> Callable[[], list[Row]]:
        def rows() -> list[Row]:
            v = step0_velocities(run_decoder, condition, noise, settings).cond
            latent = sample_latent(run_decoder, condition, noise, settings)
            return [Row(f"{label} step-0 v_cond, {name} vs fp32 math", rel_l2(v, reference_v_cond), velocity_bound,
                        note=versus_bf16_math("v_cond", v)),
                    Row(f"{label} {settings.steps}-step latent, {name} vs fp32 math",
                        rel_l2(latent, reference_latent), latent_bound, note=versus_bf16_math("latent", latent))]
        return rows

    rows = []
    with variant_setting("eager"):
        for name in SDPA_BACKENDS:
            rows += _attempt(f"{label} SDPA {name}", lambda name=name: sdpa_only(name),
                             measure(decoder, f"SDPA {name}"), velocity_bound, name in required)
        for package in OPTIONAL_PACKAGES:
            if package not in installed_backends():
                rows.append(_not_installed(f"{label} {package}", package))
                continue
            variant = MoTDecoder(decoder.und, decoder.gen, dtype=decoder.dtype, attention=package)
            rows += _attempt(f"{label} {package}", contextlib.nullcontext, measure(variant, package),
                             velocity_bound, required=True)
    return rows


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional GQA attention ``[Lq, Hq, D]`` in fp32, a chunk of queries at a time (the full score
    matrix of a long video would not fit)."""
    lq, hq, d = q.shape
    lk, hkv, _ = k.shape
    group = hq // hkv
    keys = k.float().permute(1, 2, 0)[:, None]          # [Hkv, 1, D, Lk]
    values = v.float().transpose(0, 1)[:, None]         # [Hkv, 1, Lk, D]
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    chunk = max(1, REFERENCE_CHUNK_SCORES // (hq * lk))
    for start in range(0, lq, chunk):
        rows = slice(start, start + chunk)
        queries = q[rows].float().permute(1, 0, 2).unflatten(0, (hkv, group))   # [Hkv, G, c, D]
        probs = (queries @ keys * d ** -0.5).softmax(-1)
        out[rows] = (probs @ values).flatten(0, 1).transpose(0, 1)
    return out


def kernel_rows(cfg: LLMConfig, queries: int, keys: int, device: torch.device, seed: int, bound: float,
                label: str) -> list[Row]:
    """One bidirectional attention call of ``queries`` over ``keys`` (random bf16 q/k/v at the LLM's head
    layout) through SDPA's flash and cuDNN kernels and the optional packages, against fp32."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def draw(length: int, heads: int) -> torch.Tensor:
        return torch.randn(length, heads, cfg.head_dim, generator=generator, device=device).to(torch.bfloat16)

    q, k, v = draw(queries, cfg.num_attention_heads), draw(keys, cfg.num_key_value_heads), \
        draw(keys, cfg.num_key_value_heads)
    reference = reference_attention(q, k, v)
    required = required_sdpa_backends(device)

    def measure(backend, name: str) -> Callable[[], list[Row]]:
        return lambda: [Row(f"{label}, {name} vs fp32", rel_l2(backend.prefix(q, k, v, False), reference), bound)]

    rows = []
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION"):
        rows += _attempt(f"{label} SDPA {name}", lambda name=name: sdpa_only(name), measure(SDPA, f"SDPA {name}"),
                         bound, name in required)
    for package in OPTIONAL_PACKAGES:
        if package not in installed_backends():
            rows.append(_not_installed(f"{label} {package}", package))
            continue
        rows += _attempt(f"{label} {package}", contextlib.nullcontext,
                         measure(attention_backend(package, device), package), bound, required=True)
    return rows
