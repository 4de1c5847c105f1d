"""The separable model steps a node graph calls (``encode_prompt`` → ``sample_latent``; ``prefill_question``
→ ``decode_answer``): condition reuse across sizes and seeds, the per-step callback, interrupts and
cache release, i2v's clean frame, and the errors that name the fix. Runs on the golden tiny model."""
from __future__ import annotations

import pytest
import torch

from lance_model.checkpoint import LanceCheckpoint
from lance_model.generation import EditSource, encode_prompt, sample_latent
from lance_model.mot import MoTDecoder
from lance_model.noise import comfy_noise
from lance_model.parts import build_parts
from lance_model.sampling import FlowSettings, TextSettings
from lance_model.understanding import decode_answer, prefill_question
from lance_model.vision_tokens import VisionTokens

SETTINGS = FlowSettings(steps=3)
PROMPT = "A red cube sits on a blue table."


@pytest.fixture(scope="module")
def model(golden_dir):
    ckpt = LanceCheckpoint.open(golden_dir / "ckpt" / "Lance_tiny")
    parts = build_parts(ckpt)
    return MoTDecoder(parts.und, parts.gen), ckpt.tokenizer


def noise(shape, seed=0):
    return comfy_noise((1, 48, *shape), seed)[0].reshape(*shape, 48)


class Interrupted(Exception):
    pass


def test_one_condition_serves_any_size_and_seed_without_changing(model):
    decoder, tokenizer = model
    condition = encode_prompt(decoder, tokenizer, "t2v", PROMPT)
    held = condition.nbytes()
    first = sample_latent(decoder, condition, noise((2, 4, 6)), SETTINGS)
    again = sample_latent(decoder, condition, noise((2, 4, 6)), SETTINGS)
    other = sample_latent(decoder, condition, noise((1, 2, 3), seed=5), SETTINGS)
    fresh = sample_latent(decoder, encode_prompt(decoder, tokenizer, "t2v", PROMPT), noise((1, 2, 3), seed=5), SETTINGS)
    assert first.shape == (2, 4, 6, 48) and first.dtype == torch.bfloat16
    assert torch.equal(first, again) and torch.equal(other, fresh)
    assert condition.nbytes() == held > 0


def test_callback_sees_every_step_and_the_last_estimate_is_the_result(model):
    decoder, tokenizer = model
    seen = []
    latent = sample_latent(decoder, encode_prompt(decoder, tokenizer, "t2i", PROMPT), noise((1, 4, 6)), SETTINGS,
                           callback=lambda step, x0: seen.append((step, x0)))
    assert [step for step, _ in seen] == list(range(SETTINGS.steps))
    assert all(x0.shape == (1, 4, 6, 48) and x0.dtype == torch.float32 for _, x0 in seen)
    assert torch.equal(seen[-1][1], latent.float())  # t reaches 0 at the last step
    assert not torch.equal(seen[0][1], latent.float())


@pytest.mark.parametrize("free", [True, False])
def test_interrupt_stops_sampling_and_frees_only_when_asked(model, free):
    decoder, tokenizer = model
    condition = encode_prompt(decoder, tokenizer, "t2i", PROMPT)
    steps = []

    def interrupt(step, x0):
        steps.append(step)
        raise Interrupted

    with pytest.raises(Interrupted):
        sample_latent(decoder, condition, noise((1, 4, 6)), SETTINGS, callback=interrupt, free_condition=free)
    assert steps == [0]
    assert (condition.nbytes() == 0) is free


def test_i2v_keeps_its_clean_first_frame(model):
    decoder, tokenizer = model
    condition = encode_prompt(decoder, tokenizer, "i2v", PROMPT)
    clean = torch.randn(1, 4, 6, 48)
    latent = sample_latent(decoder, condition, noise((2, 4, 6)), SETTINGS, clean_frames=clean)
    assert torch.equal(latent[:1], clean.bfloat16())
    assert not torch.equal(latent[1:], noise((2, 4, 6))[1:].bfloat16())
    with pytest.raises(ValueError, match=r"i2v needs its encoded image as clean_frames \[1, 4, 6, 48\]"):
        sample_latent(decoder, condition, noise((2, 4, 6)), SETTINGS)
    with pytest.raises(ValueError, match="t2v has no clean frames"):
        sample_latent(decoder, encode_prompt(decoder, tokenizer, "t2v", PROMPT), noise((2, 4, 6)), SETTINGS,
                      clean_frames=clean)


@pytest.mark.parametrize("task, shape, message", [
    ("t2i", (2, 4, 6), "t2i makes one image"),
    ("t2i", (1, 4, 65), "exceeds the model's 64×64 latent grid"),
    ("t2v", (32, 4, 6), "more than the model's 31"),
    ("i2v", (1, 4, 6), "i2v needs at least 2 latent frames"),
])
def test_target_limits_are_named(model, task, shape, message):
    decoder, tokenizer = model
    with pytest.raises(ValueError, match=message):
        sample_latent(decoder, encode_prompt(decoder, tokenizer, task, PROMPT), noise(shape), SETTINGS)


def test_edit_needs_its_source_and_keeps_its_size(model):
    decoder, tokenizer = model
    with pytest.raises(ValueError, match="image_edit needs its source"):
        encode_prompt(decoder, tokenizer, "image_edit", "Make it pink.")
    vision = VisionTokens(torch.randn(2 * 2, decoder.config.hidden_size).bfloat16(), (1, 4, 4))
    source = EditSource(vision, torch.randn(1, 3, 5, 48))
    condition = encode_prompt(decoder, tokenizer, "image_edit", "Make it pink.", source)
    assert condition.source_tokens == 15
    assert sample_latent(decoder, condition, noise((1, 3, 5)), SETTINGS).shape == (1, 3, 5, 48)
    with pytest.raises(ValueError, match=r"source's latent shape \[1, 3, 5\], got \[1, 4, 6\]"):
        sample_latent(decoder, condition, noise((1, 4, 6)), SETTINGS)
    short = EditSource(VisionTokens(vision.embeds[:3], (1, 4, 4)), source.latent)
    with pytest.raises(ValueError, match=r"ViT tokens \(3\) do not match its grid \[1, 4, 4\] \(4 tokens\)"):
        encode_prompt(decoder, tokenizer, "image_edit", "Make it pink.", short)


def test_x2t_steps_decode_once_within_the_prefilled_budget(model):
    decoder, tokenizer = model
    vision = VisionTokens(torch.randn(4, decoder.config.hidden_size).bfloat16(), (1, 4, 4))
    state = prefill_question(decoder, tokenizer, "x2t_image", "What is it?", vision, max_new_tokens=4)
    prompt_tokens = len(state.sample) - 1
    assert len(state.cache) == prompt_tokens and state.max_new_tokens == 4
    with pytest.raises(ValueError, match="prefilled for at most 4 new tokens, 5 asked"):
        decode_answer(decoder, tokenizer, state, TextSettings(max_new_tokens=5))
    seen = []
    reply = decode_answer(decoder, tokenizer, state, TextSettings(max_new_tokens=4), on_token=seen.append)
    assert reply.ids == seen and 1 <= len(reply.ids) <= 4
    assert reply.text == tokenizer.decode(reply.ids).strip()
    assert len(state.cache) == 0  # released after decoding
