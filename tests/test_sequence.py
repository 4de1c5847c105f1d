"""Packed sequences of all seven tasks against the reference goldens, plus captions the goldens do
not cover (spaces, CJK, empty, long, merged with the template, special tokens)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from lance_model.config import LANCE_3B_LLM, ConfigError
from lance_model.positions import rope_grids
from lance_model.prompts import (DEFAULT_UNDERSTANDING_INSTRUCTIONS, VISUAL_PLACEHOLDER, generation_system_prompt,
                                 render_chat)
from lance_model.sequence import (CAPTION, CAUSAL, build_edit, build_text_to_visual, build_understanding,
                                  latent_shape)
from lance_model.tokenizer import LanceTokenizer
from sequence_goldens import gen_case, golden_case, und_case  # noqa: F401

BLOCK_SIZE = 128  # the reference pads every sample's split list to a multiple of this before MaPE


@pytest.fixture(scope="module")
def t2i(golden_dir):
    return golden_case(golden_dir, "t2i")


@pytest.fixture(scope="module")
def qwen_vocab():
    """The full Qwen2.5 vocabulary that ships inside ComfyUI (the Lance tokenizer's vocabulary)."""
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        pytest.fail("COMFYUI_PATH is not set; run the tests through scripts/test.sh")
    return LanceTokenizer.from_dir(Path(comfyui) / "comfy" / "text_encoders" / "qwen25_tokenizer")


def _same(actual, expected):
    assert torch.equal(torch.as_tensor(actual, dtype=torch.int64), expected.to(torch.int64)), \
        f"{torch.as_tensor(actual).tolist()[:40]} != {expected.tolist()[:40]}"


# --------------------------------------------------------------------------------------------- goldens


def test_generation_sequence_matches_reference(gen_case):
    s, t = gen_case.sample, gen_case.tensors
    _same(s.token_ids, t["seq.packed_text_ids"])
    assert s.split_lens == gen_case.settings["split_lens"]
    assert s.attn_modes == gen_case.settings["attn_modes"]
    _same(s.modality, t["seq.sample_modality"])
    _same(s.text_indexes, t["seq.packed_text_indexes"])
    _same(s.vae_token_indexes, t["seq.packed_vae_token_indexes"])
    _same(s.noisy_target_indexes, t["seq.mse_loss_indexes"])
    _same(s.updated_latent_rows, t["gen.updated_rows"])
    _same(s.vit_token_indexes, t.get("seq.packed_vit_token_indexes", torch.zeros(0, dtype=torch.int64)))
    _same([rope_grids(s, gen_case.cfg)], t["seq.video_grid_thw"])
    _same([b.rope_grid(gen_case.cfg.spatial_merge_size) for b in s.blocks if b.is_latent], t["seq.vae_video_grid_thw"])


def test_vit_grid_matches_reference(golden_dir):
    for task in ("image_edit", "video_edit", "x2t_image", "x2t_video"):
        case = golden_case(golden_dir, task)
        (vit,) = [b for b in case.sample.blocks if not b.is_latent]
        _same([vit.grid], case.tensors["vit.grid_thw_0"])


def test_system_prompt_is_byte_exact(gen_case):
    decoded = gen_case.settings["decoded_text_of_sequence"]
    system = generation_system_prompt(gen_case.task)
    assert decoded.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    if "edit" in gen_case.task:
        assert "user\u2019s" in system


def test_caption_split_and_modality(gen_case):
    s = gen_case.sample
    caption_ids = gen_case.tokenizer.encode(gen_case.settings["caption"])
    assert s.caption.mode == CAUSAL and s.caption in s.splits
    assert s.token_ids[s.caption.start:s.caption.end].tolist() == caption_ids
    assert torch.nonzero(s.modality == CAPTION).flatten().tolist() == list(range(s.caption.start, s.caption.end))


def test_unconditional_matches_reference_mape_calls(gen_case):
    """settings.mape_calls holds the split layout the reference handed to MaPE, cond then uncond, both
    ending with the causal split that pads the *conditional* sample to a multiple of 128 tokens."""
    s, u = gen_case.sample, gen_case.sample.unconditional()
    pad = -len(s) % BLOCK_SIZE
    for sample, call in zip((s, u), gen_case.settings["mape_calls"]):
        assert call["split_lens"] == sample.split_lens + ([pad] if pad else [])
        assert call["attn_modes"] == sample.attn_modes + (["causal"] if pad else [])
    keep = s.modality != CAPTION
    _same(u.token_ids, s.token_ids[keep])
    _same(u.modality, s.modality[keep])
    assert CAPTION not in u.modality.tolist() and u.caption is None
    assert [b.grid for b in u.blocks] == [b.grid for b in s.blocks]
    for block in u.blocks:
        assert u.token_ids[block.start].item() == gen_case.cfg.vision_start_token_id
        assert u.token_ids[block.end - 1].item() == gen_case.cfg.vision_end_token_id


def test_understanding_prompt_matches_reference(und_case):
    """The golden sequence holds the rendered answer too; the reference generates from the prefix that
    ends with ``<|im_start|>assistant\\n``, i.e. up to its first loss index."""
    s, t = und_case.sample, und_case.tensors
    prompt_len = int(t["seq.ce_loss_indexes"][0]) + 1
    assert len(s) == prompt_len
    _same(s.token_ids, t["seq.packed_text_ids"][:prompt_len])
    _same(s.modality, t["seq.sample_modality"][:prompt_len])
    golden_lens = und_case.settings["split_lens"]
    assert s.split_lens == golden_lens[:-1] + [golden_lens[-1] - (len(t["seq.packed_text_ids"]) - prompt_len)]
    assert s.attn_modes == und_case.settings["attn_modes"]
    _same(s.vit_token_indexes, t["seq.packed_vit_token_indexes"])
    _same(s.text_indexes, t["seq.packed_text_indexes"][t["seq.packed_text_indexes"] < prompt_len])
    _same([rope_grids(s, und_case.cfg)], t["seq.video_grid_thw"])
    assert und_case.tokenizer.decode(s.token_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert s.caption is None and s.target is None


def test_default_understanding_instruction_is_the_reference_example(und_case):
    request = json.loads((und_case.folder / "inputs" / "request.json").read_text(encoding="utf-8"))
    (entry,) = request.values()
    instruction, question, _answer = entry["interleave_array"][1]
    assert DEFAULT_UNDERSTANDING_INSTRUCTIONS[und_case.task.removeprefix("x2t_")] == instruction
    vit_grid = und_case.sample.blocks[0].grid
    default = build_understanding(und_case.task, und_case.tokenizer, und_case.cfg, question, vit_grid)
    _same(default.token_ids, und_case.sample.token_ids)


# --------------------------------------------------------------------------------------------- other captions


def _t2i(case, prompt):
    return build_text_to_visual("t2i", case.tokenizer, case.cfg, prompt, (1, 4, 6))


@pytest.mark.parametrize("prompt", ["  A red cube on a table.  ", "\tA red cube\t", "一只红色的猫坐在蓝色的桌子上。",
                                    "Ein Würfel — «rot» ", "A cube.\nA ball.\n"])
def test_caption_keeps_its_text_and_is_its_own_split(t2i, prompt):
    s = _t2i(t2i, prompt)
    ids = t2i.tokenizer.encode(prompt)
    assert s.token_ids[s.caption.start:s.caption.end].tolist() == ids
    assert t2i.tokenizer.decode(s.token_ids[s.caption.start:s.caption.end]) == prompt
    header = t2i.tokenizer.encode(f"<|im_start|>system\n{generation_system_prompt('t2i')}<|im_end|>\n<|im_start|>user\n")
    assert s.caption.start == len(header)
    assert s.split_lens == [len(header), len(ids)] + t2i.settings["split_lens"][2:]
    assert len(s.unconditional()) == len(s) - len(ids)


def test_long_caption(t2i):
    prompt = " ".join(f"object{k} is {'red' if k % 2 else 'blue'}," for k in range(400)) + " end."
    s = _t2i(t2i, prompt)
    assert s.caption.length == len(t2i.tokenizer.encode(prompt)) > 1000
    assert s.split_lens[0] == t2i.settings["split_lens"][0]
    assert s.split_lens[2:] == t2i.settings["split_lens"][2:]
    assert sum(s.split_lens) == len(s)


def test_empty_caption_is_refused(t2i):
    with pytest.raises(ValueError, match="prompt is empty"):
        _t2i(t2i, "")


@pytest.mark.parametrize("prompt", ["\nA red cube", " \nA red cube", "\n\n"])
def test_caption_merged_with_template_line_break_is_refused(qwen_vocab, prompt):
    """The template puts ``user\\n`` before the prompt; with Qwen's merges a leading line break fuses
    with that one, so the prompt's own tokenisation is nowhere in the sequence (the reference fails
    here too). The tiny golden vocabulary has no such merge."""
    with pytest.raises(ValueError, match="remove the leading line breaks"):
        build_text_to_visual("t2i", qwen_vocab, LANCE_3B_LLM, prompt, (1, 48, 48))


def test_full_size_vocabulary_ids_come_from_tokenizer_and_config(qwen_vocab):
    s = build_edit("video_edit", qwen_vocab, LANCE_3B_LLM, "Change the car's color to red.", (3, 16, 28), (2, 30, 53))
    assert [s.token_ids[b.start].item() for b in s.blocks] == [LANCE_3B_LLM.vision_start_token_id] * 3
    assert [s.token_ids[b.end - 1].item() for b in s.blocks] == [LANCE_3B_LLM.vision_end_token_id] * 3
    assert (s.token_ids == LANCE_3B_LLM.video_token_id).sum().item() == 3 * (16 // 2) * (28 // 2) + 2 * (2 * 30 * 53)
    assert s.token_ids[0].item() == qwen_vocab.token_id("<|im_start|>")
    assert s.token_ids[-1].item() == qwen_vocab.token_id("<|im_end|>")
    assert s.token_ids[s.caption.start:s.caption.end].tolist() == qwen_vocab.encode("Change the car's color to red.")


def test_caption_that_also_occurs_in_the_system_prompt_is_found_there(t2i):
    """Reference behaviour kept for parity: the first exact occurrence wins, even inside the system
    prompt (``system\\nDescribe`` tokenises like a stand-alone ``Describe``)."""
    s = _t2i(t2i, "Describe")
    assert s.caption.start == len(t2i.tokenizer.encode("<|im_start|>system\n"))
    assert s.modality[s.caption.start:s.caption.end].tolist() == [CAPTION] * s.caption.length
    assert s.modality[s.caption.end:].tolist().count(CAPTION) == 0


@pytest.mark.parametrize("text", ["<|video_pad|>", "a <|vision_start|> b", "<|image_pad|>",
                                  VISUAL_PLACEHOLDER])
def test_vision_tokens_in_user_text_are_refused(t2i, text):
    with pytest.raises(ValueError, match="vision special tokens"):
        _t2i(t2i, f"A cube {text}")
    with pytest.raises(ValueError, match="vision special tokens"):
        build_understanding("x2t_image", t2i.tokenizer, t2i.cfg, f"What is {text}?", (1, 4, 4))


def test_edit_instruction_follows_the_visual_blocks(t2i):
    s = build_edit("image_edit", t2i.tokenizer, t2i.cfg, " Make it blue ", (1, 2, 4), (1, 3, 5))
    vit, source, target = s.blocks
    assert (vit.num_tokens, source.num_tokens, target.num_tokens) == (2, 15, 15)
    assert s.caption.start == source.end and target.grid == source.grid
    assert s.attn_modes == [CAUSAL, "full", "full_noise", CAUSAL, CAUSAL, "noise", CAUSAL]


def test_i2v_needs_a_generated_frame(t2i):
    with pytest.raises(ValueError, match="at least 2 latent frames"):
        build_text_to_visual("i2v", t2i.tokenizer, t2i.cfg, "A cube", latent_shape(1, 64, 64))


def test_vit_grid_must_merge(t2i):
    with pytest.raises(ValueError, match="divisible by the merge size 2"):
        build_understanding("x2t_image", t2i.tokenizer, t2i.cfg, "What?", (1, 3, 4))


def test_unknown_task_is_refused(t2i):
    with pytest.raises(ValueError, match="task must be one of"):
        build_text_to_visual("t2x", t2i.tokenizer, t2i.cfg, "A", (1, 1, 1))


def test_tokenizer_and_config_must_agree(t2i):
    wrong = dataclasses.replace(t2i.cfg, video_token_id=t2i.cfg.video_token_id + 1)
    with pytest.raises(ConfigError, match="disagree"):
        build_text_to_visual("t2i", t2i.tokenizer, wrong, "A cube", (1, 4, 6))


def test_latent_shape_follows_the_vae_strides():
    assert latent_shape(1, 768, 768) == (1, 48, 48)
    assert latent_shape(121, 480, 848) == (31, 30, 53)
    assert latent_shape(50, 479, 847) == (13, 29, 52)
    with pytest.raises(ValueError, match="has no latent"):
        latent_shape(0, 64, 64)


def test_chat_layout():
    assert render_chat("S", "U", "A") == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n" \
                                         "<|im_start|>assistant\nA<|im_end|>"
    assert render_chat("S", "U", None).endswith("<|im_end|>\n<|im_start|>assistant\n")
