"""Lance Checkpoint Loader: a Lance folder from models/lance -> LANCE_MODEL."""
from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from ..lance_model.checkpoint import VIT_FOLDER_NAME, variant_from_folder_name
from . import NODE_CLASSES, model_folders
from .attention_choice import ATTENTION_OPTIONS, resolve_attention
from .download import download_folder
from .model_handle import WEIGHT_DTYPES, build_lance_model
from .sockets import LanceModelSocket
from .validation import first_error, option_error

model_folders.register_model_folder()

AUTO = "auto"


def _missing(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"'{name}' was not found in the lance model folders ({model_folders.describe_roots()}); put the folder "
        f"there, or enable download_missing to fetch the official {', '.join(model_folders.OFFICIAL_CHECKPOINTS)} "
        f"and {VIT_FOLDER_NAME}")


def _locate(name: str, download_missing: bool) -> Path:
    folder = model_folders.find_folder(name)
    if folder is not None:
        return folder
    roots = model_folders.lance_roots()
    if download_missing and roots and (name in model_folders.OFFICIAL_CHECKPOINTS or name == VIT_FOLDER_NAME):
        return download_folder(name, roots[0])
    raise _missing(name)


def _vision_tower_dir(choice: str, checkpoint: str, download_missing: bool) -> Path | None:
    """The separate tower to load: the chosen folder, or for ``auto`` the official one when the checkpoint
    bundles none (None when it is absent: the nodes that need a tower then say how to get it)."""
    if choice != AUTO:
        return _locate(choice, download_missing)
    if variant_from_folder_name(Path(checkpoint)) == "video":
        return None
    folder = model_folders.find_folder(VIT_FOLDER_NAME)
    if folder is None and download_missing:
        folder = _locate(VIT_FOLDER_NAME, download_missing)
    return folder


class LanceCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LanceCheckpointLoader",
            display_name="Lance Checkpoint Loader",
            category="Lance/loaders",
            description="Opens a Lance checkpoint folder from models/lance. Nothing is read into memory or moved "
                        "to the GPU here: each Lance node asks ComfyUI to place only the parts it runs.",
            inputs=[
                io.Combo.Input("checkpoint", options=model_folders.checkpoint_names(),
                               tooltip="Lance_3B: text-to-image, image edit, image captioning. Lance_3B_Video: "
                                       "text/image-to-video, video edit, video captioning. Folders in models/lance "
                                       "holding model.safetensors + llm_config.json."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="How the LLM's matmul weights are kept. default: the checkpoint's bf16 "
                                       "(about 12.4 GB), exact. fp8_e4m3fn: fp8 with a scale per weight, about half "
                                       "the memory, computed in bf16; a small quality cost. fp8_e4m3fn_fast: as "
                                       "fp8_e4m3fn, and the matmuls themselves run in fp8 (faster, a little less "
                                       "exact) on GPUs with fp8 units (Ada, Hopper or newer); elsewhere the same as "
                                       "fp8_e4m3fn. fp8_e5m2: fp8 storage with fewer mantissa bits (less exact "
                                       "than e4m3)."),
                io.Combo.Input("attention", options=list(ATTENTION_OPTIONS), default=AUTO,
                               tooltip="auto: flash-attn on Ampere/Ada GPUs when installed, else torch SDPA (the "
                                       "fastest on Hopper and newer). flash_attn and sage need their packages "
                                       "installed; sage quantises Q/K (faster, not exact)."),
                io.Combo.Input("vision_tower", options=[AUTO] + model_folders.vision_tower_names(), default=AUTO,
                               tooltip=f"auto: the tower bundled in the video checkpoint, else models/lance/"
                                       f"{VIT_FOLDER_NAME}. A folder name uses that tower instead (also with the "
                                       f"video checkpoint). Needed for editing and captioning."),
                io.Boolean.Input("download_missing", default=False,
                                 tooltip="Download missing official folders (Lance_3B, Lance_3B_Video, "
                                         f"{VIT_FOLDER_NAME}) from Hugging Face into models/lance (12-14 GB each)."),
            ],
            outputs=[LanceModelSocket.Output(
                display_name="model", tooltip="The Lance model for the encode, sample and caption nodes.")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint, weight_dtype, attention, vision_tower):
        return first_error(
            model_folders.name_error("checkpoint", checkpoint, model_folders.checkpoint_names()),
            option_error("weight_dtype", weight_dtype, WEIGHT_DTYPES),
            option_error("attention", attention, ATTENTION_OPTIONS),
            model_folders.name_error("vision_tower", vision_tower, [AUTO] + model_folders.vision_tower_names()))

    @classmethod
    def execute(cls, checkpoint: str, weight_dtype: str, attention: str, vision_tower: str,
                download_missing: bool) -> io.NodeOutput:
        kernel = resolve_attention(attention)
        folder = _locate(checkpoint, download_missing)
        vit_dir = _vision_tower_dir(vision_tower, checkpoint, download_missing)
        model = build_lance_model(folder, vit_dir, weight_dtype, kernel, prefer_separate_vit=vision_tower != AUTO)
        return io.NodeOutput(model)


NODE_CLASSES.append(LanceCheckpointLoader)
