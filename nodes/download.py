"""Fetch an official Lance folder from the Hugging Face Hub into a ``lance`` model folder."""
from __future__ import annotations

from pathlib import Path

from . import comfy_runtime

HF_REPO = "bytedance-research/Lance"


class DownloadError(RuntimeError):
    pass


def _manual_hint(folder: str, root: Path) -> str:
    return (f"download it by hand: huggingface-cli download {HF_REPO} --include '{folder}/*' --local-dir {root} "
            f"(or copy the folder from https://huggingface.co/{HF_REPO}/tree/main/{folder} to {root / folder})")


def _hub_call(what: str, folder: str, root: Path, call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as e:  # offline, proxy, HTTP and disk errors all end here
        raise DownloadError(f"could not {what} ({type(e).__name__}: {e}); check the network connection, "
                            f"or {_manual_hint(folder, root)}") from None


def download_folder(folder: str, root: Path) -> Path:
    """Download ``folder/`` of the official repository to ``root/folder``, one ProgressBar step per file."""
    try:
        import huggingface_hub
    except ImportError:
        raise DownloadError(f"download_missing needs the huggingface_hub package (pip install huggingface_hub); "
                            f"or {_manual_hint(folder, root)}") from None
    listing = _hub_call(f"list the files of {HF_REPO}", folder, root, huggingface_hub.list_repo_files, HF_REPO)
    files = [f for f in listing if f.startswith(folder + "/")]
    if not files:
        raise DownloadError(f"{HF_REPO} has no folder '{folder}'; only the official folder names can be downloaded")
    # The progress bar is updated outside _hub_call: its hook raises ComfyUI's interrupt, which must pass.
    progress = comfy_runtime.progress_bar(len(files))
    for done, filename in enumerate(files, start=1):
        _hub_call(f"download {filename} from {HF_REPO}", folder, root, huggingface_hub.hf_hub_download, HF_REPO,
                  filename, local_dir=root)
        progress.update_absolute(done, len(files))
    return root / folder
