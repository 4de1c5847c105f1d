"""The fast paths of the decoder and the samplers compute the same function as the plain ones: routing by
row runs, greedy decoding into in-place KV buffers, masked attention over a partly written buffer, and
(on a CUDA machine) passes replayed as CUDA graphs against the same passes launched eagerly."""
from __future__ import annotations

import copy

import pytest
import torch

from lance_model.attention import attention, attention_to_rows
from lance_model.cuda_graphs import DISABLE_ENV
from lance_model.greedy_decode import greedy_decode
from lance_model.mot import MoTDecoder, _Routing
from lance_model.sampling import REUSED_PASSES, Branch, NoiseBlock, ReusedPasses, sample_flow
from mot_cases import gen_case, load_decoder, rel_l2, x2t_case

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def test_routing_runs_follow_the_gen_rows():
    routing = _Routing(torch.tensor([1, 2, 5]), 7)
    assert [(r.start, r.stop, gen) for r, gen in routing.runs] == \
        [(0, 1, False), (1, 3, True), (3, 5, False), (5, 6, True), (6, 7, False)]


def test_routed_rows_return_in_chunk_order(golden_dir):
    decoder = load_decoder(str(golden_dir / "ckpt" / "Lance_tiny"))
    x = torch.randn(9, 4)
    gen_rows = torch.tensor([0, 3, 4, 8])
    out = decoder._routed(x, _Routing(gen_rows, 9), lambda rows: rows * 2, lambda rows: rows + 100)
    expected = x * 2
    expected[gen_rows] = x[gen_rows] + 100
    assert torch.equal(out, expected)


def test_attention_to_written_rows_equals_attention_to_those_rows():
    q, k, v = torch.randn(1, 8, 16), torch.randn(11, 2, 16), torch.randn(11, 2, 16)
    valid = torch.arange(11) < 7
    out = attention_to_rows(q, k, v, valid)
    assert out.shape == (1, 8, 16)
    assert torch.allclose(out, attention(q, k[:7], v[:7], causal=False), atol=1e-5, rtol=1e-5)


def _step_by_step(decoder, cache, first, positions, steps, vocab_limit):
    token, ids = first, []
    for step in range(steps):
        logits = decoder.decode_step(torch.tensor([token]), positions[:, step:step + 1], cache)[0]
        token = int(logits[:vocab_limit].argmax())
        ids.append(token)
    return ids


def _x2t_inputs(golden_dir):
    case = x2t_case(str(golden_dir), "x2t_image")
    first = int(case.tensors["seq.packed_text_ids"][case.context_len])
    positions = case.tensors["pos.prompt_plus_256_pads"][:, case.context_len:]
    return case, first, positions


def test_greedy_decode_equals_step_by_step_decoding_and_stops_between_syncs(golden_dir):
    case, first, positions = _x2t_inputs(golden_dir)
    prompt_len = len(case.cache)
    expected = _step_by_step(case.decoder, case.cache.fork(), first, positions, 10, case.vocab_limit)
    ids = greedy_decode(case.decoder, case.cache, first, positions[:, :10], case.vocab_limit, stop_token=-1,
                        sync_every=4)
    assert ids == expected and len(case.cache) == prompt_len  # the prompt's cache is read, not grown
    seen = []
    stopped = greedy_decode(case.decoder, case.cache, first, positions[:, :10], case.vocab_limit,
                            stop_token=expected[5], on_token=seen.append, sync_every=4)
    assert stopped == seen == expected[:expected.index(expected[5])]


def _on_cuda(decoder: MoTDecoder) -> MoTDecoder:
    return MoTDecoder(copy.deepcopy(decoder.und).cuda(), copy.deepcopy(decoder.gen).cuda())


@cuda_only
@pytest.mark.parametrize("task", ["t2i", "i2v"])
def test_graphed_sampling_matches_eager_sampling(golden_dir, task, monkeypatch):
    case = gen_case(str(golden_dir), task)
    decoder = _on_cuda(case.decoder)
    block = NoiseBlock(case.block.marker_embeds.cuda(), case.block.pids)
    cond = Branch(case.cond.cache.to("cuda"), case.cond.positions)
    uncond = Branch(case.uncond.cache.to("cuda"), case.uncond.positions)
    x = case.x_initial.cuda()

    def run():
        return sample_flow(decoder, block, x, case.updated_rows, cond, uncond, case.settings)

    assert decoder.graphs_usable(with_generation=True)
    graphed = run()
    monkeypatch.setenv(DISABLE_ENV, "0")
    eager = run()
    # fused kernels (and with older cuDNN flash attention) inside graphs: bf16 rounding apart over 8 steps
    assert rel_l2(graphed, eager) <= 1e-2
    fixed = torch.ones(x.shape[0], dtype=torch.bool)
    fixed[case.updated_rows] = False
    assert torch.equal(graphed[fixed.cuda()], x[fixed.cuda()])


