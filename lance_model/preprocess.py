"""Visual preprocessing of the reference's inference dataset (spec §4.3).

An image or the sampled frames of a clip go to the nearest of six aspect buckets of the preset's
area (centre crop to the bucket aspect, then PIL bicubic resize), are centre-cropped to a multiple
of 16 px (VAE) or of the ViT merge cell (28 px), normalised, and laid out C,T,H,W. ViT inputs are
then padded in time to whole temporal patches and cut into merge-ordered patches.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .config import VisionConfig

ASPECT_RATIOS = ("21:9", "16:9", "4:3", "1:1", "3:4", "9:16")
BUCKET_STRIDE = 16
VAE_CROP_MULTIPLE = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# frame sampler settings of the reference's inference dataset
SAMPLE_FPS = 12
SAMPLE_TEMPORAL = 4
MAX_DURATION_S = 6.0
DEFAULT_SOURCE_FPS = 24


@dataclass(frozen=True)
class Resolution:
    """Bucket side lengths: each bucket's area is about ``side²``."""

    vae: int
    vit: int


RESOLUTION_PRESETS = {
    "image_256res": Resolution(vae=256, vit=224),
    "video_192p": Resolution(vae=256, vit=224),
    "image_512res": Resolution(vae=512, vit=448),
    "image_768res": Resolution(vae=768, vit=672),
    "video_360p": Resolution(vae=480, vit=476),
    "video_480p": Resolution(vae=640, vit=616),
}


def resolution_preset(name: str) -> Resolution:
    try:
        return RESOLUTION_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown resolution preset {name!r}; choose one of {sorted(RESOLUTION_PRESETS)}") from None


# ---------------------------------------------------------------------------------------------
# Buckets and resizing
# ---------------------------------------------------------------------------------------------

def bucket_sizes(side: int, aspect_ratios: Sequence[str] = ASPECT_RATIOS,
                 stride: int = BUCKET_STRIDE) -> list[tuple[int, int]]:
    """(height, width) of the bucket of each aspect ratio for a target area of ``side²``.

    Two candidates (width fitted first, or height first, both rounded to the stride with Python's
    half-to-even ``round``); the one whose aspect is closer wins, ties go to the area closer to side².
    """
    area = side * side
    buckets = []
    for name in aspect_ratios:
        w_part, h_part = (int(v) for v in name.split(":"))
        ratio = w_part / h_part
        w1 = round(math.sqrt(area * ratio) / stride) * stride
        h1 = round(w1 / ratio / stride) * stride
        h2 = round(math.sqrt(area / ratio) / stride) * stride
        w2 = round(h2 * ratio / stride) * stride
        if min(w1, h1, w2, h2) <= 0:
            raise ValueError(f"resolution {side} is too small for a {name} bucket with stride {stride}")
        miss1, miss2 = abs(w1 / h1 - ratio), abs(w2 / h2 - ratio)
        if miss1 < miss2 or (miss1 == miss2 and abs(w1 * h1 - area) <= abs(w2 * h2 - area)):
            buckets.append((h1, w1))
        else:
            buckets.append((h2, w2))
    return buckets


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect is closest to width/height (the first one on ties)."""
    ratio = width / height
    misses = [abs(ratio - w / h) for h, w in buckets]
    return buckets[misses.index(min(misses))]


def aspect_crop_box(width: int, height: int, ratio: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the full-area crop of aspect ``ratio`` that torchvision's
    ``RandomResizedCrop(scale=(1, 1), ratio=(ratio, ratio))`` takes.

    torchvision first tries a crop of the image's own area at that aspect; it fits only when the
    image already has the aspect to within rounding, and then it would sit at a random offset of
    at most a pixel or two; we centre it. Otherwise the whole short side is kept (centred crop).
    """
    # torchvision draws the aspect through float32 log/exp
    drawn = torch.tensor(math.log(ratio), dtype=torch.float32).exp().item()
    w = int(round(math.sqrt(width * height * drawn)))
    h = int(round(math.sqrt(width * height / drawn)))
    if not (0 < w <= width and 0 < h <= height):
        if width / height < ratio:
            w, h = width, int(round(width / ratio))
        elif width / height > ratio:
            w, h = int(round(height * ratio)), height
        else:
            w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def resize_to_bucket(frames: Sequence[Image.Image], side: int) -> list[Image.Image]:
    """Crop every frame to the nearest bucket's aspect (chosen from the first frame) and resize it
    to the bucket with PIL's bicubic filter."""
    width, height = frames[0].size
    bucket_h, bucket_w = nearest_bucket(width, height, bucket_sizes(side))
    box = aspect_crop_box(width, height, bucket_w / bucket_h)
    return [frame.crop(box).resize((bucket_w, bucket_h), Image.Resampling.BICUBIC) for frame in frames]


