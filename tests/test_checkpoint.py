"""Opening the golden checkpoints, splitting them into parts without copies, and building the parts."""
from __future__ import annotations

import json
import shutil
import struct
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from lance_model.checkpoint import CheckpointError, LanceCheckpoint, ModelsFolder, VaeCheckpoint, VitCheckpoint
from lance_model.inventory import POS_TABLE_KEY
from lance_model.mot import GenerationExpert, UnderstandingExpert
from lance_model.parts import build_parts
from lance_model.safetensors_mmap import SafetensorsError, SafetensorsFile
from lance_model.vit import CHECKPOINT_PREFIX, VisionTower


@pytest.fixture(scope="module")
def ckpt_dir(golden_dir):
    return golden_dir / "ckpt"


@pytest.fixture(scope="module")
def tiny_config(ckpt_dir) -> dict:
    return json.loads((ckpt_dir / "tiny_config.json").read_text())


def _all_tensors(parts) -> dict[str, torch.Tensor]:
    tensors = {**parts.und.state_dict(), **parts.gen.state_dict()}
    if parts.vit is not None:
        tensors.update({CHECKPOINT_PREFIX + k: v for k, v in parts.vit.state_dict().items()})
    return tensors


@pytest.mark.parametrize("folder, variant", [("Lance_tiny", "image"), ("Lance_tiny_Video", "video")])
def test_variant_is_read_from_content(ckpt_dir, tiny_config, folder, variant):
    ckpt = LanceCheckpoint.open(ckpt_dir / folder)
    assert ckpt.variant == variant
    assert ckpt.stored_pos_table_shape == tuple(tiny_config["stored_latent_pos_embed"][folder])
    assert ckpt.llm_config.num_hidden_layers == tiny_config["llm_config.json"]["num_hidden_layers"]
    assert ckpt.vision_config.depth == tiny_config["vit_config.json"]["depth"]
    assert len(ckpt.tokenizer) == tiny_config["tokenizer"]["len_tokenizer"]


def test_video_parts_use_the_bundled_vision_tower(ckpt_dir):
    ckpt = LanceCheckpoint.open(ckpt_dir / "Lance_tiny_Video")
    parts = build_parts(ckpt, vit_dir=ckpt_dir / "Qwen2.5-VL-ViT")
    on_disk = load_file(ckpt_dir / "Lance_tiny_Video" / "model.safetensors")
    separate = load_file(ckpt_dir / "Qwen2.5-VL-ViT" / "vit.safetensors")
    vit = parts.vit.state_dict()
    assert len(vit) == len(separate) == len([k for k in on_disk if k.startswith(CHECKPOINT_PREFIX)])
    assert all(torch.equal(v, on_disk[CHECKPOINT_PREFIX + k]) for k, v in vit.items())
    assert not any(torch.equal(v, separate[k]) for k, v in vit.items() if v.ndim > 1)
    assert parts.vit_source == f"{ckpt_dir / 'Lance_tiny_Video' / 'model.safetensors'} (vit_model.*)"


def test_image_parts_take_the_vision_tower_from_the_vit_folder(ckpt_dir):
    parts = build_parts(LanceCheckpoint.open(ckpt_dir / "Lance_tiny"), vit_dir=ckpt_dir / "Qwen2.5-VL-ViT")
    separate = load_file(ckpt_dir / "Qwen2.5-VL-ViT" / "vit.safetensors")
    assert parts.vit_source == str(ckpt_dir / "Qwen2.5-VL-ViT" / "vit.safetensors")
    assert parts.vit.state_dict().keys() == separate.keys()
    assert all(torch.equal(v, separate[k]) for k, v in parts.vit.state_dict().items())


def test_image_parts_without_vit_folder_have_no_vision_tower(ckpt_dir):
    parts = build_parts(LanceCheckpoint.open(ckpt_dir / "Lance_tiny"))
    assert parts.vit is None and parts.vit_source is None


@pytest.mark.parametrize("folder", ["Lance_tiny", "Lance_tiny_Video"])
def test_parts_hold_every_stored_tensor_but_the_position_table(ckpt_dir, folder):
    parts = build_parts(LanceCheckpoint.open(ckpt_dir / folder))
    assert isinstance(parts.und, UnderstandingExpert) and isinstance(parts.gen, GenerationExpert)
    assert parts.vit is None or isinstance(parts.vit, VisionTower)
    on_disk = load_file(ckpt_dir / folder / "model.safetensors")
    loaded = _all_tensors(parts)
    assert loaded.keys() == on_disk.keys() - {POS_TABLE_KEY}
    assert all(torch.equal(v, on_disk[k]) and v.dtype == torch.bfloat16 for k, v in loaded.items())
    params = [p for part in (parts.und, parts.gen, parts.vit) if part is not None for p in part.parameters()]
    assert all(p.device.type == "cpu" and not p.requires_grad for p in params)


def test_parts_share_memory_with_the_mapped_file(ckpt_dir):
    ckpt = LanceCheckpoint.open(ckpt_dir / "Lance_tiny_Video")
    parts = build_parts(ckpt)
    for module, source in ((parts.und, ckpt.und), (parts.gen, ckpt.gen), (parts.vit, ckpt.vit)):
        for name, tensor in module.state_dict().items():
            assert tensor.data_ptr() == source[name].data_ptr(), name


def test_parts_are_cast_when_another_dtype_is_asked(ckpt_dir):
    ckpt = LanceCheckpoint.open(ckpt_dir / "Lance_tiny")
    parts = build_parts(ckpt, dtype=torch.float32)
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    weight = parts.und.state_dict()[key]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, ckpt.und[key].float())


