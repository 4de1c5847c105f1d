"""RoPE positions (get_rope_index + MaPE) and the KV-cache call plan against the reference goldens."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lance_model.kv_plan import plan_generation, understanding_prefill
from lance_model.positions import (REFERENCE_TEMPORAL_BAND, VIT_TEMPORAL_BAND, apply_mape, generation_positions,
                                   get_rope_index, rope_grids, understanding_positions)
from lance_model.sequence import EDIT_SOURCE, REFERENCE, TARGET, TEMPLATE, VIT, build_text_to_visual
from sequence_goldens import gen_case, golden_case, und_case  # noqa: F401


@pytest.fixture(scope="module")
def tiny_cfg(golden_dir):
    return golden_case(golden_dir, "t2i").cfg


def _same(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.shape == expected.shape
    mismatch = torch.nonzero((actual != expected).any(0)).flatten()
    assert mismatch.numel() == 0, f"first differing token {mismatch[:5].tolist()}: " \
                                  f"{actual[:, mismatch[:5]].tolist()} != {expected[:, mismatch[:5]].tolist()}"


# --------------------------------------------------------------------------------------------- goldens


def test_generation_positions_match_reference(gen_case):
    s, cfg, t = gen_case.sample, gen_case.cfg, gen_case.tensors
    u = s.unconditional()
    _same(get_rope_index(s.token_ids, rope_grids(s, cfg), cfg), t["pos.cond_raw"])
    _same(generation_positions(s, cfg), t["pos.cond"])
    _same(get_rope_index(u.token_ids, rope_grids(u, cfg), cfg), t["pos.uncond_raw"])
    _same(generation_positions(u, cfg), t["pos.uncond"])


def test_understanding_positions_match_reference(und_case):
    expected = und_case.tensors["pos.prompt_plus_256_pads"]
    pad_id = und_case.tokenizer.token_id("<|endoftext|>")
    new_tokens = expected.shape[1] - len(und_case.sample)
    _same(understanding_positions(und_case.sample, und_case.cfg, pad_id, new_tokens), expected)


def _generation_calls(plan, timesteps, cfg_interval):
    """The reference's forward_inference calls of one KV-cache generation, from the plan."""
    calls, cond_kv, uncond_kv = [], 0, 0
    for split in plan.cond_prefix:
        call = dict(q_len=split.length, causal=split.causal, mode="gen" if split.uses_generation_expert else "und",
                    update=True, pos_first=plan.cond_positions[:, split.start].tolist())
        calls.append(dict(call, kv_len=cond_kv))
        cond_kv += split.length
        if split in plan.uncond_prefix:
            calls.append(dict(call, kv_len=uncond_kv))
            uncond_kv += split.length
    noise = dict(q_len=plan.noise.length, causal=False, mode="gen", update=False)
    for t in timesteps:
        calls.append(dict(noise, kv_len=cond_kv, pos_first=plan.cond_noise_positions[:, 0].tolist()))
        if cfg_interval[0] < t <= cfg_interval[1]:
            calls.append(dict(noise, kv_len=uncond_kv, pos_first=plan.uncond_noise_positions[:, 0].tolist()))
    return calls


def _recorded(calls):
    keys = ("q_len", "kv_len", "causal", "mode", "update", "pos_first")
    return [{k: c[k] for k in keys} for c in calls]


def test_kv_cache_calls_match_reference(gen_case):
    plan = plan_generation(gen_case.sample, gen_case.cfg)
    steps = gen_case.tensors["gen.timesteps"][:-1].tolist()  # t_N = 0 is never evaluated
    expected = _recorded(gen_case.settings["forward_inference_calls"])
    assert _generation_calls(plan, steps, gen_case.settings["cfg_interval"]) == expected


