"""Attention backends: the chosen kernel really runs the LLM's and the vision tower's attention (fake
flash-attn / SageAttention packages record their calls), with SDPA's results; ``auto`` per device; clear
errors for missing packages; SDPA where a kernel cannot take a call; CUDA graphs only with capturable ones."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import lance_model.attention_backends as backends
from fake_attention_kernels import PACKAGES, install, uninstall
from lance_model import mot
from lance_model.attention import attention
from lance_model.attention_backends import attention_backend, resolve_backend_name
from lance_model.cuda_graphs import DISABLE_ENV
from lance_model.mot import MoTDecoder
from lance_model.varlen_attention import PackedSegments
from lance_model.vision_tokens import encode_vision
from lance_model.vit import window_order
from mot_cases import load_decoder, rel_l2
from parity_measures import vision_tower

BF16_REL_L2 = 1e-2
INSTALL_COMMANDS = {"flash_attn": "pip install flash-attn --no-build-isolation", "sage": "pip install sageattention"}


@pytest.fixture(scope="module")
def experts(golden_dir):
    decoder = load_decoder(str(golden_dir / "ckpt" / "Lance_tiny"))
    return decoder.und, decoder.gen


@pytest.fixture(scope="module")
def tower(golden_dir):
    return vision_tower(Path(golden_dir) / "ckpt" / "Lance_tiny", torch.bfloat16)


@pytest.fixture
def fresh_notes(monkeypatch):
    monkeypatch.setattr(backends, "_noted", set())


def _llm_passes(decoder: MoTDecoder):
    """A causal chunk, a causal chunk after it (the cached prefix) and a bidirectional latent block:
    the velocity and the last layer's cached keys."""
    gen = torch.Generator().manual_seed(0)
    cfg = decoder.config
    text = decoder.embed_tokens(torch.randint(cfg.vocab_size, (10,), generator=gen))
    block = (torch.randn(6, cfg.hidden_size, generator=gen) * text.float().std()).to(decoder.dtype)
    positions = torch.arange(16).expand(3, 16)
    cache = decoder.new_cache()
    decoder.prefill(text[:6], positions[:, :6], cache, causal=True)
    decoder.prefill(text[6:], positions[:, 6:10], cache, causal=True)
    velocity = decoder.velocity(block, positions[:, 10:], cache, torch.arange(1, 5))
    return velocity, cache.keys[-1]


def _expected_llm_calls(name: str, layers: int) -> list[tuple]:
    if name == "flash_attn":
        return [("func", 6, 6, True)] * layers + [("func", 4, 10, True)] * layers + [("func", 6, 16, False)] * layers
    # sage: the causal chunk after a prefix runs on SDPA
    return [("sageattn", 1, 6, 6, True)] * layers + [("sageattn", 1, 6, 16, False)] * layers


@pytest.mark.parametrize("name", ["flash_attn", "sage"])
def test_the_chosen_backend_runs_the_llm_attention_with_sdpa_results(monkeypatch, experts, fresh_notes, name):
    fake = install(monkeypatch, backends, name)
    und, gen = experts
    chosen = MoTDecoder(und, gen, attention=name)
    assert chosen.attention.name == name
    velocity, keys = _llm_passes(chosen)
    assert fake.calls == _expected_llm_calls(name, chosen.config.num_hidden_layers)

    fake.calls.clear()
    sdpa_velocity, sdpa_keys = _llm_passes(MoTDecoder(und, gen, attention="sdpa"))
    assert fake.calls == []
    assert velocity.shape == sdpa_velocity.shape == (4, sdpa_velocity.shape[1])
    assert rel_l2(velocity, sdpa_velocity) < BF16_REL_L2 and rel_l2(keys, sdpa_keys) < BF16_REL_L2


def _segment_groups(grid, cfg) -> list[int]:
    """Per ViT block: how many distinct segment lengths its attention sees (windows or temporal slices)."""
    windows = PackedSegments(window_order([grid], cfg)[1])
    slices = PackedSegments([grid[1] * grid[2]] * grid[0])
    return [len((slices if i in cfg.fullatt_block_indexes else windows).groups) for i in range(cfg.depth)]


