"""ComfyUI IMAGE batches as Lance media: one image, or a clip resampled like the reference's frame sampler."""
from __future__ import annotations

import torch

from ..lance_model.preprocess import SAMPLE_FPS, sample_frame_indices

MEDIA_KINDS = ("image", "video")
FPS_TOOLTIP = (f"Frame rate of the input frames (video only; GetVideoComponents gives it). The clip is resampled "
               f"to {SAMPLE_FPS} fps over at most 6 s and 4k+1 frames, as the reference does; a 4k+1-frame batch at "
               f"{SAMPLE_FPS} fps is used as is.")


def media_frames(images: torch.Tensor, kind: str, fps: float, min_clip_frames: int = 2) -> torch.Tensor:
    """The frames of ``images`` [N, H, W, C] that Lance sees for ``kind``; a clip needs at least
    ``min_clip_frames`` images (checked before resampling, so the message names what the user gave)."""
    count = images.shape[0]
    if kind == "image":
        if count != 1:
            raise ValueError(f"kind 'image' takes one image, got a batch of {count}; pick one (e.g. with "
                             f"ImageFromBatch) or set kind to 'video'")
        return images
    if kind != "video":
        raise ValueError(f"kind must be one of {MEDIA_KINDS}, got {kind!r}")
    if count < min_clip_frames:
        raise ValueError(f"kind 'video' needs the clip's frames (at least {min_clip_frames} images in the batch), got "
                         f"{count}; give a longer clip, or set kind to 'image' for a still image")
    return images[sample_frame_indices(count, fps)]
