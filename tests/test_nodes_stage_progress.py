"""Progress and Cancel in the encoder nodes: Lance Edit Encode ticks once per stage (vision tower, VAE
encode, prefill) and Lance Text Encode once for its prefill. An interrupt stops them at the next stage
boundary (or, through ComfyUI's layers, at the next op), propagates, keeps no prefix cache alive and
leaves nothing that changes the next run."""
from __future__ import annotations

import gc

import pytest
import torch
from pack_import import load_model, pack_module, run_node, set_progress_hook, ticks, tiny_folders, vae  # noqa: F401

from lance_model.comfy_lookup import import_comfy_module

INSTRUCTION = "Make the sky pink."
PROMPT = "A lighthouse on a cliff at dusk."

pytestmark = pytest.mark.usefixtures("tiny_folders")


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def manager():
    return import_comfy_module("comfy.model_management")


@pytest.fixture
def server_ticks(monkeypatch, manager):
    """Progress values through a hook that, like the server's (main.py), raises a pending interrupt."""
    seen = []

    def hook(value, total, preview, node_id=None):
        manager.throw_exception_if_processing_interrupted()
        seen.append(value)

    set_progress_hook(monkeypatch, hook)
    return seen


def edit(vae, image):
    return run_node("LanceEditEncode", model=load_model("Lance_3B"), vae=vae, image=image, instruction=INSTRUCTION,
                    kind="image", fps=12.0, resolution="image_256res").args


def text():
    return run_node("LanceTextEncode", model=load_model("Lance_3B"), prompt=PROMPT, task="text_to_image").args


def encoder(node: str, vae, image):
    return (lambda: edit(vae, image)) if node == "edit" else text


class Calls:
    """What a patched function saw: how often it was called, and what the calls that returned gave."""

    def __init__(self):
        self.started = 0
        self.results = []


def interrupt_after(monkeypatch, owner, function: str, manager) -> Calls:
    """Raise the interrupt flag (as POST /interrupt does) whenever ``owner.<function>`` returns; ComfyUI's
    layers check it at every op."""
    original = getattr(owner, function)
    calls = Calls()

    def run_then_interrupt(*args, **kwargs):
        calls.started += 1
        calls.results.append(original(*args, **kwargs))
        manager.interrupt_current_processing(True)
        return calls.results[-1]

    monkeypatch.setattr(owner, function, run_then_interrupt)
    return calls


def live_kv_caches() -> int:
    kv_cache = pack_module("lance_model.kv_cache").KVCache
    gc.collect()
    return sum(type(obj) is kv_cache for obj in gc.get_objects())


def assert_same_cond(cond, expected) -> None:
    for cache, reference in ((cond.cond_cache, expected.cond_cache), (cond.uncond_cache, expected.uncond_cache)):
        assert len(cache) == len(reference) > 0
        for got, want in zip(cache.keys + cache.values, reference.keys + reference.values):
            assert torch.equal(got, want)


def test_edit_encode_ticks_once_per_stage_and_text_encode_once(ticks, vae, image):
    edit(vae, image)
    assert ticks == [(1, 3, None), (2, 3, None), (3, 3, None)]
    ticks.clear()
    text()
    assert ticks == [(1, 1, None)]


def test_an_interrupt_during_the_vae_encode_stops_the_edit_before_its_prefill(monkeypatch, ticks, manager, vae,
                                                                               image):
    node_module = pack_module("nodes.edit_encode")
    interrupt_after(monkeypatch, node_module, "encode_clean_latent", manager)
    prefills = interrupt_after(monkeypatch, node_module, "encode_prompt", manager)
    with pytest.raises(manager.InterruptProcessingException):
        edit(vae, image)
    assert [value for value, _, _ in ticks] == [1, 2] and prefills.started == 0
    assert not manager.processing_interrupted()


@pytest.mark.parametrize("node", ["edit", "text"])
def test_an_interrupt_inside_the_prefill_leaves_nothing_behind(monkeypatch, server_ticks, manager, vae, image, node):
    """The first prefilled split's caches live only in the frames of the interrupted call."""
    encode = encoder(node, vae, image)
    expected = encode()
    server_ticks.clear()
    caches_before = live_kv_caches()
    with monkeypatch.context() as patch:
        splits = interrupt_after(patch, pack_module("lance_model.mot").MoTDecoder, "prefill", manager)
        with pytest.raises(manager.InterruptProcessingException) as raised:
            encode()
    assert (splits.started, len(splits.results)) == (2, 1) and server_ticks == ([1, 2] if node == "edit" else [])
    assert not manager.processing_interrupted()
    del raised
    assert live_kv_caches() == caches_before
    again = encode()
    assert_same_cond(again[0], expected[0])
    if node == "edit":
        assert torch.equal(again[1]["samples"], expected[1]["samples"])


@pytest.mark.parametrize("node", ["edit", "text"])
def test_an_interrupt_at_the_end_of_the_prefill_frees_the_new_caches(monkeypatch, server_ticks, manager, vae, image,
                                                                      node):
    """The server's progress hook raises it at the stage's tick, while the exception (and the frames it
    keeps) still live, so the node itself must release the caches."""
    encode = encoder(node, vae, image)
    prefills = interrupt_after(monkeypatch, pack_module(f"nodes.{node}_encode"), "encode_prompt", manager)
    with pytest.raises(manager.InterruptProcessingException):
        encode()
    assert server_ticks == ([1, 2] if node == "edit" else []) and not manager.processing_interrupted()
    (condition,) = prefills.results
    assert all(t is None for t in condition.cond_cache.keys + condition.uncond_cache.values)