def center_crop_to_multiple(frames: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop uint8 frames [T, H, W, C] so that H and W are multiples of ``multiple``."""
    height, width = frames.shape[1:3]
    if height < multiple or width < multiple:
        raise ValueError(f"frames of {height}x{width} px are smaller than the {multiple}-px crop cell; "
                         f"use a larger resolution preset")
    h, w = height - height % multiple, width - width % multiple
    # torchvision's center_crop rounds half offsets to even, like Python's round
    top, left = int(round((height - h) / 2)), int(round((width - w) / 2))
    return frames[:, top:top + h, left:left + w]


# ---------------------------------------------------------------------------------------------
# Input media -> RGB frames
# ---------------------------------------------------------------------------------------------

ACCEPTED_MEDIA = ("a PIL image, a list of PIL images, or a uint8 / uint16 / float-in-[0,1] array or tensor "
                  "shaped [H, W], [H, W, C] or [T, H, W, C] with C = 1 (gray), 2 (gray+alpha), 3 (RGB) "
                  "or 4 (RGBA)")


def _composite_on_white(image: Image.Image) -> Image.Image:
    # transparent pixels become white, as the reference does for RGBA/palette inputs
    image = image.convert("RGBA")
    background = Image.new("RGB", image.size, (255, 255, 255))
    background.paste(image, mask=image.getchannel("A"))
    return background


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P":
        image = image.convert("RGBA")
    if {"A", "a"} & set(image.getbands()):
        return _composite_on_white(image)
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit / 32-bit gray: PIL's own convert("RGB") would clip instead of scaling
        return _array_frame_to_rgb(np.asarray(image))
    return image.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"float image values must lie in [0, 1] (got {array.min()}..{array.max()}); "
                             f"accepted: {ACCEPTED_MEDIA}")
        return np.round(array.astype(np.float64) * 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {array.dtype}; accepted: {ACCEPTED_MEDIA}")


def _array_frame_to_rgb(frame: np.ndarray) -> Image.Image:
    if frame.ndim == 2:
        frame = frame[..., None]
    channels = frame.shape[-1]
    if frame.ndim != 3 or channels not in (1, 2, 3, 4):
        raise ValueError(f"unsupported frame shape {list(frame.shape)} (channels last expected); "
                         f"accepted: {ACCEPTED_MEDIA}")
    frame = _to_uint8(frame)
    if channels == 1:
        return Image.fromarray(np.repeat(frame, 3, axis=-1), "RGB")
    if channels == 3:
        return Image.fromarray(np.ascontiguousarray(frame), "RGB")
    mode = "LA" if channels == 2 else "RGBA"
    return _composite_on_white(Image.fromarray(np.ascontiguousarray(frame), mode))


def rgb_frames(media) -> list[Image.Image]:
    """Validate an image / frame stack and turn it into RGB PIL frames of equal size."""
    if isinstance(media, Image.Image):
        frames = [_pil_to_rgb(media)]
    elif isinstance(media, (list, tuple)) and all(isinstance(f, Image.Image) for f in media):
        frames = [_pil_to_rgb(f) for f in media]
    elif isinstance(media, (np.ndarray, torch.Tensor)):
        if isinstance(media, torch.Tensor):
            media = media.detach().cpu()
            array = (media.float() if media.is_floating_point() else media).numpy()
        else:
            array = media
        if array.ndim == 4:
            frames = [_array_frame_to_rgb(f) for f in array]
        elif array.ndim in (2, 3):
            frames = [_array_frame_to_rgb(array)]
        else:
            raise ValueError(f"unsupported media shape {list(array.shape)}; accepted: {ACCEPTED_MEDIA}")
    else:
        raise TypeError(f"unsupported media type {type(media).__name__}; accepted: {ACCEPTED_MEDIA}")
    if not frames:
        raise ValueError("no frames given: an image or a video needs at least one frame")
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"all frames of a clip must have the same size, got {sorted(sizes)}")
    if min(frames[0].size) < 1:
        raise ValueError(f"empty image of size {frames[0].size}")
    return frames


def bucket_frames(media, side: int, multiple: int) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] after the bucket resize and the centre crop to ``multiple``."""
    resized = resize_to_bucket(rgb_frames(media), side)
    stacked = torch.from_numpy(np.stack([np.asarray(f) for f in resized]))
    return center_crop_to_multiple(stacked, multiple)


# ---------------------------------------------------------------------------------------------
# Normalisation and layout
# ---------------------------------------------------------------------------------------------

def _normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    # same float32 operations as to_tensor + Normalize, so values match the reference bit for bit
    x = frames.permute(3, 0, 1, 2).float().div(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    return x.sub(mean_t).div(std_t)


def normalize_for_vae(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, H, W] in [-1, 1]."""
    return _normalize(frames, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def normalize_for_vit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, H, W] with CLIP mean/std."""
    return _normalize(frames, CLIP_MEAN, CLIP_STD)


def pad_to_temporal_patches(video: torch.Tensor, temporal_patch: int) -> torch.Tensor:
    """Repeat the last frame of [C, T, H, W] until T is a multiple of the temporal patch
    (a still image becomes two identical frames; an odd clip gets its last frame twice)."""
    missing = -video.shape[1] % temporal_patch
    if missing:
        video = torch.cat([video, video[:, -1:].expand(-1, missing, -1, -1)], dim=1)
    return video


def patchify_with_merge(video: torch.Tensor, cfg: VisionConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[C, T, H, W] -> (patches [t*h*w, C*tp*p*p], grid (t, h, w) in patches).

    Rows go temporal patch, merge-cell row, merge-cell column, then the 2x2 patches of the cell, so
    every merge group is contiguous; each row holds (channel, frame, y, x).
    """
    c, frames, height, width = video.shape
    p, tp, m = cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size
    if c != cfg.in_channels or frames % tp or height % (p * m) or width % (p * m):
        raise ValueError(f"video [C, T, H, W] = {list(video.shape)} must have {cfg.in_channels} channels, "
                         f"T a multiple of {tp} and H, W multiples of {p * m}")
    gt, gh, gw = frames // tp, height // p, width // p
    x = video.reshape(c, gt, tp, gh // m, m, p, gw // m, m, p)
    x = x.permute(1, 3, 6, 4, 7, 0, 2, 5, 8)
    return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


# ---------------------------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------------------------

def vae_input(media, side: int) -> torch.Tensor:
    """Image or frames -> float32 [3, T, H, W] in [-1, 1] for the VAE encoder (H, W multiples of 16)."""
    return normalize_for_vae(bucket_frames(media, side, VAE_CROP_MULTIPLE))


@dataclass(frozen=True)
class VitInput:
    patches: torch.Tensor           # float32 [t*h*w, C*tp*p*p], CLIP-normalised
    grid_thw: tuple[int, int, int]  # patch grid; the LLM sees t*h*w / merge² tokens


def vit_input(media, side: int, cfg: VisionConfig) -> VitInput:
    """Image or frames -> merge-ordered ViT patches and their grid."""
    cell = cfg.patch_size * cfg.spatial_merge_size
    video = normalize_for_vit(bucket_frames(media, side, cell))
    patches, grid = patchify_with_merge(pad_to_temporal_patches(video, cfg.temporal_patch_size), cfg)
    return VitInput(patches, grid)


# ---------------------------------------------------------------------------------------------
# Frame sampling
# ---------------------------------------------------------------------------------------------

def sample_frame_indices(total_frames: int, fps: float | None = None) -> list[int]:
    """Frames of a clip that the reference feeds to the model: 12 per second of the clip's
    duration (capped at 6 s), a count of the form 4k+1 (at most 69), spread evenly over the
    whole clip even when it is longer than 6 s. ``fps`` None/unknown counts as 24."""
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    source_fps = round(float(fps)) if fps is not None and math.isfinite(float(fps)) else 0
    if source_fps < 1:
        source_fps = DEFAULT_SOURCE_FPS
    duration = min(total_frames / source_fps, MAX_DURATION_S)
    count = int(round(duration * SAMPLE_FPS))
    if count % SAMPLE_TEMPORAL:
        count = count // SAMPLE_TEMPORAL * SAMPLE_TEMPORAL + 1
    else:
        count -= SAMPLE_TEMPORAL - 1
    # the reference fails on clips shorter than half a sample period; use their first frame
    count = max(count, 1)
    return np.linspace(0, total_frames - 1, count).astype(np.int64).tolist()
