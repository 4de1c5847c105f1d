"""Turning Wan 2.2 latent tokens into LLM tokens.

A latent token (one voxel of the ``[t, h, w, 48]`` latent) enters the LLM as
``(vae2llm(x) + time_embedder(t)) + pos``, summed in bf16 in that order (spec §2.6, §8):

* ``time_embedder`` sees a sinusoid of the raw flow time ``t`` in [0, 1] (no ×1000), ``[cos, sin]``.
* ``pos`` is a row of a fixed 3-D sin-cos table indexed by ``pid = τ·S² + i·S + j`` with ``S`` the
  maximum latent side (64). The reference builds the whole table at start-up; here only the needed
  rows are computed, from ``pid`` itself, so grids wider than ``S`` alias exactly as in the reference.
"""
from __future__ import annotations

import math

import torch

from .config import LATENT


def timestep_sinusoid(t: torch.Tensor, dim: int = LATENT.time_frequency_dim, max_period: float = 10000.0):
    """``[N]`` flow times → ``[N, dim]`` fp32 features ``[cos(t·f_k), sin(t·f_k)]``."""
    half = dim // 2
    # made on t's device: a host-to-device copy would sync every step and cannot be replayed in a CUDA graph
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


def latent_pos_ids(t: int, h: int, w: int, max_latent_size: int = LATENT.max_latent_size,
                   device=None) -> torch.Tensor:
    """Table rows of a ``t×h×w`` latent in token order (τ-major, then i, then j)."""
    tau = torch.arange(t, device=device)[:, None, None]
    i = torch.arange(h, device=device)[None, :, None]
    j = torch.arange(w, device=device)[None, None, :]
    return (tau * max_latent_size * max_latent_size + i * max_latent_size + j).flatten()


def axis_channels(hidden_size: int) -> tuple[int, int, int]:
    """Channels per axis (T, H, W): ``hidden//3`` rounded down to even for T and H, rest to W."""
    d = hidden_size // 3
    d -= d % 2
    return d, d, hidden_size - 2 * d


def sincos_pos_rows(pids: torch.Tensor, hidden_size: int, max_latent_size: int = LATENT.max_latent_size):
    """Rows ``pids`` of the 3-D sin-cos table, fp32 ``[N, hidden_size]`` (computed in float64)."""
    device = pids.device
    # float64 matches the reference's numpy table; MPS has no float64, so such rows are made on the CPU.
    pids = pids.to("cpu" if device.type == "mps" else device, torch.int64)
    coords = (pids // (max_latent_size * max_latent_size), (pids // max_latent_size) % max_latent_size,
              pids % max_latent_size)
    parts = [_sincos_1d(c, dim) for c, dim in zip(coords, axis_channels(hidden_size))]
    return torch.cat(parts, dim=-1).float().to(device)


def _sincos_1d(coord: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    omega = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64, device=coord.device) / half)
    angles = coord.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def latent_pos_embedding(pids: torch.Tensor, hidden_size: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The position term of latent tokens ``pids``, ``[N, hidden_size]`` in ``dtype`` on ``pids``' device."""
    return sincos_pos_rows(pids, hidden_size).to(dtype)


def embed_latent_tokens(gen, x: torch.Tensor, t: torch.Tensor, pids: torch.Tensor | None = None,
                        dtype: torch.dtype = torch.bfloat16, *, pos: torch.Tensor | None = None) -> torch.Tensor:
    """LLM input rows for latent tokens ``x`` ``[N, C]`` at flow times ``t`` ``[N]`` and table rows ``pids``
    (or their precomputed ``latent_pos_embedding`` ``pos``, a constant across sampling steps).

    ``gen`` is the ``GenerationExpert`` (its ``vae2llm`` and ``time_embedder``); the result lives on
    ``x``'s device in ``dtype``.
    """
    device = x.device
    time_emb = gen.time_embedder(t.to(device), dtype)
    if pos is None:
        pos = latent_pos_embedding(pids.to(device), time_emb.shape[-1], dtype)
    return ((gen.vae2llm(x.to(dtype)) + time_emb) + pos.to(device)).to(dtype)
