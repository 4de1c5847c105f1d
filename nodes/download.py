"""Fetch an official Lance folder from the Hugging Face Hub into a ``lance`` model folder.

Files land in a hidden staging folder beside the target and are checked against the sizes the
repository lists; only a complete folder is moved to its final name. An interrupted or failed
download therefore never leaves a partial file or folder that the loader would later take for a
model (and the next attempt resumes from the staging folder).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..lance_model.checkpoint import HF_REPO, HF_REPO_URL
from . import comfy_runtime


class DownloadError(RuntimeError):
    pass


def staging_folder(folder: str, root: Path) -> Path:
    return root / f".{folder}.download"


def _manual_hint(folder: str, root: Path) -> str:
    return (f"download it by hand: huggingface-cli download {HF_REPO} --include '{folder}/*' --local-dir {root} "
            f"(or copy the folder from {HF_REPO_URL}/tree/main/{folder} to {root / folder})")


def _hub_call(what: str, folder: str, root: Path, call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as e:  # offline, proxy, HTTP and disk errors all end here
        raise DownloadError(f"could not {what} ({type(e).__name__}: {e}); check the network connection, "
                            f"or {_manual_hint(folder, root)}") from None


def _file_sizes(huggingface_hub, folder: str, root: Path) -> dict[str, int]:
    """``{path in the repository: size in bytes}`` of every file under ``folder/``."""
    entries = _hub_call(f"list the files of {HF_REPO}", folder, root,
                        lambda: list(huggingface_hub.list_repo_tree(HF_REPO, path_in_repo=folder, recursive=True)))
    sizes = {entry.path: entry.size for entry in entries if getattr(entry, "size", None) is not None}
    if not sizes:
        raise DownloadError(f"{HF_REPO} has no folder '{folder}'; only the official folder names can be downloaded")
    return sizes


def _check_size(path: Path, expected: int, folder: str, root: Path) -> None:
    got = path.stat().st_size if path.is_file() else 0
    if got != expected:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{path.name} arrived with {got} of the {expected} bytes {HF_REPO} lists (the transfer "
                            f"broke off or the file changed); run again to retry, or {_manual_hint(folder, root)}")


def download_folder(folder: str, root: Path) -> Path:
    """Download ``folder/`` of the official repository to ``root/folder``, one ProgressBar step per file."""
    try:
        import huggingface_hub
    except ImportError:
        raise DownloadError(f"download_missing needs the huggingface_hub package (pip install huggingface_hub); "
                            f"or {_manual_hint(folder, root)}") from None
    sizes = _file_sizes(huggingface_hub, folder, root)
    staging = staging_folder(folder, root)
    # The progress bar is updated outside _hub_call: its hook raises ComfyUI's interrupt, which must pass.
    progress = comfy_runtime.progress_bar(len(sizes))
    for done, (filename, size) in enumerate(sorted(sizes.items()), start=1):
        staged = staging / filename
        if not (staged.is_file() and staged.stat().st_size == size):  # a previous attempt may have it already
            _hub_call(f"download {filename} from {HF_REPO}", folder, root, huggingface_hub.hf_hub_download, HF_REPO,
                      filename, local_dir=staging)
            _check_size(staged, size, folder, root)
        progress.update_absolute(done, len(sizes))
    target = root / folder
    os.replace(staging / folder, target)
    shutil.rmtree(staging, ignore_errors=True)  # the hub's own bookkeeping (.cache)
    return target
