"""Lance Checkpoint Loader: the `lance` model folder, lazy patcher construction, fp8 storage through
ComfyUI's ops, the attention and vision-tower options, and downloading missing official folders."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import fake_attention_kernels
import pytest
import torch
from pack_import import (load_model, memory_requests, native_vae, pack_module, run_node, tiny_folders,  # noqa: F401
                         use_lance_folders)

from lance_model.checkpoint import LanceCheckpoint, VitCheckpoint
from lance_model.comfy_lookup import import_comfy_module

PROMPT = "A red fox jumps over the lazy dog in the snow."


def _linked_root(tmp_path: Path, **links: Path) -> Path:
    root = tmp_path / "lance"
    root.mkdir()
    for name, target in links.items():
        (root / name).symlink_to(target, target_is_directory=True)
    return root


def test_models_lance_is_added_after_folders_from_extra_model_paths(monkeypatch, tmp_path):
    model_folders = pack_module("nodes.model_folders")
    folder_paths = import_comfy_module("folder_paths")
    default = str(Path(folder_paths.models_dir) / "lance")

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", {"lance": ([str(tmp_path)], set())})
    model_folders.register_model_folder()
    assert folder_paths.get_folder_paths("lance") == [str(tmp_path), default]

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", {})
    model_folders.register_model_folder()
    assert folder_paths.get_folder_paths("lance") == [default]


def test_checkpoint_options_are_the_official_names_then_found_folders(monkeypatch, tmp_path, tiny_checkpoint):
    root = _linked_root(tmp_path, MyLanceCopy=tiny_checkpoint.video, OtherViT=tiny_checkpoint.vit)
    (root / "notes").mkdir()
    use_lance_folders(monkeypatch, root, tiny_checkpoint.root)
    model_folders = pack_module("nodes.model_folders")
    assert model_folders.checkpoint_names() == ["Lance_3B", "Lance_3B_Video", "MyLanceCopy"]
    assert model_folders.vision_tower_names() == ["Qwen2.5-VL-ViT", "OtherViT"]
    loader = pack_module("nodes.loader").LanceCheckpointLoader.GET_SCHEMA()
    options = {i.id: getattr(i, "options", None) for i in loader.inputs}
    assert options["checkpoint"] == ["Lance_3B", "Lance_3B_Video", "MyLanceCopy"]
    assert options["vision_tower"] == ["auto", "Qwen2.5-VL-ViT", "OtherViT"]


def test_loading_is_lazy_one_patcher_per_part_on_the_offload_device(tiny_folders, memory_requests):
    model = load_model("Lance_3B")
    assert memory_requests.calls == []
    assert sorted(model.parts) == ["gen", "und", "vit"]
    assert model.patcher is model.parts["und"] and model.get_models() == list(model.parts.values())
    manager = import_comfy_module("comfy.model_management")
    ckpt = LanceCheckpoint.open(tiny_folders.image)
    for name, patcher in model.parts.items():
        assert patcher.offload_device == manager.unet_offload_device()
        assert patcher.load_device == manager.get_torch_device()
        weights = patcher.model.state_dict()
        assert {t.device for t in weights.values()} == {manager.unet_offload_device()}
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert model.parts["und"].model.state_dict().keys() == ckpt.und.keys()
    assert model.parts["gen"].model.state_dict().keys() == ckpt.gen.keys()
    assert model.variant == "image" and model.vit_source.endswith("Qwen2.5-VL-ViT/vit.safetensors")


def test_video_checkpoint_uses_its_bundled_tower_unless_a_folder_is_chosen(tiny_folders):
    bundled = load_model("Lance_3B_Video")
    assert bundled.variant == "video" and "vit_model" in bundled.vit_source
    chosen = load_model("Lance_3B_Video", vision_tower="Qwen2.5-VL-ViT")
    assert chosen.vit_source.endswith("Qwen2.5-VL-ViT/vit.safetensors")
    separate = VitCheckpoint.open(tiny_folders.vit).state_dict
    name = "blocks.0.attn.qkv.weight"
    assert torch.equal(chosen.vision_tower.state_dict()[name], separate[name])
    assert not torch.equal(bundled.vision_tower.state_dict()[name], separate[name])


E4M3 = torch.float8_e4m3fn
E4M3_HALF_ULP = 2.0 ** -4   # relative rounding of a normal e4m3 value (3 mantissa bits)
E4M3_SUBNORMAL = 2.0 ** -9  # spacing of e4m3's subnormals, in units of the scale


def _expert_linears(model):
    for part in ("und", "gen"):
        for name, layer in model.parts[part].model.named_modules():
            if isinstance(layer, torch.nn.Linear):
                yield f"{part}.{name}", layer


def _text_keys(model):
    return run_node("LanceTextEncode", model=model, prompt=PROMPT, task="text_to_image").args[0].cond_cache.keys


def _relative(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.float() - exact.float()).norm() / exact.float().norm()).item()


def test_fp8_stores_each_matmul_weight_with_its_scale_in_comfy_scaled_fp8_layers(tiny_folders):
    model, exact = load_model("Lance_3B", weight_dtype="fp8_e4m3fn"), load_model("Lance_3B")
    exact_weights = dict(_expert_linears(exact))
    manual_cast = import_comfy_module("comfy.ops").manual_cast
    for name, layer in _expert_linears(model):
        bf16 = exact_weights[name].weight.float()
        assert isinstance(layer, manual_cast.Linear) and type(layer).__mro__[1].__module__ == "comfy.ops"
        assert layer.weight.dtype == E4M3 and layer.scale_weight.dtype == torch.float32
        assert layer.scale_weight.shape == () and layer.scale_weight == bf16.abs().amax() / 448, name
        dequantized = layer.weight.float() * layer.scale_weight
        # round-to-nearest: half a step, relative for normal values, absolute (in scale units) for subnormals
        bound = torch.maximum(E4M3_HALF_ULP * bf16.abs(), torch.full_like(bf16, E4M3_SUBNORMAL / 2) * layer.scale_weight)
        assert ((dequantized - bf16).abs() <= bound * 1.0001).all(), name
    for expert in (model.parts["und"].model, model.parts["gen"].model):
        layer = expert.layers[0]
        assert layer.q_proj.bias.dtype == torch.bfloat16 and layer.input_norm.weight.dtype == torch.bfloat16
    assert model.parts["und"].model.embed_tokens.weight.dtype == torch.bfloat16
    assert {t.dtype for t in model.parts["vit"].model.state_dict().values()} == {torch.bfloat16}


def test_fp8_text_keys_stay_close_to_bf16_and_fast_matches_it_on_the_cpu(tiny_folders):
    exact = _text_keys(load_model("Lance_3B"))
    fp8 = _text_keys(load_model("Lance_3B", weight_dtype="fp8_e4m3fn"))
    # Measured on the tiny checkpoint: 0.027 after the first layer, 0.061 after the second (each weight
    # carries up to 6% rounding, rms ~2.5%, and the errors compound through the layers); 0.1 leaves
    # margin for other random tiny checkpoints while a lost scale (errors near 100%) fails clearly.
    assert all(0 < _relative(f, e) < 0.1 for f, e in zip(fp8, exact))
    # No fp8 units on the CPU: the fast option computes exactly like fp8_e4m3fn.
    fast = _text_keys(load_model("Lance_3B", weight_dtype="fp8_e4m3fn_fast"))
    assert all(torch.equal(a, b) for a, b in zip(fast, fp8))


def test_the_per_tensor_scale_keeps_small_weights_that_a_plain_fp8_cast_flushes(tiny_folders):
    fp8_storage = pack_module("nodes.fp8_storage")
    for name, layer in _expert_linears(load_model("Lance_3B")):
        small = layer.weight.float() / 50   # ~4e-4: like output projections of a deep model
        q, scale = fp8_storage.quantize(small, E4M3)
        scaled_error, plain_error = _relative(q.float() * scale, small), _relative(small.to(E4M3), small)
        assert scaled_error < 0.04 and plain_error > 0.2, (name, scaled_error, plain_error)


def test_without_comfy_scaled_fp8_layers_fp8_is_a_plain_cast_with_one_warning(monkeypatch, tiny_folders, caplog):
    monkeypatch.delattr(import_comfy_module("comfy.ops"), "scaled_fp8_ops")
    pack_module("nodes.fp8_storage")._warn_unscaled.cache_clear()
    with caplog.at_level("WARNING"):
        model = load_model("Lance_3B", weight_dtype="fp8_e4m3fn")
        load_model("Lance_3B", weight_dtype="fp8_e5m2")
    warnings = [r.getMessage() for r in caplog.records if "no scaled fp8 layers" in r.getMessage()]
    assert len(warnings) == 1 and "weights below 2^-9 become 0" in warnings[0]
    exact_weights = dict(_expert_linears(load_model("Lance_3B")))
    for name, layer in _expert_linears(model):
        assert not hasattr(layer, "scale_weight")
        assert torch.equal(layer.weight, exact_weights[name].weight.to(E4M3))


def test_attention_sdpa_and_auto_on_the_cpu_give_decoders_that_use_sdpa(monkeypatch, tiny_folders):
    fake_attention_kernels.install(monkeypatch, pack_module("lance_model.attention_backends"), "flash_attn")
    for choice in ("sdpa", "auto"):   # auto: SDPA on the CPU even with flash-attn installed
        model = load_model("Lance_3B", attention=choice)
        assert model.attention == "sdpa"
        assert model.decoder(with_generation=True).attention.name == "sdpa"


@pytest.mark.parametrize("choice", ["sdpa", "flash_attn"])
def test_the_attention_choice_runs_the_vision_tower_and_the_llm_of_the_nodes(monkeypatch, tiny_folders, choice):
    fake = fake_attention_kernels.install(monkeypatch, pack_module("lance_model.attention_backends"), "flash_attn")
    model = load_model("Lance_3B", attention=choice)
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(2))
    run_node("LanceEditEncode", model=model, vae=native_vae(tiny_folders.vae), image=image,
             instruction="Make it pink.", kind="image", fps=12.0, resolution="image_256res")
    edit_calls = sorted({call[0] for call in fake.calls})
    fake.calls.clear()
    run_node("LanceCaptioner", model=model, image=image, question="What is this?", kind="image", fps=12.0,
             resolution="image_256res", instruction="", max_new_tokens=4, sampling="off", temperature=0.7,
             top_p=0.9, seed=0)
    expected = ["func", "varlen"] if choice == "flash_attn" else []   # LLM blocks, ViT segments
    assert edit_calls == expected and sorted({call[0] for call in fake.calls}) == expected


def test_an_attention_kernel_that_is_not_installed_is_refused_with_the_install_command(monkeypatch, tiny_folders):
    fake_attention_kernels.uninstall(monkeypatch, "sage")
    with pytest.raises(ValueError, match=r"'sage' needs the sageattention package.*pip install sageattention"):
        load_model("Lance_3B", attention="sage")


def test_a_missing_checkpoint_names_the_searched_folders_and_the_fix(monkeypatch, tmp_path):
    use_lance_folders(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"'Lance_3B_Video' was not found .*{tmp_path}.*download_missing"):
        load_model("Lance_3B_Video")


def test_an_image_checkpoint_without_a_vision_tower_loads_but_captioning_says_how_to_get_one(
        monkeypatch, tmp_path, tiny_checkpoint):
    use_lance_folders(monkeypatch, _linked_root(tmp_path, Lance_3B=tiny_checkpoint.image))
    model = load_model("Lance_3B")
    assert "vit" not in model.parts
    image = torch.rand(1, 32, 32, 3)
    with pytest.raises(ValueError, match=r"needs the vision tower.*Qwen2\.5-VL-ViT/.*download_missing"):
        run_node("LanceCaptioner", model=model, image=image, question="What is this?", kind="image", fps=12.0,
                 resolution="image_256res", instruction="", max_new_tokens=4, sampling="off", temperature=0.7,
                 top_p=0.9, seed=0)


class FakeHub:
    """Stands in for huggingface_hub: serves the tiny model set as if it were the official repository."""

    def __init__(self, source: Path):
        self.source = source
        self.downloaded: list[str] = []

    def list_repo_tree(self, repo, path_in_repo, recursive):
        assert repo == "bytedance-research/Lance" and recursive
        return [SimpleNamespace(path=str(p.relative_to(self.source)), size=p.stat().st_size)
                for p in sorted((self.source / path_in_repo).rglob("*")) if p.is_file()]

    def hf_hub_download(self, repo, filename, local_dir):
        self.downloaded.append(filename)
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.source / filename, target)
        return str(target)


def test_download_missing_fetches_the_checkpoint_and_the_vision_tower(monkeypatch, tmp_path, tiny_checkpoint):
    import huggingface_hub

    hub = FakeHub(tiny_checkpoint.root)
    monkeypatch.setattr(huggingface_hub, "list_repo_tree", hub.list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    ticks = []
    comfy_runtime = pack_module("nodes.comfy_runtime")
    real_bar = comfy_runtime.progress_bar

    def recording_bar(total):
        bar = real_bar(total)
        bar.hook = lambda value, total, preview, node_id=None: ticks.append((value, total))
        return bar

    monkeypatch.setattr(comfy_runtime, "progress_bar", recording_bar)
    root = tmp_path / "models_lance"
    root.mkdir()
    use_lance_folders(monkeypatch, root)

    model = load_model("Lance_3B", download_missing=True)
    assert model.variant == "image" and "vit" in model.parts
    assert {name.split("/")[0] for name in hub.downloaded} == {"Lance_3B", "Qwen2.5-VL-ViT"}
    assert (root / "Lance_3B" / "model.safetensors").is_file()
    assert (root / "Qwen2.5-VL-ViT" / "vit.safetensors").is_file()
    files_per_folder = [n for n in hub.downloaded if n.startswith("Lance_3B/")]
    assert ticks[:len(files_per_folder)] == [(i, len(files_per_folder)) for i in range(1, len(files_per_folder) + 1)]


def test_an_offline_download_says_what_failed_and_how_to_fetch_by_hand(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(repo, path_in_repo, recursive):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "list_repo_tree", offline)
    use_lance_folders(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match=r"could not list the files of bytedance-research/Lance \(ConnectionError: "
                                           r"Failed to resolve.*huggingface-cli download bytedance-research/Lance "
                                           r"--include 'Lance_3B/\*'"):
        load_model("Lance_3B", download_missing=True)
