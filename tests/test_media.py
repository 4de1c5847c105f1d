"""Video decoding with PyAV against the frames decord returned to the reference."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lance_model.media import probe_video, read_frame_folder, read_sampled_video, read_video

CLIPS = {"x2t_video": "clip_4x3_24fps.mp4", "video_edit": "clip_16x9_12fps.mp4"}


def _decoded_reads(golden_dir, task) -> np.ndarray:
    paths = sorted((golden_dir / task / "inputs").glob("decoded_read0_frame*.png"))
    return np.stack([np.asarray(Image.open(p)) for p in paths])


@pytest.mark.parametrize("task", sorted(CLIPS))
def test_sampled_frames_equal_decord_reads(golden_dir, task):
    read = json.loads((golden_dir / task / "settings.json").read_text())["video_read"]
    path = golden_dir / task / "inputs" / CLIPS[task]
    assert probe_video(path) == (read["n_total"][0], read["fps"][0])
    clip = read_sampled_video(path)
    assert list(clip.indices) == read["indices"][0]
    assert clip.fps == read["fps"][0]
    assert clip.frames.dtype == np.uint8
    assert np.array_equal(clip.frames, _decoded_reads(golden_dir, task))


def test_read_video_picks_indices_in_given_order(golden_dir):
    path = golden_dir / "x2t_video" / "inputs" / CLIPS["x2t_video"]
    everything = read_video(path)
    assert everything.frames.shape == (20, 144, 192, 3) and everything.indices == tuple(range(20))
    picked = read_video(path, [7, 2, 7])
    assert np.array_equal(picked.frames, everything.frames[[7, 2, 7]])
    with pytest.raises(ValueError, match=r"frames \[20\] are not in the video"):
        read_video(path, [0, 20])


def test_frame_folder_reads_in_natural_order(tmp_path):
    for i in (10, 2, 1):
        Image.new("RGB", (4, 2), (i, 0, 0)).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    clip = read_frame_folder(tmp_path, fps=8)
    assert clip.frames.shape == (3, 2, 4, 3) and clip.fps == 8
    assert clip.frames[:, 0, 0, 0].tolist() == [1, 2, 10]
    assert read_frame_folder(tmp_path, indices=[2]).frames[:, 0, 0, 0].tolist() == [10]
    with pytest.raises(ValueError, match=r"indices \[3\] are outside 0..2"):
        read_frame_folder(tmp_path, indices=[3])


def test_frame_folder_of_decoded_reads(golden_dir, tmp_path):
    for p in (golden_dir / "video_edit" / "inputs").glob("decoded_read0_frame*.png"):
        shutil.copy(p, tmp_path)
    assert np.array_equal(read_frame_folder(tmp_path).frames, _decoded_reads(golden_dir, "video_edit"))


def test_unreadable_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="video file not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="cannot open"):
        probe_video(tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="holds no frame images"):
        read_frame_folder(tmp_path)
