"""Understanding (x2t) decoding: logits and teacher-forced argmax against the reference, and the
decode loop's stop / mask / sampling rules."""
from __future__ import annotations

import pytest
import torch

from lance_model.sampling import TextSettings, generate_text, pick_token
from mot_cases import X2T_TASKS, x2t_case
from parity_measures import SINGLE_FORWARD_REL_L2, TIE_ULPS, teacher_forced_text


@pytest.mark.parametrize("task", X2T_TASKS)
def test_teacher_forced_decoding_matches_reference(golden_dir, task):
    case = x2t_case(str(golden_dir), task)
    trace = teacher_forced_text(case)
    assert trace.steps == case.tensors["x2t.generated_ids"].numel()
    assert trace.logit_layouts == {((case.decoder.config.vocab_size,), torch.bfloat16)}
    assert len(trace.stored_logits_rel_l2) == 4
    for step, error in enumerate(trace.stored_logits_rel_l2):
        assert error <= SINGLE_FORWARD_REL_L2, f"logits of step {step}"
    for miss in trace.misses:
        assert miss.gap_ulps <= TIE_ULPS, f"step {miss.step}: not a near-tie ({miss.gap_ulps:.1f} bf16 ulp)"
    assert len(trace.misses) <= trace.allowed_misses, f"greedy choice differs at steps {trace.misses}"
    assert len(case.cache) == case.context_len + trace.steps


def test_greedy_generation_reproduces_the_reference_start(golden_dir):
    case = x2t_case(str(golden_dir), "x2t_video")
    ref = case.tensors
    ids = generate_text(case.decoder, case.cache, int(ref["seq.packed_text_ids"][case.context_len]),
                        ref["pos.prompt_plus_256_pads"][:, case.context_len:], case.vocab_limit, case.stop_token,
                        TextSettings(max_new_tokens=12))
    assert ids == ref["x2t.generated_ids"][:12].tolist()


class ScriptedDecoder:
    """Stands in for ``MoTDecoder``: returns the next row of prepared logits at each step."""

    def __init__(self, rows):
        self.rows, self.fed = rows, []

    def decode_step(self, token_ids, positions, cache):
        assert positions.shape == (3, 1)
        self.fed.append((int(token_ids[0]), int(positions[0, 0])))
        return self.rows[len(self.fed) - 1][None]


def _one_hot(index, size=12, value=5.0):
    row = torch.zeros(size)
    row[index] = value
    return row


def test_generation_stops_at_the_stop_token_and_excludes_it():
    decoder = ScriptedDecoder([_one_hot(3), _one_hot(4), _one_hot(9), _one_hot(5)])
    ids = generate_text(decoder, None, 7, torch.arange(20).expand(3, -1), vocab_limit=10, stop_token=9,
                        settings=TextSettings(max_new_tokens=20))
    assert ids == [3, 4]
    assert decoder.fed == [(7, 0), (3, 1), (4, 2)]  # prompt's last token first, consecutive positions


def test_generation_honours_max_tokens_and_position_room():
    decoder = ScriptedDecoder([_one_hot(2)] * 5)
    assert generate_text(decoder, None, 1, torch.zeros(3, 3, dtype=torch.long), 10, 9,
                         TextSettings(max_new_tokens=3)) == [2, 2, 2]
    with pytest.raises(ValueError, match="positions cover 3 steps"):
        generate_text(decoder, None, 1, torch.zeros(3, 3, dtype=torch.long), 10, 9, TextSettings(max_new_tokens=4))


def test_rows_beyond_the_tokenizer_are_never_picked():
    logits = torch.tensor([0.1, 0.2, 0.3, 9.0, 8.0]).bfloat16()
    assert pick_token(logits, vocab_limit=3, settings=TextSettings()) == 2
    gen = torch.Generator().manual_seed(0)
    picks = {pick_token(logits, 3, TextSettings(temperature=1.0), gen) for _ in range(50)}
    assert picks <= {0, 1, 2} and len(picks) > 1


def test_sampling_is_reproducible_and_top_p_narrows_it():
    logits = torch.tensor([2.0, 1.9, 1.8, -3.0])
    settings = TextSettings(temperature=0.7)
    draws = [[pick_token(logits, 4, settings, torch.Generator().manual_seed(s)) for s in range(20)] for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1
    narrow = TextSettings(temperature=0.7, top_p=0.3)
    assert {pick_token(logits, 4, narrow, torch.Generator().manual_seed(s)) for s in range(20)} == {0}