def test_kv_cache_uncond_quirk(gen_case):
    """Cached unconditional tokens keep their conditional positions; the noise query does not."""
    plan = plan_generation(gen_case.sample, gen_case.cfg)
    u = gen_case.sample.unconditional()
    after_caption = [s for s in plan.uncond_prefix if s.start > gen_case.sample.caption.start]
    assert after_caption, "a template split follows the caption in every generation task"
    noise_in_u = u.splits[len(plan.uncond_prefix)]
    _same(plan.uncond_noise_positions, generation_positions(u, gen_case.cfg)[:, noise_in_u.start:noise_in_u.end])
    if gen_case.task.endswith("edit"):  # target tied to the source: same query positions in both passes
        _same(plan.uncond_noise_positions, plan.cond_noise_positions)
    else:
        shift = gen_case.sample.caption.length
        _same(plan.uncond_noise_positions, plan.cond_noise_positions - shift)


def test_shared_prefix_is_computed_identically(gen_case):
    """Splits before the caption appear with equal query, cache length and positions in both walks of
    the reference, so a sampler may prefill them once."""
    plan = plan_generation(gen_case.sample, gen_case.cfg)
    assert plan.shared_prefix == tuple(s for s in plan.cond_prefix if s.end <= gen_case.sample.caption.start)
    recorded = _recorded(gen_case.settings["forward_inference_calls"])
    for k in range(len(plan.shared_prefix)):
        assert recorded[2 * k] == recorded[2 * k + 1]


def test_understanding_calls_match_reference(und_case):
    s = und_case.sample
    recorded = und_case.settings["forward_inference_calls"]
    listed = [c for c in recorded if "q_len" in c]
    (more,) = [c["..."] for c in recorded if "..." in c]
    total = len(listed) + int(more.split()[0])
    assert total == len(understanding_prefill(s)) + und_case.settings["x2t_num_generated"]
    positions = understanding_positions(s, und_case.cfg, und_case.tokenizer.token_id("<|endoftext|>"), total)
    calls, kv = [], 0
    for split in understanding_prefill(s):
        calls.append(dict(q_len=split.length, kv_len=kv, causal=split.causal, mode="und", update=True,
                          pos_first=positions[:, split.start].tolist()))
        kv += split.length
    for step in range(total - len(calls)):
        calls.append(dict(q_len=1, kv_len=kv + step, causal=True, mode="und", update=True,
                          pos_first=positions[:, len(s) - 1 + step].tolist()))
    assert calls[:len(listed)] == _recorded(listed)
    assert sum(c.length for c in understanding_prefill(s)) == len(s) - 1


# --------------------------------------------------------------------------------------------- rules


def _ids(cfg, layout):
    """Token ids from a layout like ``["t", "t", ("block", n), "t"]`` (text ids are arbitrary non-vision ids)."""
    ids = []
    for item in layout:
        if item == "t":
            ids.append(7)
        else:
            ids += [cfg.vision_start_token_id] + [cfg.video_token_id] * item[1] + [cfg.vision_end_token_id]
    return torch.tensor(ids)


def test_get_rope_index_rules(tiny_cfg):
    # text, text | block of 2 temporal slices of 2x3 merged tokens | text
    ids = _ids(tiny_cfg, ["t", "t", ("block", 12), "t"])
    pos = get_rope_index(ids, [(2, 4, 6)], tiny_cfg)
    assert pos[:, :3].tolist() == [[0, 1, 2]] * 3  # the start marker is text
    tau, i, j = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(3), indexing="ij")
    assert pos[0, 3:15].tolist() == (3 + 2 * tau.flatten()).tolist()  # tokens_per_second 2
    assert pos[1, 3:15].tolist() == (3 + i.flatten()).tolist()
    assert pos[2, 3:15].tolist() == (3 + j.flatten()).tolist()
    assert pos[:, 15:].tolist() == [[6, 7]] * 3  # end marker = block max + 1, then counting on


