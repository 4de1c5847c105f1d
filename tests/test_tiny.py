"""The tiny-checkpoint generator writes the official layout, key names and dtypes, deterministically."""
from __future__ import annotations

import json
import re

import pytest
import torch
from fixtures_tiny import TINY_SEED
from safetensors.torch import load_file

from lance_model import tiny
from lance_model.checkpoint import LanceCheckpoint, VaeCheckpoint
from lance_model.cli import main
from lance_model.parts import build_parts
from lance_model.safetensors_mmap import SafetensorsFile
from lance_model.tokenizer import LanceTokenizer

LANCE_FILES = {"model.safetensors", "llm_config.json", "tokenizer.json", "vocab.json", "merges.txt",
               "tokenizer_config.json"}
SAMPLE_TEXTS = ("A red fox jumps over the lazy dog.", "Ein Hund läuft über die Straße.", "一只小猫在窗台上。",
                "<|im_start|>user\nThe user’s photo<|im_end|>\n<tool_call>")


def _generic(name: str) -> str:
    """Key name with layer / block numbers removed (tiny models have fewer of them)."""
    return re.sub(r"(^|\.)(layers|blocks)\.\d+\.", r"\1\2.N.", name)


def _spec_names(spec_dir, variant) -> set[str]:
    rows = (spec_dir / f"lance-keys-{variant}.tsv").read_text().splitlines()[1:]
    return {_generic(row.split("\t")[0]) for row in rows}


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_official(tiny_checkpoint):
    assert {p.name for p in tiny_checkpoint.root.iterdir()} == {"Lance_3B", "Lance_3B_Video", "Qwen2.5-VL-ViT",
                                                               "Wan2.2_VAE.pth"}
    assert {p.name for p in tiny_checkpoint.image.iterdir()} == LANCE_FILES
    assert {p.name for p in tiny_checkpoint.video.iterdir()} == LANCE_FILES
    assert {p.name for p in tiny_checkpoint.vit.iterdir()} == {"config.json", "vit.safetensors"}


@pytest.mark.parametrize("part, variant", [("image", "image"), ("video", "video"), ("vit", "vit")])
def test_key_names_and_dtypes_are_official(tiny_checkpoint, spec_dir, part, variant):
    folder = getattr(tiny_checkpoint, part)
    weights = folder / ("vit.safetensors" if variant == "vit" else "model.safetensors")
    entries = SafetensorsFile(weights).entries
    assert {_generic(k) for k in entries} == _spec_names(spec_dir, variant)
    assert {e.dtype for e in entries.values()} == {torch.bfloat16}


def test_vae_keys_and_dtype_are_official(tiny_checkpoint, spec_dir):
    vae = VaeCheckpoint.open(tiny_checkpoint.vae)
    assert set(vae.state_dict) == _spec_names(spec_dir, "vae")
    assert {t.dtype for t in vae.state_dict.values()} == {torch.float32}
    assert (vae.dim, vae.dec_dim) == (tiny.TINY_VAE_DIM, tiny.TINY_VAE_DEC_DIM)


def test_both_models_load_into_parts(tiny_checkpoint):
    image = build_parts(LanceCheckpoint.open(tiny_checkpoint.image), vit_dir=tiny_checkpoint.vit)
    video_ckpt = LanceCheckpoint.open(tiny_checkpoint.video)
    video = build_parts(video_ckpt, vit_dir=tiny_checkpoint.vit)
    assert (video_ckpt.variant, video.vit_source) == ("video", f"{tiny_checkpoint.video / 'model.safetensors'} "
                                                               "(vit_model.*)")
    assert image.vit_source == str(tiny_checkpoint.vit / "vit.safetensors")
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(image.vit.state_dict()[key], video.vit.state_dict()[key])
    assert not torch.equal(image.und.state_dict()["language_model.model.embed_tokens.weight"],
                           video.und.state_dict()["language_model.model.embed_tokens.weight"])


def test_tokenizer_appends_qwen_added_tokens_in_order(tiny_checkpoint, golden_dir):
    tok = LanceTokenizer.from_dir(tiny_checkpoint.image)
    qwen_order = sorted((i, name) for name, i in json.loads((golden_dir / "ckpt" / "tiny_config.json").read_text())
                        ["tokenizer"]["added_token_ids"].items())
    base = len(json.loads((tiny_checkpoint.image / "vocab.json").read_text()))
    assert [tok.token_id(name) for _, name in qwen_order] == list(range(base, base + len(qwen_order)))
    assert len(tok) == base + len(qwen_order)
    config = json.loads((tiny_checkpoint.image / "llm_config.json").read_text())
    assert config["vocab_size"] > len(tok)
    assert (config["bos_token_id"], config["eos_token_id"]) == (tok.token_id("<|endoftext|>"),
                                                                tok.token_id("<|im_end|>"))


