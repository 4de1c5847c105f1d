"""How the nodes use ComfyUI at run time: which model parts each asks the memory manager for, progress
per step / token with Wan 2.2 latent previews, interrupts within one step without harming the cached
cond, and the errors that name a wrong checkpoint, latent or input."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from pack_import import load_model, memory_requests, run_node, set_progress_hook, ticks, tiny_folders, vae  # noqa: F401

from lance_model.comfy_lookup import import_comfy_module

PROMPT = "Two children play football on the beach; waves roll in."
SAMPLER = dict(seed=3, steps=4, cfg=4.0, shift=3.5, cfg_start=0.4, cfg_end=1.0, renorm="global", noise="comfy")
CAPTION = dict(question="What is in the picture?", kind="image", fps=12.0, resolution="image_256res", instruction="",
               max_new_tokens=6, sampling="off", temperature=0.7, top_p=0.9, seed=0)

pytestmark = pytest.mark.usefixtures("tiny_folders")


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(2))


def t2i(model, **overrides):
    cond = run_node("LanceTextEncode", model=model, prompt=PROMPT, task="text_to_image").args[0]
    latent = run_node("LanceEmptyLatent", width=80, height=48, frames=1).args[0]
    return cond, latent, lambda: run_node("LanceSampler", model=model, cond=cond, latent=latent,
                                          **(SAMPLER | overrides)).args[0]["samples"]


def test_each_node_asks_the_memory_manager_for_only_the_parts_it_runs(memory_requests, vae, image):
    model = load_model("Lance_3B")
    parts = model.parts | {"vae": vae.patcher}
    cond, latent, sample = t2i(model)
    assert memory_requests.named(parts) == [["und"]]
    sample()
    assert memory_requests.named(parts)[1:] == [["gen", "und"]]
    memory_requests.calls.clear()
    run_node("LanceEditEncode", model=model, vae=vae, image=image, instruction="Make it pink.", kind="image", fps=12.0,
             resolution="image_256res")
    assert memory_requests.named(parts) == [["vit"], ["vae"], ["und", "gen"]]
    memory_requests.calls.clear()
    run_node("LanceCaptioner", model=model, image=image, **CAPTION)
    assert memory_requests.named(parts) == [["vit"], ["und"]]


def test_node_outputs_live_on_the_intermediate_device():
    intermediate = import_comfy_module("comfy.model_management").intermediate_device()
    cond, _, sample = t2i(load_model("Lance_3B"))
    assert {k.device for k in cond.cond_cache.keys + cond.uncond_cache.keys} == {intermediate}
    assert sample().device == intermediate


def test_the_sampler_reports_every_step_with_a_wan22_latent_preview(monkeypatch, ticks):
    args = import_comfy_module("comfy.cli_args")
    monkeypatch.setattr(args.args, "preview_method", args.LatentPreviewMethod.Latent2RGB)
    _, _, sample = t2i(load_model("Lance_3B"))
    ticks.clear()  # the text encoder's
    sample()
    assert [(value, total) for value, total, _ in ticks] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for _, _, (kind, picture, _) in ticks:
        assert kind == "JPEG" and picture.size == (5, 3)  # Latent2RGB previews at latent size (80x48 px / 16)


def test_without_previews_the_sampler_still_reports_progress(ticks):
    _, _, sample = t2i(load_model("Lance_3B"), steps=3)
    ticks.clear()  # the text encoder's
    sample()
    assert [(value, total, preview) for value, total, preview in ticks] == [(1, 3, None), (2, 3, None), (3, 3, None)]


def test_an_interrupt_stops_the_sampler_within_one_step_and_the_cond_stays_usable(monkeypatch, ticks):
    manager = import_comfy_module("comfy.model_management")
    cond, _, sample = t2i(load_model("Lance_3B"), steps=6)
    expected = sample()
    ticks.clear()

    def interrupt_after_step_two(value, total, preview, node_id=None):
        ticks.append(value)
        if value == 2:
            manager.interrupt_current_processing(True)  # what POST /interrupt does, during step 3

    set_progress_hook(monkeypatch, interrupt_after_step_two)
    with pytest.raises(manager.InterruptProcessingException):
        sample()
    assert ticks == [1, 2] and not manager.processing_interrupted()
    assert all(k is not None for k in cond.cond_cache.keys + cond.uncond_cache.keys)
    set_progress_hook(monkeypatch, None)
    assert torch.equal(sample(), expected)


def test_the_captioner_reports_progress_per_token(ticks, image):
    text = run_node("LanceCaptioner", model=load_model("Lance_3B"), image=image, **CAPTION).args[0]
    assert text
    values = [value for value, _, _ in ticks]
    assert values == list(range(1, len(values) + 1)) and 1 <= len(values) <= 6
    assert {total for _, total, _ in ticks} == {6}


def test_sampling_the_answer_follows_the_seed(image):
    model = load_model("Lance_3B")
    settings = CAPTION | dict(sampling="on", temperature=1.5, top_p=1.0, max_new_tokens=12)
    first, again, other = (run_node("LanceCaptioner", model=model, image=image, **(settings | dict(seed=s))).args[0]
                           for s in (1, 1, 2))
    assert first == again and first != other


@pytest.mark.parametrize("checkpoint, node, inputs, message", [
    ("Lance_3B", "LanceTextEncode", dict(prompt=PROMPT, task="text_to_video"),
     r"task text_to_video needs the video model \(Lance_3B_Video\), but Lance_3B is the image model"),
    ("Lance_3B_Video", "LanceTextEncode", dict(prompt=PROMPT, task="text_to_image"),
     r"needs the image model \(Lance_3B\)"),
    ("Lance_3B", "LanceTextEncode", dict(prompt="   ", task="text_to_image"), "prompt is empty"),
    ("Lance_3B", "LanceTextEncode", dict(prompt="word " * 1200, task="text_to_image"),
     r"prompt is \d+ tokens long; at most \d+ fit before position 1000"),
    ("Lance_3B", "LanceCaptioner", dict(CAPTION, kind="video"), r"kind video needs the video model"),
])
def test_wrong_checkpoints_and_texts_are_refused_with_the_fix(image, checkpoint, node, inputs, message):
    model = load_model(checkpoint)
    media = {"image": image} if node == "LanceCaptioner" else {}
    with pytest.raises(ValueError, match=message):
        run_node(node, model=model, **media, **inputs)


def test_the_sampler_refuses_latents_that_do_not_fit_the_cond(vae, image):
    model = load_model("Lance_3B")
    cond, latent, _ = t2i(model)
    video_latent = run_node("LanceEmptyLatent", width=80, height=48, frames=5).args[0]
    cases = [
        (video_latent, r"encoded with task text_to_image but the latent has 2 latent frames"),
        ({"samples": latent["samples"].repeat(2, 1, 1, 1, 1)}, "one latent at a time, got a batch of 2"),
        ({"samples": torch.zeros(1, 16, 1, 3, 5)}, r"needs a Wan 2\.2 latent \[1, 48, t, h, w\]"),
        (dict(video_latent, noise_mask=torch.ones(1, 1, 2, 3, 5) * 0.5), "0 or 1 for each entire latent frame"),
        (dict(video_latent, noise_mask=torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 3, 5)),
         "can keep only the first latent frame"),
    ]
    for target, message in cases:
        with pytest.raises(ValueError, match=message):
            run_node("LanceSampler", model=model, cond=cond, latent=target, **SAMPLER)
    i2v = run_node("LanceImageToVideoLatent", vae=vae, start_image=image, frames=5, resolution="image_256res").args[0]
    with pytest.raises(ValueError, match="needs a prompt encoded with task text_to_video"):
        run_node("LanceSampler", model=model, cond=cond, latent=i2v, **SAMPLER)


def test_a_cond_from_a_checkpoint_of_another_architecture_is_refused():
    model = load_model("Lance_3B")
    cond, latent, _ = t2i(model)
    foreign = dataclasses.replace(cond, config=dataclasses.replace(model.config, rope_theta=1.0))
    with pytest.raises(ValueError, match="encoded by a checkpoint of another architecture"):
        run_node("LanceSampler", model=model, cond=foreign, latent=latent, **SAMPLER)


def test_the_sampler_refuses_an_empty_guidance_interval():
    with pytest.raises(ValueError, match=r"cfg_start \(0\.9\) is above cfg_end \(0\.5\)"):
        run_node("LanceSampler", model=None, cond=None, latent=None, **(SAMPLER | dict(cfg_start=0.9, cfg_end=0.5)))


@pytest.mark.parametrize("kind, frames, message", [
    ("image", 2, "kind 'image' takes one image, got a batch of 2"),
    ("video", 1, "kind 'video' needs the clip's frames"),
])
def test_edit_media_must_match_the_kind(vae, kind, frames, message):
    model = load_model("Lance_3B" if kind == "image" else "Lance_3B_Video")
    with pytest.raises(ValueError, match=message):
        run_node("LanceEditEncode", model=model, vae=vae, image=torch.rand(frames, 48, 64, 3),
                 instruction="Make it red.", kind=kind, fps=12.0, resolution="image_256res")


def test_an_image_to_video_latent_from_other_nodes_uses_its_samples(vae, image):
    """Without the i2v node's exact copy of frame 0 (another node made or changed the latent), the sampler
    converts the LATENT's own first frame; a stale copy is never used."""
    model = load_model("Lance_3B_Video")
    cond = run_node("LanceTextEncode", model=model, prompt=PROMPT, task="text_to_video").args[0]
    latent = run_node("LanceImageToVideoLatent", vae=vae, start_image=image, frames=5,
                      resolution="image_256res").args[0]

    def generate(target):
        return run_node("LanceSampler", model=model, cond=cond, latent=target, **SAMPLER).args[0]["samples"]

    exact = generate(latent)
    converted = generate({key: value for key, value in latent.items() if key != "lance_clean_frames"})
    assert not torch.equal(converted, exact)
    assert (converted - exact).norm() / exact.norm() < 0.02
    changed = dict(latent, samples=latent["samples"] * 0.5)
    assert (generate(changed)[:, :, 0] - exact[:, :, 0] * 0.5).abs().max() < 0.05
