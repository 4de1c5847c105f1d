"""Video files (through PyAV) and folders of frame images -> uint8 RGB frames [T, H, W, 3] + fps.

PyAV's ``rgb24`` conversion gives the same pixels as the reference's decord reader on the golden
H.264 clips. ``read_sampled_video`` picks the frames the reference feeds to the model.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .preprocess import rgb_frames, sample_frame_indices

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray   # uint8 [T, H, W, 3]
    fps: float | None    # None when the source does not say
    indices: tuple[int, ...]  # positions of ``frames`` in the source


def _open_video(path):
    import av  # ComfyUI depends on PyAV; imported here so image-only use does not need it

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot open {path} as a video: {e}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def _stream_fps(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def probe_video(path) -> tuple[int, float | None]:
    """(number of frames, average fps or None) without decoding pixels."""
    with _open_video(path) as container:
        stream = container.streams.video[0]
        total = stream.frames
        if total <= 0:  # containers without a frame count: count the packets instead
            total = sum(1 for packet in container.demux(stream) if packet.size)
        return total, _stream_fps(stream)


def read_video(path, indices: Sequence[int] | None = None) -> Clip:
    """Decode all frames, or only those at ``indices`` (decode order positions, any order, repeats allowed)."""
    wanted = None if indices is None else set(indices)
    frames: dict[int, np.ndarray] = {}
    with _open_video(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        for position, frame in enumerate(container.decode(stream)):
            if wanted is None or position in wanted:
                frames[position] = frame.to_ndarray(format="rgb24")
            if wanted is not None and len(frames) == len(wanted):
                break
    order = sorted(frames) if indices is None else list(indices)
    missing = [i for i in order if i not in frames]
    if missing or not order:
        raise ValueError(f"{path}: frames {missing or order} are not in the video ({len(frames)} decoded)")
    return Clip(np.stack([frames[i] for i in order]), fps, tuple(order))


def read_sampled_video(path) -> Clip:
    """The frames the reference samples from a video file (``preprocess.sample_frame_indices``)."""
    total, fps = probe_video(path)
    return read_video(path, sample_frame_indices(total, fps))


def _natural_key(path: Path):
    # frame2.png before frame10.png
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_frame_folder(folder, fps: float | None = None, indices: Sequence[int] | None = None) -> Clip:
    """Frame images of a folder in natural name order (all, or those at ``indices``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder not found: {folder}")
    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
    if not paths:
        raise ValueError(f"{folder} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
    order = range(len(paths)) if indices is None else list(indices)
    bad = [i for i in order if not 0 <= i < len(paths)]
    if bad:
        raise ValueError(f"{folder}: frame indices {bad} are outside 0..{len(paths) - 1}")
    images = []
    for i in order:
        with Image.open(paths[i]) as image:
            images.append(image.copy())
    return Clip(np.stack([np.asarray(f) for f in rgb_frames(images)]), fps, tuple(order))
