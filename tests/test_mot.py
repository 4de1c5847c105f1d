"""MoT decoder: attention, MRoPE, latent glue, KV cache, and step-0 parity with the golden velocities."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lance_model.attention import attention
from lance_model.kv_cache import KVCache
from lance_model.latent import axis_channels, latent_pos_ids, sincos_pos_rows, timestep_sinusoid
from lance_model.mot import MoTDecoder
from lance_model.rope import apply_rope, mrope_cos_sin, mrope_inv_freq
from lance_model.sampling import block_velocity
from mot_cases import GEN_TASKS, gen_case, load_decoder, rel_l2
from parity_measures import SINGLE_FORWARD_REL_L2, step0_velocities, step_errors


# ---------------------------------------------------------------- attention

def masked_softmax_attention(q, k, v, causal):
    """Textbook attention in float64: explicit GQA expansion and a bottom-right causal band."""
    group = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        lq, lk = q.shape[0], k.shape[0]
        allowed = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("lq,lk,causal", [(7, 7, True), (5, 12, True), (1, 9, True), (6, 6, False), (4, 11, False)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_attention_matches_masked_softmax(lq, lk, causal, dtype, tol):
    gen = torch.Generator().manual_seed(lq * 100 + lk)
    q = torch.randn(lq, 4, 32, generator=gen).to(dtype)
    k = torch.randn(lk, 2, 32, generator=gen).to(dtype)
    v = torch.randn(lk, 2, 32, generator=gen).to(dtype)
    out = attention(q, k, v, causal)
    assert out.shape == (lq, 4, 32) and out.dtype == dtype
    assert rel_l2(out, masked_softmax_attention(q, k, v, causal)) < tol


def test_causal_block_after_prefix_sees_prefix_and_earlier_block_tokens():
    q = torch.zeros(3, 2, 8)
    k = torch.zeros(5, 1, 8)
    v = torch.arange(5.0)[:, None, None].expand(5, 1, 8).contiguous()
    # uniform scores: each query averages exactly the keys it may see (2 prefix keys + itself and earlier)
    out = attention(q, k, v, causal=True)[:, 0, 0]
    assert torch.allclose(out, torch.tensor([1.0, 1.5, 2.0]))
    assert torch.allclose(attention(q, k, v, causal=False)[:, 0, 0], torch.full((3,), 2.0))


def test_attention_rejects_more_queries_than_keys():
    with pytest.raises(ValueError, match="Lk >= Lq"):
        attention(torch.zeros(4, 2, 8), torch.zeros(3, 2, 8), torch.zeros(3, 2, 8), causal=True)


# ---------------------------------------------------------------- MRoPE

def test_inv_freq_is_bf16_rounded():
    inv = mrope_inv_freq(128, 1e6)
    exact = 1e6 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    assert inv.dtype == torch.float32 and inv.shape == (64,)
    assert torch.equal(inv, exact.to(torch.bfloat16).float())
    assert not torch.equal(inv, exact.float())


def test_mrope_bands_follow_their_axis():
    section = (4, 6, 6)
    inv = mrope_inv_freq(32, 1e6)
    base = torch.tensor([[5], [7], [9]])
    _, sin0 = mrope_cos_sin(base, inv, section, torch.float32)
    for axis, band in enumerate([range(0, 4), range(4, 10), range(10, 16)]):
        moved = base.clone()
        moved[axis] += 3
        _, sin1 = mrope_cos_sin(moved, inv, section, torch.float32)
        changed = {c % 16 for c in (sin1 != sin0)[0].nonzero().flatten().tolist()}
        assert changed == set(band), f"axis {axis}"


def test_text_positions_reduce_to_plain_rope_and_tables_are_cast():
    inv = mrope_inv_freq(32, 1e6)
    p = torch.arange(10)
    cos, sin = mrope_cos_sin(p.expand(3, -1), inv, (4, 6, 6), torch.bfloat16)
    angles = p.float()[:, None] * inv[None]
    assert cos.dtype == torch.bfloat16
    assert torch.equal(cos, torch.cat([angles, angles], -1).cos().to(torch.bfloat16))
    assert torch.equal(sin, torch.cat([angles, angles], -1).sin().to(torch.bfloat16))


def test_apply_rope_is_a_rotation_in_the_promoted_dtype():
    inv = mrope_inv_freq(32, 1e6)
    positions = torch.randint(0, 500, (3, 6))
    x = torch.randn(6, 2, 32)
    rotated = apply_rope(x, *mrope_cos_sin(positions, inv, (4, 6, 6), torch.float32))
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    cos, sin = mrope_cos_sin(positions, inv, (4, 6, 6), torch.bfloat16)
    assert apply_rope(x, cos, sin).dtype == torch.float32  # gen mode: fp32 q/k, bf16 tables
    assert apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16  # und mode


# ---------------------------------------------------------------- latent glue

def test_timestep_sinusoid_uses_raw_t_cos_first():
    t = torch.tensor([0.0, 0.25, 1.0])
    f = timestep_sinusoid(t)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    assert f.shape == (3, 256) and f.dtype == torch.float32
    assert torch.equal(f[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    assert torch.allclose(f[2, :128], torch.cos(freqs)) and torch.allclose(f[2, 128:], torch.sin(freqs))


@pytest.mark.parametrize("hidden,expected", [(2048, (682, 682, 684)), (128, (42, 42, 44)), (3584, (1194, 1194, 1196))])
def test_axis_split(hidden, expected):
    assert axis_channels(hidden) == expected


def _numpy_table(hidden, frames, side):
    """The whole table as the reference builds it (meshgrid of float32 coordinates, float64 features)."""
    def one_axis(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.meshgrid(np.arange(frames, dtype=np.float32), np.arange(side, dtype=np.float32),
                       np.arange(side, dtype=np.float32), indexing="ij")
    return np.concatenate([one_axis(d, g) for d, g in zip(axis_channels(hidden), grid)], axis=1)


def test_pos_rows_equal_the_full_table_rows():
    table = torch.from_numpy(_numpy_table(128, 2, 64)).float()
    pids = torch.cat([latent_pos_ids(2, 5, 7), torch.tensor([0, 4095, 4096, 8191])])
    assert torch.equal(sincos_pos_rows(pids, 128), table[pids])


def test_wide_grids_alias_like_the_reference():
    pids = latent_pos_ids(1, 2, 70)  # 70 columns > 64: column 69 of row 0 lands on row 1, column 5
    assert pids[69] == 69
    assert torch.equal(sincos_pos_rows(pids[69:70], 128), sincos_pos_rows(torch.tensor([1 * 64 + 5]), 128))


# ---------------------------------------------------------------- KV cache

def test_kv_cache_fork_and_free():
    cache = KVCache(2)
    assert len(cache) == 0 and cache.layer(1) == (None, None)
    cache.store(0, torch.zeros(3, 1, 4), torch.zeros(3, 1, 4))
    cache.store(1, torch.zeros(3, 1, 4), torch.ones(3, 1, 4))
    fork = cache.fork()
    fork.store(0, torch.zeros(5, 1, 4), torch.zeros(5, 1, 4))
    assert len(cache) == 3 and len(fork) == 5 and cache.nbytes() == 4 * 12 * 4
    cache.free()
    assert len(cache) == 0 and fork.layer(1)[1].sum() == 12


# ---------------------------------------------------------------- decoder

@pytest.fixture(scope="module")
def image_decoder(golden_dir):
    return load_decoder(str(golden_dir / "ckpt" / "Lance_tiny"))


def test_chunked_prefill_equals_one_causal_pass(image_decoder):
    """Causal text prefilled in two chunks gives the same cache as one chunk (bottom-right alignment)."""
    ids = torch.arange(10, 40)
    positions = torch.arange(30).expand(3, -1)
    whole, parts = image_decoder.new_cache(), image_decoder.new_cache()
    image_decoder.prefill(image_decoder.embed_tokens(ids), positions, whole, causal=True)
    for span in (slice(0, 13), slice(13, 30)):
        image_decoder.prefill(image_decoder.embed_tokens(ids[span]), positions[:, span], parts, causal=True)
    for layer in range(whole.num_layers):
        assert rel_l2(parts.layer(layer)[0], whole.layer(layer)[0]) < 1e-2
        assert rel_l2(parts.layer(layer)[1], whole.layer(layer)[1]) < 1e-2
    assert whole.layer(0)[0].dtype == torch.bfloat16 and len(whole) == 30


def test_latent_rows_without_gen_expert_name_the_fix(image_decoder):
    decoder = MoTDecoder(image_decoder.und)
    with pytest.raises(ValueError, match="pass gen="):
        decoder.prefill(torch.zeros(3, 128), torch.zeros(3, 3, dtype=torch.long), decoder.new_cache(),
                        causal=False, gen_rows=torch.tensor([1]))


def test_partly_dropped_split_is_refused(image_decoder):
    mask = torch.tensor([False, True, True])
    with pytest.raises(ValueError, match="whole splits"):
        image_decoder.prefill_splits(torch.zeros(3, 128), torch.zeros(3, 3, dtype=torch.long), [("causal", 3)],
                                     torch.zeros(3, dtype=torch.bool), image_decoder.new_cache(), skip_token_mask=mask)


@pytest.mark.parametrize("task", GEN_TASKS)
def test_step0_velocities_match_reference(golden_dir, task):
    case = gen_case(str(golden_dir), task)
    velocities = step0_velocities(case)
    assert velocities.cond.shape == case.tensors["gen.v_cond_00"].shape and velocities.cond.dtype == torch.bfloat16
    errors = step_errors(case, 0, velocities)
    assert errors.cond <= SINGLE_FORWARD_REL_L2
    assert errors.uncond <= SINGLE_FORWARD_REL_L2


def test_fp32_stored_weights_with_comfy_cast_ops_compute_identically(golden_dir, image_decoder):
    """ComfyUI may store weights in another dtype and cast them per call; the decoder must still
    compute in bf16 (norm outputs included), giving bit-identical results."""
    from safetensors.torch import load_file

    from lance_model.comfy_lookup import import_comfy_module
    from lance_model.mot import build_experts

    ckpt = golden_dir / "ckpt" / "Lance_tiny"
    und, gen = build_experts(image_decoder.config, ops=import_comfy_module("comfy.ops").manual_cast,
                             device="meta", dtype=torch.float32)
    state = load_file(str(ckpt / "model.safetensors"))
    for expert in (und, gen):
        expert.load_state_dict({k: state[k].float() for k in expert.state_dict()}, strict=True, assign=True)
    fp32_stored = MoTDecoder(und, gen)

    ids, positions = torch.arange(20, 45), torch.arange(25).expand(3, -1)
    caches = []
    for decoder in (image_decoder, fp32_stored):
        caches.append(decoder.new_cache())
        decoder.prefill(decoder.embed_tokens(ids), positions, caches[-1], causal=True)
    assert all(torch.equal(a, b) for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values))

    case = gen_case(str(golden_dir), "t2i")
    t = torch.full((case.x_initial.shape[0],), 0.7)
    v_bf16 = block_velocity(image_decoder, case.block, case.x_initial, t, case.cond)
    assert torch.equal(block_velocity(fp32_stored, case.block, case.x_initial, t, case.cond), v_bf16)
