"""``python -m lance_model inspect``: a summary for valid files, one exact message per kind of damage."""
from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from lance_model.cli import main
from lance_model.tiny import TINY_VAE_DEC_DIM, TINY_VAE_DIM

GEN_GLUE = ("time_embedder.", "vae2llm.", "llm2vae.")
MISSING = "missing file; the model download is incomplete, fetch this file again"
TINY_VAE_LINE = f"Wan 2.2 VAE (dim={TINY_VAE_DIM}, dec_dim={TINY_VAE_DEC_DIM})"


def _inspect(capsys, *argv) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy(src, dst):
    return shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_tensors(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture
def image_copy(tiny_checkpoint, tmp_path):
    return _copy(tiny_checkpoint.image, tmp_path / "Lance_3B")


def test_valid_models_folder_is_summarised(tiny_checkpoint, capsys):
    code, out, err = _inspect(capsys, tiny_checkpoint.root)
    assert (code, err) == (0, "")
    tensors = load_file(tiny_checkpoint.image / "model.safetensors")
    gen = sum(t.numel() for k, t in tensors.items() if "_moe_gen" in k or k.startswith(GEN_GLUE))
    und = sum(t.numel() for k, t in tensors.items() if "_moe_gen" not in k and not k.startswith(GEN_GLUE)
              and not k.startswith("latent_pos_embed."))
    lines = out.splitlines()
    start = lines.index(f"{tiny_checkpoint.image}: Lance image checkpoint (model.safetensors)")
    assert lines[start + 1] == f"  und        {und:>14,} parameters  bfloat16"
    assert lines[start + 2] == f"  gen        {gen:>14,} parameters  bfloat16"
    assert f"{tiny_checkpoint.video}: Lance video checkpoint (model.safetensors)" in lines
    assert f"{tiny_checkpoint.vae}: {TINY_VAE_LINE}" in lines
    assert sum(line.startswith("  vit ") for line in lines) == 3  # image: none bundled; video; ViT folder


def test_golden_checkpoints_pass(golden_dir, capsys):
    code, out, err = _inspect(capsys, golden_dir / "ckpt")
    assert (code, err) == (0, "")
    assert f"{golden_dir / 'ckpt' / 'Lance_tiny_Video'}: Lance video checkpoint (model.safetensors)" in out


def _assert_error(capsys, message, *argv):
    code, _, err = _inspect(capsys, *argv)
    assert code == 1
    assert err == f"error: {message}\n"


@pytest.mark.parametrize("removed", ["model.safetensors", "llm_config.json"])
def test_missing_file(image_copy, capsys, removed):
    (image_copy / removed).unlink()
    _assert_error(capsys, f"{image_copy / removed}: {MISSING}", image_copy)


def test_missing_tokenizer(image_copy, capsys):
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (image_copy / name).unlink()
    _assert_error(capsys, f"{image_copy}: no tokenizer found; expected tokenizer.json (or vocab.json + merges.txt) "
                          "from the Lance model folder", image_copy)


def test_truncated_safetensors(image_copy, capsys):
    weights = image_copy / "model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    weights.write_bytes(data[:-1])
    _assert_error(capsys, f"{weights}: truncated or corrupt safetensors file: tensor '{last}' ends at byte "
                          f"{len(data)} but the file has only {len(data) - 1} bytes; download it again", image_copy)


def test_corrupt_safetensors_header(image_copy, capsys):
    weights = image_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe\x00\x01"
    weights.write_bytes(bytes(data))
    code, _, err = _inspect(capsys, image_copy)
    assert code == 1
    assert err.startswith(f"error: {weights}: truncated or corrupt safetensors file: the header is not valid JSON (")
    assert err.endswith("); download it again\n")


def test_wrong_variant_requested(tiny_checkpoint, capsys):
    weights = tiny_checkpoint.image / "model.safetensors"
    _assert_error(capsys, f"{weights}: holds the image model (no vit_model.* tensors) but the video model was "
                          "requested", tiny_checkpoint.image, "--expect-variant", "video")
    n_vit = sum(k.startswith("vit_model.") for k in load_file(tiny_checkpoint.video / "model.safetensors"))
    _assert_error(capsys, f"{tiny_checkpoint.video / 'model.safetensors'}: holds the video model ({n_vit} "
                          "vit_model.* tensors) but the image model was requested",
                  tiny_checkpoint.video, "--expect-variant", "image")


def test_image_content_in_a_video_named_folder(tiny_checkpoint, tmp_path, capsys):
    folder = _copy(tiny_checkpoint.image, tmp_path / "Lance_3B_Video")
    _assert_error(capsys, f"{folder / 'model.safetensors'}: holds the image model (no vit_model.* tensors) but "
                          "its folder name 'Lance_3B_Video' promises the video model", folder)


def test_missing_key(image_copy, capsys):
    key = "language_model.model.norm_moe_gen.weight"
    hidden = json.loads((image_copy / "llm_config.json").read_text())["hidden_size"]
    _edit_tensors(image_copy / "model.safetensors", lambda t: t.pop(key))
    _assert_error(capsys, f"{image_copy / 'model.safetensors'}: missing tensor '{key}' (expected shape "
                          f"[{hidden}])", image_copy)


def test_extra_key(image_copy, capsys):
    _edit_tensors(image_copy / "model.safetensors", lambda t: t.update({"connector.fc1.weight": torch.zeros(4, 4)}))
    _assert_error(capsys, f"{image_copy / 'model.safetensors'}: unexpected tensor 'connector.fc1.weight' [4, 4]; "
                          f"it is not part of the architecture that {image_copy / 'llm_config.json'} describes",
                  image_copy)


def test_tensor_shape_mismatch(image_copy, capsys):
    key = "language_model.model.layers.1.mlp_moe_gen.up_proj.weight"
    weights = image_copy / "model.safetensors"
    rows, cols = load_file(weights)[key].shape
    _edit_tensors(weights, lambda t: t.update({key: t[key][:-1].clone()}))
    _assert_error(capsys, f"{weights}: tensor '{key}' has shape [{rows - 1}, {cols}] but "
                          f"{image_copy / 'llm_config.json'} implies [{rows}, {cols}]", image_copy)


def test_config_disagrees_with_weights(image_copy, capsys):
    config = json.loads((image_copy / "llm_config.json").read_text())
    _edit_json(image_copy / "llm_config.json", intermediate_size=config["intermediate_size"] + 8)
    key = "language_model.model.layers.0.mlp.gate_proj.weight"  # first MLP weight in module order
    _assert_error(capsys, f"{image_copy / 'model.safetensors'}: tensor '{key}' has shape "
                          f"[{config['intermediate_size']}, {config['hidden_size']}] but "
                          f"{image_copy / 'llm_config.json'} implies "
                          f"[{config['intermediate_size'] + 8}, {config['hidden_size']}]", image_copy)


def test_tokenizer_special_ids_disagree_with_config(image_copy, capsys):
    config = json.loads((image_copy / "llm_config.json").read_text())
    _edit_json(image_copy / "llm_config.json", video_token_id=config["video_token_id"] + 1)
    _assert_error(capsys, f"{image_copy / 'tokenizer.json'}: token '<|video_pad|>' has id {config['video_token_id']} "
                          f"but {image_copy / 'llm_config.json'} sets video_token_id = {config['video_token_id'] + 1}",
                  image_copy)


def test_vit_folder_shape_mismatch(tiny_checkpoint, tmp_path, capsys):
    folder = _copy(tiny_checkpoint.vit, tmp_path / "Qwen2.5-VL-ViT")
    config = json.loads((folder / "config.json").read_text())
    _edit_json(folder / "config.json", intermediate_size=config["intermediate_size"] + 4)
    key = "blocks.0.mlp.gate_proj.weight"
    _assert_error(capsys, f"{folder / 'vit.safetensors'}: tensor '{key}' has shape "
                          f"[{config['intermediate_size']}, {config['hidden_size']}] but {folder / 'config.json'} "
                          f"implies [{config['intermediate_size'] + 4}, {config['hidden_size']}]", folder)


def test_truncated_vae(tiny_checkpoint, tmp_path, capsys):
    vae = tmp_path / "Wan2.2_VAE.pth"
    vae.write_bytes(tiny_checkpoint.vae.read_bytes()[:4096])
    code, _, err = _inspect(capsys, vae)
    assert code == 1
    assert err.startswith(f"error: {vae}: cannot be read as a torch.save state dict (")
    assert err.endswith("; download it again\n")


def test_one_bad_part_fails_a_models_folder_the_others_are_reported(tiny_checkpoint, tmp_path, capsys):
    for part in (tiny_checkpoint.image, tiny_checkpoint.video, tiny_checkpoint.vit, tiny_checkpoint.vae):
        _copy(part, tmp_path / part.name)
    (tmp_path / "Lance_3B_Video" / "llm_config.json").unlink()
    code, out, err = _inspect(capsys, tmp_path)
    assert code == 1
    assert err == f"error: {tmp_path / 'Lance_3B_Video' / 'llm_config.json'}: {MISSING}\n"
    assert f"{tmp_path / 'Lance_3B'}: Lance image checkpoint (model.safetensors)" in out.splitlines()
    assert f"{tmp_path / 'Wan2.2_VAE.pth'}: {TINY_VAE_LINE}" in out.splitlines()


def test_path_without_model_files(tmp_path, capsys):
    _assert_error(capsys, f"{tmp_path}: no Lance model files found; expected a Lance folder (llm_config.json, "
                          "model.safetensors, tokenizer.json) or a models folder holding Lance_3B/, "
                          "Lance_3B_Video/, Qwen2.5-VL-ViT/ and Wan2.2_VAE.pth", tmp_path)
    _assert_error(capsys, f"{tmp_path / 'nothing'}: does not exist", tmp_path / "nothing")