@cuda_only
def test_graphed_greedy_decoding_matches_eager_decoding(golden_dir, monkeypatch):
    case, first, positions = _x2t_inputs(golden_dir)
    decoder = _on_cuda(case.decoder)
    cache = case.cache.to("cuda")
    graphed = greedy_decode(decoder, cache, first, positions[:, :24], case.vocab_limit, stop_token=-1)
    monkeypatch.setenv(DISABLE_ENV, "0")
    eager = greedy_decode(decoder, cache, first, positions[:, :24], case.vocab_limit, stop_token=-1)
    assert graphed == eager


def _shifted(cache, amount: float):
    """A cache of the same shapes with other contents (another prompt of the same token count)."""
    other = cache.clone()
    for t in other.keys + other.values:
        t.add_(amount)
    return other


def test_reused_passes_keep_one_pass_per_branch_while_its_constants_and_weights_stay(golden_dir):
    case = gen_case(str(golden_dir), "t2i")
    decoder, block = case.decoder, case.block
    pos = decoder.latent_positions(block.pids)
    reused = ReusedPasses()
    first = reused.get("cond", decoder, block, case.cond, pos)
    assert first.cache is not case.cond.cache   # its own copy: freeing the condition cannot reach the graph
    other_prompt = Branch(_shifted(case.cond.cache, 1.0), case.cond.positions)
    again = reused.get("cond", MoTDecoder(decoder.und, decoder.gen), block, other_prompt, pos)
    assert again is first
    assert all(torch.equal(a, b) for a, b in zip(first.cache.keys, other_prompt.cache.keys))
    assert reused.get("uncond", decoder, block, case.uncond, pos) is not first
    moved = MoTDecoder(copy.deepcopy(decoder.und), copy.deepcopy(decoder.gen))  # ComfyUI moved the weights
    rebuilt = reused.get("cond", moved, block, case.cond, pos)
    assert rebuilt is not first
    shorter = Branch(case.uncond.cache, case.uncond.positions)  # another prefix length
    assert reused.get("cond", moved, block, shorter, pos) is not rebuilt
    assert reused.get("cond", moved, block, shorter, pos) is reused.entries["cond"][1]
    reused.clear()
    assert reused.entries == {}


@cuda_only
def test_a_reused_graph_computes_what_a_fresh_capture_computes(golden_dir):
    case = gen_case(str(golden_dir), "t2i")
    decoder = _on_cuda(case.decoder)
    block = NoiseBlock(case.block.marker_embeds.cuda(), case.block.pids)
    x = case.x_initial.cuda()

    def run(shift: float):
        cond = Branch(_shifted(case.cond.cache.to("cuda"), shift), case.cond.positions)
        uncond = Branch(_shifted(case.uncond.cache.to("cuda"), shift), case.uncond.positions)
        return sample_flow(decoder, block, x, case.updated_rows, cond, uncond, case.settings)

    run(0.0)
    kept = REUSED_PASSES.entries["cond"][1]
    reused = run(0.01)
    assert REUSED_PASSES.entries["cond"][1] is kept
    REUSED_PASSES.clear()
    fresh = run(0.01)
    assert REUSED_PASSES.entries["cond"][1] is not kept
    assert rel_l2(reused, fresh) <= 1e-3
    assert rel_l2(reused, run(0.0)) > 1e-3   # the new prefix was used, not the captured one's
    REUSED_PASSES.clear()


@pytest.mark.parametrize("free_gib, kept", [(30.0, True), (5.0, False), (3.0, False)])
def test_kept_passes_are_freed_unless_the_device_has_room(golden_dir, monkeypatch, free_gib, kept):
    case = gen_case(str(golden_dir), "t2i")
    reused = ReusedPasses()
    reused.get("cond", case.decoder, case.block, case.cond, case.decoder.latent_positions(case.block.pids))
    gib = 2**30
    # an 80 GiB card: the share rule (20 GiB) decides; ComfyUI's free = driver free + unused reserved memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int((free_gib - 1) * gib), 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    reused.keep_if_room(torch.device("cuda", 0))
    assert bool(reused.entries) == kept


def test_freed_passes_leave_no_reference_cycle_holding_their_cache(golden_dir):
    import gc
    import weakref
    case = gen_case(str(golden_dir), "t2i")
    reused = ReusedPasses()
    kept = reused.get("cond", case.decoder, case.block, case.cond, case.decoder.latent_positions(case.block.pids))
    cache_tensor = weakref.ref(kept.cache.keys[0])
    del kept
    gc.disable()   # only reference counting may free it: the cycle collector runs when it likes
    try:
        reused.clear()
        assert cache_tensor() is None
    finally:
        gc.enable()
