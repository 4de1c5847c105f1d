"""Safe loading: weights come only from safetensors (the official VAE's .pth only through
``torch.load(weights_only=True)``), nothing touches the network unless download_missing asks for it,
names cannot reach outside the model folders, and a download never leaves a partial file or folder
under the name the loader looks for."""
from __future__ import annotations

import os
import pickle
import shutil
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pack_import import load_model, pack_module, use_lance_folders

from lance_model.checkpoint import CheckpointError, LanceCheckpoint, VaeCheckpoint
from lance_model.comfy_lookup import import_comfy_module

HF_REPO = "bytedance-research/Lance"


class RunsShellCommand:
    """Unpickling this runs ``touch <marker>``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_pickle(path: Path, marker: Path) -> Path:
    torch.save({"conv2.weight": torch.zeros(48, 1), "payload": RunsShellCommand(marker)}, path)
    return path


def test_a_vae_pth_with_a_pickled_payload_is_refused_and_the_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    vae_file = malicious_pickle(tmp_path / "Wan2.2_VAE.pth", marker)
    with pytest.raises(CheckpointError) as refused:
        VaeCheckpoint.open(vae_file)
    message = str(refused.value)
    assert message.startswith(f"{vae_file}: cannot be read as a torch.save state dict (Weights only load failed.")
    assert "posix.system" in message and message.endswith("; download it again")
    # ComfyUI's Load VAE reads the file through load_torch_file, which must refuse it as well.
    load_torch_file = import_comfy_module("comfy.utils").load_torch_file
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_torch_file(str(vae_file))
    assert not marker.exists()


def test_a_pickle_posing_as_model_safetensors_is_never_unpickled(tmp_path, tiny_checkpoint):
    marker = tmp_path / "payload_ran"
    folder = tmp_path / "Lance_3B"
    shutil.copytree(tiny_checkpoint.image, folder)
    malicious_pickle(folder / "model.safetensors", marker)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated or corrupt safetensors file: .*; "
                                              r"download it again$"):
        LanceCheckpoint.open(folder)
    assert not marker.exists()


class NetworkGuard:
    """Records (and refuses) every attempt to open a connection or a URL."""

    def __init__(self, monkeypatch):
        self.attempts: list[str] = []
        monkeypatch.setattr(socket.socket, "connect", self._refuse("socket.connect"))
        monkeypatch.setattr(socket, "create_connection", self._refuse("socket.create_connection"))
        monkeypatch.setattr(urllib.request, "urlopen", self._refuse("urllib.request.urlopen"))
        import huggingface_hub
        for name in ("list_repo_tree", "list_repo_files", "hf_hub_download", "snapshot_download"):
            monkeypatch.setattr(huggingface_hub, name, self._refuse(f"huggingface_hub.{name}"))

    def _refuse(self, what: str):
        def refused(*args, **kwargs):
            self.attempts.append(what)
            raise OSError(f"network access in a test: {what}")
        return refused


def test_with_download_missing_off_a_missing_checkpoint_errors_without_any_network_call(monkeypatch, tmp_path):
    guard = NetworkGuard(monkeypatch)
    use_lance_folders(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        load_model("Lance_3B_Video", download_missing=False)
    assert str(missing.value) == (f"'Lance_3B_Video' was not found in the lance model folders ({tmp_path}); put the "
                                  f"folder there, or enable download_missing to fetch the official Lance_3B, "
                                  f"Lance_3B_Video and Qwen2.5-VL-ViT")
    assert guard.attempts == []


def test_loading_a_present_checkpoint_makes_no_network_call(monkeypatch, tiny_checkpoint):
    guard = NetworkGuard(monkeypatch)
    use_lance_folders(monkeypatch, tiny_checkpoint.root)
    assert load_model("Lance_3B", download_missing=True).variant == "image"
    assert guard.attempts == []


@pytest.mark.parametrize("field, name", [("checkpoint", "../Lance_3B_Video"), ("checkpoint", "/etc"),
                                         ("vision_tower", "../Qwen2.5-VL-ViT"), ("checkpoint", "..")])
def test_names_that_reach_outside_the_model_folders_are_refused(monkeypatch, tmp_path, tiny_checkpoint, field,
                                                                name):
    # The targets exist one level up: only the name check stands between them and the loader.
    root = tmp_path / "lance"
    root.mkdir()
    (root / "Lance_3B").symlink_to(tiny_checkpoint.image, target_is_directory=True)
    for folder in (tiny_checkpoint.video, tiny_checkpoint.vit):
        (tmp_path / folder.name).symlink_to(folder, target_is_directory=True)
    use_lance_folders(monkeypatch, root)
    loader = pack_module("nodes.loader").LanceCheckpointLoader
    inputs = dict(checkpoint="Lance_3B", weight_dtype="default", attention="auto", vision_tower="auto") | {field: name}
    expected = (f"'{name}' is not a folder name: Lance loads only folders directly inside the lance model folders "
                f"({root}); pick one of the listed names")
    assert loader.validate_inputs(**inputs) == expected
    # execute checks again: a caller may skip validation
    with pytest.raises(ValueError) as refused:
        loader.execute(**inputs, download_missing=True)
    assert str(refused.value) == expected


# ------------------------------------------------------------------------------------------- downloads


class FlakyHub:
    """huggingface_hub's two calls over a local copy of the repository; ``break_file`` makes the
    download of that file write only half of it, ``fail_file`` makes it raise after writing half."""

    def __init__(self, source: Path, break_file: str | None = None, fail_file: str | None = None):
        self.source, self.break_file, self.fail_file = source, break_file, fail_file
        self.downloaded: list[str] = []

    def list_repo_tree(self, repo, path_in_repo, recursive):
        assert repo == HF_REPO and recursive
        return [SimpleNamespace(path=str(p.relative_to(self.source)), size=p.stat().st_size)
                for p in sorted((self.source / path_in_repo).rglob("*")) if p.is_file()]

    def hf_hub_download(self, repo, filename, local_dir):
        self.downloaded.append(filename)
        data = (self.source / filename).read_bytes()
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if filename in (self.break_file, self.fail_file):
            target.write_bytes(data[:len(data) // 2])
            if filename == self.fail_file:
                raise ConnectionResetError("Connection reset by peer")
        else:
            target.write_bytes(data)
        return str(target)


@pytest.fixture
def download_root(monkeypatch, tmp_path) -> Path:
    root = tmp_path / "models_lance"
    root.mkdir()
    use_lance_folders(monkeypatch, root)
    return root


def use_hub(monkeypatch, hub: FlakyHub) -> None:
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "list_repo_tree", hub.list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_file_that_arrives_short_fails_the_download_and_leaves_nothing_under_the_final_name(
        monkeypatch, download_root, tiny_checkpoint):
    weights = "Qwen2.5-VL-ViT/vit.safetensors"
    use_hub(monkeypatch, FlakyHub(tiny_checkpoint.root, break_file=weights))
    size = (tiny_checkpoint.root / weights).stat().st_size
    with pytest.raises(RuntimeError) as failed:
        pack_module("nodes.download").download_folder("Qwen2.5-VL-ViT", download_root)
    assert str(failed.value) == (
        f"vit.safetensors arrived with {size // 2} of the {size} bytes {HF_REPO} lists (the transfer broke off or "
        f"the file changed); run again to retry, or download it by hand: huggingface-cli download {HF_REPO} "
        f"--include 'Qwen2.5-VL-ViT/*' --local-dir {download_root} (or copy the folder from "
        f"https://huggingface.co/{HF_REPO}/tree/main/Qwen2.5-VL-ViT to {download_root / 'Qwen2.5-VL-ViT'})")
    assert not (download_root / "Qwen2.5-VL-ViT").exists()
    assert [p.name for p in download_root.iterdir()] == [".Qwen2.5-VL-ViT.download"]  # hidden, not a model


def test_a_download_that_breaks_off_resumes_and_only_the_complete_folder_gets_its_name(
        monkeypatch, download_root, tiny_checkpoint):
    weights = "Lance_3B/model.safetensors"
    broken = FlakyHub(tiny_checkpoint.root, fail_file=weights)
    use_hub(monkeypatch, broken)
    with pytest.raises(RuntimeError, match=rf"^could not download {weights} from {HF_REPO} \(ConnectionResetError: "
                                           rf"Connection reset by peer\); check the network connection, or download "
                                           rf"it by hand: "):
        load_model("Lance_3B", download_missing=True)
    assert not (download_root / "Lance_3B").exists()
    assert pack_module("nodes.model_folders").checkpoint_names() == ["Lance_3B", "Lance_3B_Video"]

    working = FlakyHub(tiny_checkpoint.root)
    use_hub(monkeypatch, working)
    model = load_model("Lance_3B", download_missing=True)
    assert model.variant == "image"
    # Files that arrived whole in the first attempt are not fetched again.
    first_attempt_done = broken.downloaded[:broken.downloaded.index(weights)]
    assert first_attempt_done and not set(first_attempt_done) & set(working.downloaded)
    for name in ("Lance_3B", "Qwen2.5-VL-ViT"):
        assert files_under(download_root / name) == files_under(tiny_checkpoint.root / name)
    assert sorted(p.name for p in download_root.iterdir()) == ["Lance_3B", "Qwen2.5-VL-ViT"]
