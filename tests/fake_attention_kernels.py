"""Stand-ins for the optional attention packages (``flash_attn``, ``sageattention``): their entry points with
the real signatures and layouts, computed with plain torch and recording every call, so CPU tests can see
which kernel a pass ran on. ``install`` puts them into ``sys.modules`` and lets the backends take CPU
tensors; ``uninstall`` makes a package unimportable even where the real one is installed."""
from __future__ import annotations

import sys
import types

import torch

PACKAGES = {"flash_attn": "flash_attn", "sage": "sageattention"}


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """``[B, L, H, D]`` attention in fp32: grouped KV heads, causal band aligned bottom-right."""
    group = q.shape[2] // k.shape[2]
    k, v = k.float().repeat_interleave(group, 2), v.float().repeat_interleave(group, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k) * q.shape[-1] ** -0.5
    if causal:
        lq, lk = q.shape[1], k.shape[1]
        allowed = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).to(q.dtype)


def fake_flash_attn() -> types.ModuleType:
    module = types.ModuleType("flash_attn")
    module.calls = []

    def flash_attn_func(q, k, v, causal=False):
        module.calls.append(("func", q.shape[1], k.shape[1], causal))
        return _attend(q, k, v, causal)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False):
        module.calls.append(("varlen", len(cu_seqlens_q) - 1, max_seqlen_q, causal))
        assert torch.equal(cu_seqlens_q, cu_seqlens_k) and not causal
        out = torch.empty_like(q)
        bounds = cu_seqlens_q.tolist()
        assert max(b - a for a, b in zip(bounds[:-1], bounds[1:])) == max_seqlen_q
        for start, stop in zip(bounds[:-1], bounds[1:]):
            out[start:stop] = _attend(q[None, start:stop], k[None, start:stop], v[None, start:stop], False)[0]
        return out

    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    return module


def fake_sageattention() -> types.ModuleType:
    module = types.ModuleType("sageattention")
    module.calls = []

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None):
        assert tensor_layout == "NHD" and sm_scale is None
        # The real kernel masks causally only when queries and keys have one length.
        assert not is_causal or q.shape[1] == k.shape[1]
        module.calls.append(("sageattn", q.shape[0], q.shape[1], k.shape[1], is_causal))
        return _attend(q, k, v, is_causal)

    module.sageattn = sageattn
    return module


FAKES = {"flash_attn": fake_flash_attn, "sage": fake_sageattention}


def install(monkeypatch, backends_module, name: str) -> types.ModuleType:
    """The fake package of backend ``name``, importable for the rest of the test; ``backends_module`` (the
    ``attention_backends`` module in use) is let run the optional kernels on CPU tensors."""
    fake = FAKES[name]()
    monkeypatch.setitem(sys.modules, PACKAGES[name], fake)
    monkeypatch.setattr(backends_module, "OPTIONAL_KERNEL_DEVICES", ("cuda", "cpu"))
    return fake


def uninstall(monkeypatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, PACKAGES[name], None)