@pytest.mark.parametrize("name", ["flash_attn", "sage"])
def test_the_chosen_backend_runs_the_vision_tower_attention_with_sdpa_results(monkeypatch, tower, name):
    fake = install(monkeypatch, backends, name)
    image = torch.randint(0, 256, (80, 120, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    tokens = encode_vision(tower, image, 336, attention=name)
    cfg = tower.config
    windows, _ = window_order([tokens.grid], cfg)
    assert max(_segment_groups(tokens.grid, cfg)) > 1   # clipped edge windows: several segment lengths
    if name == "flash_attn":
        assert [c[0] for c in fake.calls] == ["varlen"] * cfg.depth
    else:
        assert len(fake.calls) == sum(_segment_groups(tokens.grid, cfg))
        assert all(c[0] == "sageattn" and not c[-1] for c in fake.calls)

    fake.calls.clear()
    reference = encode_vision(tower, image, 336, attention="sdpa")
    assert fake.calls == []
    assert tokens.embeds.shape == reference.embeds.shape == (windows.numel(), cfg.out_hidden_size)
    assert rel_l2(tokens.embeds, reference.embeds) < BF16_REL_L2


def test_auto_is_sdpa_on_the_cpu_even_with_flash_attn_installed(monkeypatch, experts):
    install(monkeypatch, backends, "flash_attn")
    assert attention_backend("auto", "cpu") is backends.SDPA
    assert MoTDecoder(*experts).attention is backends.SDPA


@pytest.mark.parametrize("capability,installed,expected", [
    ((8, 6), True, "flash_attn"), ((8, 9), True, "flash_attn"), ((8, 0), False, "sdpa"),
    ((9, 0), True, "sdpa"), ((12, 0), True, "sdpa"), ((7, 5), True, "sdpa")])
def test_auto_takes_flash_attn_on_ampere_and_ada_only(monkeypatch, capability, installed, expected):
    if installed:
        install(monkeypatch, backends, "flash_attn")
    else:
        uninstall(monkeypatch, "flash_attn")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_backend_name("auto", "cuda") == expected


@pytest.mark.parametrize("name", ["flash_attn", "sage"])
def test_an_uninstalled_backend_names_the_package_to_install(monkeypatch, experts, tower, name):
    uninstall(monkeypatch, name)
    message = rf"attention '{name}' needs the {PACKAGES[name]} package, which is not installed.*'{INSTALL_COMMANDS[name]}'"
    with pytest.raises(ValueError, match=message):
        attention_backend(name, "cpu")
    with pytest.raises(ValueError, match=message):
        MoTDecoder(*experts, attention=name)
    with pytest.raises(ValueError, match=message):
        encode_vision(tower, torch.zeros(56, 56, 3, dtype=torch.uint8), 56, attention=name)


def test_a_package_without_the_kernel_functions_asks_for_an_upgrade(monkeypatch):
    fake = install(monkeypatch, backends, "flash_attn")
    monkeypatch.delattr(fake, "flash_attn_func")
    with pytest.raises(ValueError, match=r"needs flash_attn_func from flash_attn, which this version lacks; upgrade"):
        attention_backend("flash_attn", "cpu")


def test_an_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match=r"attention must be one of \('auto', 'sdpa', 'flash_attn', 'sage'\), got 'xformers'"):
        attention_backend("xformers", "cpu")


def test_calls_a_kernel_cannot_take_run_on_sdpa_with_one_note(monkeypatch, caplog, fresh_notes):
    fake = install(monkeypatch, backends, "flash_attn")
    flash = attention_backend("flash_attn", "cpu")
    q, k, v = torch.randn(3, 4, 16), torch.randn(5, 2, 16), torch.randn(5, 2, 16)
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        out = attention(q, k, v, True, flash)
        attention(q, k, v, False, flash)
    assert fake.calls == []
    torch.testing.assert_close(out, attention(q, k, v, True))
    assert [r.getMessage() for r in caplog.records] == [
        "attention 'flash_attn' runs fp16/bf16 CUDA tensors only; float32 inputs on cpu run on SDPA"]


@pytest.mark.parametrize("name,graphs", [("sdpa", True), ("flash_attn", True), ("sage", False)])
def test_cuda_graphs_are_used_only_with_a_capturable_backend(monkeypatch, experts, name, graphs):
    if name != "sdpa":
        install(monkeypatch, backends, name)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(mot, "resident_on", lambda device, *modules: True)
    decoder = MoTDecoder(*experts, attention=name)
    assert decoder.graphs_usable(with_generation=True) is graphs
    assert decoder.graphs_usable(with_generation=False) is graphs
