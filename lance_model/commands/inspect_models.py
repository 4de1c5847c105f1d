"""``inspect PATH [--expect-variant {image,video}]``: validate a Lance folder (or the ViT folder, the VAE
file, or every part found in a models folder) and summarise variant, parameter counts and dtypes.
Exits 1 if any part is invalid."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..checkpoint import (LANCE_WEIGHT_FILES, LLM_CONFIG_JSON, VIT_WEIGHTS, CheckpointError, LanceCheckpoint,
                          ModelsFolder, VaeCheckpoint, VitCheckpoint)
from ..comfy_lookup import ComfyNotFound
from ..inventory import VARIANTS, format_shape


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="validate a Lance folder or a models folder and summarise it",
        description="Check every file against its config (names, shapes, header offsets, tokenizer special ids) "
                    "and print variant, parameter counts per part and dtypes. PATH is a Lance folder "
                    "(Lance_3B/, Lance_3B_Video/), the Qwen2.5-VL-ViT/ folder, Wan2.2_VAE.pth, or a models "
                    "folder holding them.")
    parser.add_argument("path", metavar="PATH")
    parser.add_argument("--expect-variant", choices=VARIANTS,
                        help="fail unless the Lance folder holds this model (default: what an official folder "
                             "name promises: *_Video = video, Lance_3B = image)")
    parser.set_defaults(func=run)


def _is_lance_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in (LLM_CONFIG_JSON, *LANCE_WEIGHT_FILES))


def _summary(tensors: dict[str, torch.Tensor]) -> str:
    params = sum(t.numel() for t in tensors.values())
    dtypes = "+".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}))
    return f"{params:>14,} parameters  {dtypes}"


def describe_lance(path: Path, expect_variant: str | None) -> list[str]:
    ckpt = LanceCheckpoint.open(path, expect_variant=expect_variant)
    lines = [f"{path}: Lance {ckpt.variant} checkpoint ({ckpt.weights_file.name})",
             f"  und        {_summary(ckpt.und)}",
             f"  gen        {_summary(ckpt.gen)}"]
    if ckpt.vit is not None:
        lines.append(f"  vit        {_summary(ckpt.vit)}  (bundled vit_model.*, used instead of Qwen2.5-VL-ViT)")
    else:
        lines.append("  vit        none bundled (the vision tower comes from Qwen2.5-VL-ViT/)")
    if ckpt.stored_pos_table_shape is not None:
        lines.append(f"  stored latent position table {format_shape(ckpt.stored_pos_table_shape)} "
                     "(not loaded: recomputed at run time)")
    lines.append(f"  tokenizer  {len(ckpt.tokenizer)} tokens; special-token ids agree with {LLM_CONFIG_JSON}")
    return lines


def describe_vit(path: Path) -> list[str]:
    vit = VitCheckpoint.open(path)
    return [f"{path}: Qwen2.5-VL vision tower (depth {vit.config.depth}, width {vit.config.hidden_size})",
            f"  vit        {_summary(vit.state_dict)}"]


def describe_vae(path: Path) -> list[str]:
    try:
        vae = VaeCheckpoint.open(path)
    except ComfyNotFound as e:
        return [f"{path}: Wan 2.2 VAE not checked ({e})"]
    return [f"{path}: Wan 2.2 VAE (dim={vae.dim}, dec_dim={vae.dec_dim})",
            f"  vae        {_summary(vae.state_dict)}"]


def _checks(path: Path, expect_variant: str | None):
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    if expect_variant and not _is_lance_folder(path):
        raise CheckpointError(f"{path}: --expect-variant applies to one Lance folder (holding {LLM_CONFIG_JSON} "
                              f"and {LANCE_WEIGHT_FILES[0]})")
    if _is_lance_folder(path):
        return [lambda: describe_lance(path, expect_variant)]
    if (path / VIT_WEIGHTS).is_file():
        return [lambda: describe_vit(path)]
    if path.is_file():
        return [lambda: describe_vae(path)]
    found = ModelsFolder.find(path)
    if found.empty:
        raise CheckpointError(f"{path}: no Lance model files found; expected a Lance folder ({LLM_CONFIG_JSON}, "
                              f"{LANCE_WEIGHT_FILES[0]}, tokenizer.json) or a models folder holding Lance_3B/, "
                              "Lance_3B_Video/, Qwen2.5-VL-ViT/ and Wan2.2_VAE.pth")
    checks = [lambda folder=folder: describe_lance(folder, None) for folder in found.lance_folders]
    if found.vit_folder:
        checks.append(lambda: describe_vit(found.vit_folder))
    if found.vae_file:
        checks.append(lambda: describe_vae(found.vae_file))
    return checks


def run(args) -> int:
    failed = False
    for check in _checks(Path(args.path), args.expect_variant):
        try:
            print("\n".join(check()))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0