def test_slow_tokenizer_files_agree_with_tokenizer_json(tiny_checkpoint, tmp_path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_checkpoint.image / name).read_bytes())
    fast, slow = LanceTokenizer.from_dir(tiny_checkpoint.image), LanceTokenizer.from_dir(tmp_path)
    for text in SAMPLE_TEXTS:
        assert slow.encode(text) == fast.encode(text)
        assert fast.decode(fast.encode(text)) == text
    ids = fast.encode(SAMPLE_TEXTS[-1])
    assert fast.decode(ids, skip_special_tokens=True) == slow.decode(ids, skip_special_tokens=True) == \
        "user\nThe user’s photo\n<tool_call>"


def test_initialisation_follows_the_recipe(tiny_checkpoint):
    tensors = load_file(tiny_checkpoint.image / "model.safetensors")
    vocab = len(LanceTokenizer.from_dir(tiny_checkpoint.image))
    lm_head = tensors["language_model.lm_head.weight"].float()
    assert 3 < lm_head[vocab:].std() / lm_head[:vocab].std() < 5  # unmasked padding rows would win the argmax
    norm = tensors["language_model.model.layers.0.input_layernorm.weight"].float()
    twin = tensors["language_model.model.layers.0.input_layernorm_moe_gen.weight"].float()
    assert abs(norm.mean() - 1) < 0.05 and 0.05 < norm.std() < 0.15 and not torch.equal(norm, twin)
    vae = torch.load(tiny_checkpoint.vae, weights_only=True)
    z = vae["conv1.bias"].shape[0] // 2
    assert abs(vae["conv1.bias"][z:].mean() + 4) < 0.1 and vae["conv1.bias"][:z].abs().max() < 0.2


def test_seed_determines_the_files(tiny_checkpoint, tmp_path, capsys):
    assert main(["tiny-checkpoint", str(tmp_path / "same"), "--seed", str(TINY_SEED), "--vae-widths", "tiny"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "same" / name) for name in
                                                    ("Lance_3B", "Lance_3B_Video", "Qwen2.5-VL-ViT", "Wan2.2_VAE.pth")]
    reference = _files(tiny_checkpoint.root)
    assert _files(tmp_path / "same") == reference
    tiny.write_tiny_checkpoint(tmp_path / "other", seed=TINY_SEED + 1, vae_widths="tiny")
    other = _files(tmp_path / "other")
    weights = {n for n in reference if n.endswith((".safetensors", ".pth"))}
    assert weights == {"Lance_3B/model.safetensors", "Lance_3B_Video/model.safetensors",
                       "Qwen2.5-VL-ViT/vit.safetensors", "Wan2.2_VAE.pth"}
    assert all(other[n] != reference[n] for n in weights)


def test_interrupted_run_leaves_only_complete_files(tiny_checkpoint, tmp_path, monkeypatch):
    calls = []
    real_replace = tiny.os.replace

    def replace_then_interrupt(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(tiny.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        tiny.write_tiny_checkpoint(tmp_path, seed=TINY_SEED, vae_widths="tiny")
    written = _files(tmp_path)
    reference = _files(tiny_checkpoint.root)
    assert len(written) == 4
    assert all(data == reference[name] for name, data in written.items())


def test_official_vae_widths_load_in_comfyui_vae(tmp_path):
    """The default model set must be loadable by ComfyUI's own VAE loader, which always builds the
    released Wan 2.2 widths."""
    from lance_model.comfy_lookup import import_comfy_module

    comfy_sd, comfy_utils = import_comfy_module("comfy.sd"), import_comfy_module("comfy.utils")
    models = tiny.write_tiny_checkpoint(tmp_path, seed=TINY_SEED)
    vae = comfy_sd.VAE(sd=comfy_utils.load_torch_file(str(models.vae)))
    assert vae.latent_channels == 48
    assert vae.first_stage_model.encoder.conv1.weight.shape == (160, 12, 3, 3, 3)