def test_tokens_per_second_comes_from_config(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, tokens_per_second=5)
    pos = get_rope_index(_ids(cfg, ["t", ("block", 3)]), [(3, 2, 2)], cfg)
    assert pos[0, 2:5].tolist() == [2, 7, 12]
    assert pos[:, 5].tolist() == [13] * 3


def test_block_count_must_match_grids(tiny_cfg):
    with pytest.raises(ValueError, match="2 visual blocks but 1 grids"):
        get_rope_index(_ids(tiny_cfg, [("block", 1), "t", ("block", 1)]), [(1, 2, 2)], tiny_cfg)


def test_mape_vit_and_reference_bands_and_edit_tie(tiny_cfg):
    layout = ["t", ("block", 4), ("block", 2), ("block", 2), "t", ("block", 2), "t"]
    ids = _ids(tiny_cfg, layout)
    modality = torch.tensor([TEMPLATE] + [VIT] * 6 + [REFERENCE] * 4 + [EDIT_SOURCE] * 4 + [TEMPLATE]
                            + [TARGET] * 4 + [TEMPLATE])
    raw = get_rope_index(ids, [(1, 4, 4), (1, 2, 4), (1, 2, 4), (1, 2, 4)], tiny_cfg)
    out = apply_mape(raw, modality)
    vit, ref = modality == VIT, modality == REFERENCE
    assert out[0, vit].tolist() == (raw[0, vit] - raw[0, 1] + VIT_TEMPORAL_BAND).tolist()
    assert out[0, ref].tolist() == (raw[0, ref] - raw[0, 7] + REFERENCE_TEMPORAL_BAND).tolist()
    assert torch.equal(out[1:, vit | ref], raw[1:, vit | ref])
    assert torch.equal(out[:, modality == TARGET], raw[:, modality == EDIT_SOURCE])
    others = (modality == TEMPLATE) | (modality == EDIT_SOURCE)
    assert torch.equal(out[:, others], raw[:, others])


def test_mape_ties_only_equal_sized_blocks(tiny_cfg):
    ids = _ids(tiny_cfg, ["t", ("block", 2), ("block", 4)])
    modality = torch.tensor([TEMPLATE] + [EDIT_SOURCE] * 4 + [TARGET] * 6)
    raw = get_rope_index(ids, [(1, 2, 4), (1, 4, 4)], tiny_cfg)
    assert torch.equal(apply_mape(raw, modality), raw)


def test_no_mape_without_full_split(gen_case):
    s, cfg = gen_case.sample, gen_case.cfg
    raw = get_rope_index(s.token_ids, rope_grids(s, cfg), cfg)
    if gen_case.task.endswith("edit"):
        assert not torch.equal(generation_positions(s, cfg), raw)
    else:
        # t2i/t2v/i2v: no full split; an (unreal) ViT modality must then stay untouched
        marked = dataclasses.replace(s, modality=torch.where(s.modality == TARGET, VIT, s.modality))
        assert torch.equal(generation_positions(marked, cfg), raw)


def test_plan_needs_a_captioned_generation_sample(und_case):
    with pytest.raises(ValueError, match="caption split"):
        plan_generation(und_case.sample, und_case.cfg)
    with pytest.raises(ValueError, match="no caption to drop"):
        und_case.sample.unconditional()


def test_long_sequence_positions_stay_consistent(tiny_cfg, golden_dir):
    case = golden_case(golden_dir, "t2i")
    s = build_text_to_visual("t2v", case.tokenizer, tiny_cfg, "A cat " * 300, (13, 30, 53))
    pos = generation_positions(s, tiny_cfg)
    target = s.target
    first = pos[:, target.start + 1]
    assert pos[:, target.start].tolist() == (first - 1).tolist()
    assert pos[:, target.token_range.stop - 1].tolist() == (first + torch.tensor([2 * 12, 29, 52])).tolist()
    assert pos[:, target.end - 1].tolist() == [int(first[0]) + 52 + 1] * 3  # max over all axes + 1