def test_open_emits_no_warnings(ckpt_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_parts(LanceCheckpoint.open(ckpt_dir / "Lance_tiny_Video"))


def test_models_folder_is_found_by_content(ckpt_dir):
    found = ModelsFolder.find(ckpt_dir)
    assert [p.name for p in found.lance_folders] == ["Lance_tiny", "Lance_tiny_Video"]
    assert found.vit_folder == ckpt_dir / "Qwen2.5-VL-ViT"
    assert found.vae_file == ckpt_dir / "Wan2.2_VAE.pth"


def test_vit_folder_opens(ckpt_dir, tiny_config):
    vit = VitCheckpoint.open(ckpt_dir / "Qwen2.5-VL-ViT")
    assert vit.config.fullatt_block_indexes == tuple(tiny_config["vit_config.json"]["fullatt_block_indexes"])
    assert len(vit.state_dict) == len(load_file(ckpt_dir / "Qwen2.5-VL-ViT" / "vit.safetensors"))


def test_vae_widths_are_read_from_the_weights(ckpt_dir, tiny_config):
    vae = VaeCheckpoint.open(ckpt_dir / "Wan2.2_VAE.pth")
    assert (vae.dim, vae.dec_dim) == (tiny_config["vae"]["dim"], tiny_config["vae"]["dec_dim"])
    assert {t.dtype for t in vae.state_dict.values()} == {torch.float32}


def test_ema_weights_are_used_when_model_safetensors_is_absent(ckpt_dir, tmp_path):
    folder = shutil.copytree(ckpt_dir / "Lance_tiny", tmp_path / "Lance_tiny")
    (folder / "model.safetensors").rename(folder / "ema.safetensors")
    assert LanceCheckpoint.open(folder).weights_file == folder / "ema.safetensors"


def test_folder_with_only_slow_tokenizer_files_opens(ckpt_dir, tmp_path):
    folder = shutil.copytree(ckpt_dir / "Lance_tiny_Video", tmp_path / "Lance_tiny_Video")
    (folder / "tokenizer.json").unlink()
    assert LanceCheckpoint.open(folder).tokenizer.source == str(folder / "vocab.json")


def test_missing_vision_config_is_an_error_for_the_video_model(ckpt_dir, tmp_path):
    folder = shutil.copytree(ckpt_dir / "Lance_tiny_Video", tmp_path / "Lance_tiny_Video")
    config = json.loads((folder / "llm_config.json").read_text())
    del config["vision_config"]["depth"]
    (folder / "llm_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        LanceCheckpoint.open(folder)
    assert str(err.value) == (f"{folder / 'llm_config.json'} (vision_config): required field 'depth' is missing; "
                              "it describes the bundled vit_model.* tensors")


# --- the safetensors reader ------------------------------------------------------------------------

def test_reader_matches_the_safetensors_package(ckpt_dir):
    path = ckpt_dir / "Lance_tiny_Video" / "model.safetensors"
    mine = SafetensorsFile(path).tensors()
    reference = load_file(path)
    assert mine.keys() == reference.keys()
    assert all(torch.equal(mine[k], reference[k]) and mine[k].dtype == reference[k].dtype for k in reference)


def test_reader_handles_every_dtype_and_empty_tensors(tmp_path):
    tensors = {"f32": torch.randn(3, 2), "f16": torch.randn(5).half(), "i64": torch.arange(4),
               "u8": torch.arange(6, dtype=torch.uint8).view(2, 3), "b": torch.tensor([True, False]),
               "f8": torch.randn(4).to(torch.float8_e4m3fn), "empty": torch.zeros(0, 7)}
    save_file(tensors, tmp_path / "t.safetensors")
    read = SafetensorsFile(tmp_path / "t.safetensors").tensors()
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape
        assert torch.equal(read[name].view(torch.uint8), tensor.view(torch.uint8))


def test_reader_writes_never_reach_the_file(tmp_path):
    save_file({"w": torch.zeros(4)}, tmp_path / "t.safetensors")
    SafetensorsFile(tmp_path / "t.safetensors").tensor("w").fill_(7)
    assert torch.equal(load_file(tmp_path / "t.safetensors")["w"], torch.zeros(4))


def _header(path) -> tuple[int, dict]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n])


def _rewrite_header(path, header: dict) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(raw) == n
    path.write_bytes(data[:8] + raw + data[8 + n:])


@pytest.mark.parametrize("damage, message", [
    ("short", "the file has only 5 bytes, too short for a header"),
    ("header_length", "the header claims {n_big} bytes but the file has only {size}"),
    ("json", "the header is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ("span", "tensor 'w' spans 16 bytes but shape [3] of F32 needs 12"),
    ("dtype", "tensor 'w' has unsupported dtype 'Q7'"),
])
def test_reader_rejects_damaged_headers(tmp_path, damage, message):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.zeros(4)}, path)
    n, header = _header(path)
    size = path.stat().st_size
    if damage == "short":
        path.write_bytes(path.read_bytes()[:5])
    elif damage == "header_length":
        path.write_bytes(struct.pack("<Q", size) + path.read_bytes()[8:])
    elif damage == "json":
        data = path.read_bytes()
        path.write_bytes(data[:8] + b"#" * n + data[8 + n:])
    elif damage == "span":
        header["w"]["shape"] = [3]
        _rewrite_header(path, header)
    else:
        header["w"]["dtype"] = "Q7"
        _rewrite_header(path, header)
    with pytest.raises(SafetensorsError) as err:
        SafetensorsFile(path)
    detail = message.format(n_big=size, size=size)
    assert str(err.value) == f"{path}: truncated or corrupt safetensors file: {detail}; download it again"
