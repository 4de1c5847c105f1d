"""The input files the shipped workflows name (example.png, example.mp4), made up and uploaded to a server.

A gradient image of a non-square aspect and a short clip of a moving bar at 12 fps, small enough for the
tiny checkpoint on a CPU. Uploading again replaces the files, so calling this per test is fine.
"""
from __future__ import annotations

import io

import av
import numpy as np
import requests
from PIL import Image

IMAGE_NAME, VIDEO_NAME = "example.png", "example.mp4"
WIDTH, HEIGHT = 128, 96
CLIP_FRAMES, CLIP_FPS = 5, 12  # the shortest clip Lance edits: 4k+1 >= 5 frames at 12 fps


def gradient(shift: int = 0) -> np.ndarray:
    x = np.linspace(0, 255, WIDTH)[None, :]
    y = np.linspace(0, 255, HEIGHT)[:, None]
    frame = np.stack(np.broadcast_arrays(x, y, 128 + 0 * x), axis=-1).astype(np.uint8)
    frame[:, shift:shift + 16] = 255  # a bar that moves from frame to frame
    return frame


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gradient()).save(buffer, format="PNG")
    return buffer.getvalue()


def mp4_bytes() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(CLIP_FRAMES):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(gradient(8 * index), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def upload_example_media(url: str) -> None:
    for name, content, kind in ((IMAGE_NAME, png_bytes(), "image/png"), (VIDEO_NAME, mp4_bytes(), "video/mp4")):
        response = requests.post(f"{url}/upload/image", files={"image": (name, content, kind)},
                                 data={"overwrite": "true", "type": "input"}, timeout=60)
        response.raise_for_status()
        assert response.json()["name"] == name, response.json()
