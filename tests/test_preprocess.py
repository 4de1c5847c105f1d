"""Visual preprocessing against the reference's bucket table (spec §4.3) and the golden
``preproc/`` frames, patches and checksums."""
from __future__ import annotations

import json
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lance_model.config import VisionConfig
from lance_model.preprocess import (ASPECT_RATIOS, CLIP_MEAN, CLIP_STD, RESOLUTION_PRESETS, aspect_crop_box,
                                    bucket_frames, bucket_sizes, center_crop_to_multiple, nearest_bucket,
                                    normalize_for_vae, normalize_for_vit, pad_to_temporal_patches,
                                    patchify_with_merge, resolution_preset, rgb_frames, sample_frame_indices,
                                    vae_input, vit_input)

# task -> its visual input inside inputs/ (videos: the frames decord returned to the reference)
TASK_MEDIA = {
    "image_edit": "image_16x9.png",
    "i2v": "image_16x9.png",
    "x2t_image": "image_3x4.png",
    "video_edit": "decoded_read0_frame*.png",
    "x2t_video": "decoded_read0_frame*.png",
}


@pytest.fixture(scope="module")
def vit_cfg(golden_dir) -> VisionConfig:
    return VisionConfig.from_file(golden_dir / "ckpt" / "Qwen2.5-VL-ViT" / "config.json")


def _load_pngs(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(paths)])


def _task_media(golden_dir, task):
    frames = [Image.open(p) for p in sorted((golden_dir / task / "inputs").glob(TASK_MEDIA[task]))]
    return frames[0] if len(frames) == 1 else frames


def _task_side(golden_dir, task, kind):
    settings = json.loads((golden_dir / task / "settings.json").read_text())
    return getattr(resolution_preset(settings["reference_cli_args"]["resolution"]), kind)


# ---------------------------------------------------------------- buckets

def _spec_bucket_table(spec_dir) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """{("VAE" | "ViT", preset suffix): [(h, w) per aspect]} from the table in spec §4.3."""
    table = {}
    for line in (spec_dir / "lance-spec.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| (VAE|ViT) (\w+) \|(.*)\|\s*$", line)
        if match:
            cells = [re.match(r"\s*(\d+)×(\d+)", c) for c in match.group(3).split("|")]
            table[match.group(1), match.group(2)] = [(int(c.group(1)), int(c.group(2))) for c in cells]
    return table


def test_bucket_table_matches_spec_for_every_preset(spec_dir):
    table = _spec_bucket_table(spec_dir)
    assert len(table) == 10
    for preset, res in RESOLUTION_PRESETS.items():
        suffix = preset.split("_")[1]
        if ("VAE", suffix) not in table:  # video_192p shares image_256res's buckets
            assert res == RESOLUTION_PRESETS["image_256res"], preset
            continue
        assert bucket_sizes(res.vae) == table["VAE", suffix], preset
        vit = [(h - h % 28, w - w % 28) for h, w in bucket_sizes(res.vit)]
        assert vit == table["ViT", suffix], preset


def test_bucket_candidates_use_half_to_even_rounding():
    # 16:9 at 224: height-first sqrt(224²·9/16) / 16 = 10.5 rounds to 10 (not 11) -> 160x288
    assert bucket_sizes(224)[ASPECT_RATIOS.index("16:9")] == (160, 288)


def test_nearest_bucket_and_first_on_ties():
    buckets = bucket_sizes(256)
    assert nearest_bucket(320, 180, buckets) == (192, 336)
    assert nearest_bucket(180, 240, buckets) == (304, 224)
    assert nearest_bucket(5, 4, [(100, 100), (100, 150)]) == (100, 100)  # 1.25 is 0.25 from both


def test_aspect_crop_keeps_short_side_and_centres():
    assert aspect_crop_box(320, 180, 1.75) == (2, 0, 317, 180)      # wider: keep height, 315 columns
    assert aspect_crop_box(180, 240, 224 / 304) == (1, 0, 178, 240)  # round(240 * 0.737) = 177 columns
    assert aspect_crop_box(100, 300, 0.75) == (0, 83, 100, 216)      # taller: keep width, centre rows


def test_aspect_crop_when_image_already_has_bucket_aspect():
    # torchvision's full-area draw fits when the aspect matches to within rounding
    assert aspect_crop_box(336, 192, 1.75) == (0, 0, 336, 192)
    assert aspect_crop_box(337, 192, 1.75) == (0, 0, 336, 192)
    # here the short-side rule would keep only 191 rows; the full-area draw keeps all 192
    assert aspect_crop_box(335, 192, 1.75) == (0, 0, 335, 192)


def test_resolution_preset_error_lists_choices():
    with pytest.raises(ValueError, match="image_768res"):
        resolution_preset("1080p")


# ---------------------------------------------------------------- golden preproc frames

@pytest.mark.parametrize("task, kind", [("image_edit", "vae"), ("i2v", "vae"), ("video_edit", "vae"),
                                        ("image_edit", "vit"), ("x2t_image", "vit"), ("video_edit", "vit"),
                                        ("x2t_video", "vit")])
def test_bucket_frames_equal_golden_preproc(golden_dir, task, kind):
    golden = sorted((golden_dir / task / "preproc").glob(f"{kind}_in0_frame*.png"))
    assert golden
    multiple = 16 if kind == "vae" else 28
    ours = bucket_frames(_task_media(golden_dir, task), _task_side(golden_dir, task, kind), multiple)
    ref = _load_pngs(golden)
    assert ours.dtype == torch.uint8
    assert ours.shape == ref.shape
    assert np.array_equal(ours.numpy(), ref)


def test_vae_input_values(golden_dir):
    video = vae_input(_task_media(golden_dir, "video_edit"), 256)
    ref = torch.from_numpy(_load_pngs((golden_dir / "video_edit" / "preproc").glob("vae_in0_frame*.png")))
    assert video.shape == (3, 5, 192, 336) and video.dtype == torch.float32
    assert torch.equal(video, (ref.permute(3, 0, 1, 2).float() / 255 - 0.5) / 0.5)


@pytest.mark.parametrize("task", ["image_edit", "video_edit", "x2t_image", "x2t_video"])
def test_vit_input_matches_golden_patches(golden_dir, vit_cfg, task):
    vit = vit_input(_task_media(golden_dir, task), _task_side(golden_dir, task, "vit"), vit_cfg)
    tensors = load_file(golden_dir / task / "tensors.safetensors")
    assert list(vit.grid_thw) == tensors["vit.grid_thw_0"][0].tolist()
    assert torch.equal(vit.patches[:8], tensors["vit.input_patches_head8"])
    notes = json.loads((golden_dir / task / "settings.json").read_text())["notes"]["vit.input_patches"]
    flat = vit.patches.double().flatten()
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64) / flat.numel()
    assert list(vit.patches.shape) == notes["shape"]
    assert flat.sum().item() == pytest.approx(notes["sum"], rel=1e-12)
    assert (flat * weights).sum().item() == pytest.approx(notes["weighted_sum"], rel=1e-12)


@pytest.mark.parametrize("item", ["image", "clip"])
def test_patchify_layout_matches_golden(golden_dir, vit_cfg, item):
    golden = load_file(golden_dir / "vit" / "vit_golden.safetensors")
    patches, grid = patchify_with_merge(golden[f"{item}.pixels_uint8_cthw"], vit_cfg)
    assert list(grid) == golden[f"{item}.grid_thw"][0].tolist()
    assert torch.equal(patches, golden[f"{item}.patches_uint8"])


def test_vit_golden_pixels_come_from_our_preprocessing(golden_dir):
    golden = load_file(golden_dir / "vit" / "vit_golden.safetensors")
    image = bucket_frames(Image.open(golden_dir / "x2t_image" / "inputs" / "image_3x4.png"), 224, 28)
    assert torch.equal(pad_to_temporal_patches(image.permute(3, 0, 1, 2), 2), golden["image.pixels_uint8_cthw"])
    sources = sorted((golden_dir / "video_edit" / "inputs").glob("clip_16x9_12fps_src*.png"))[:4]
    clip = bucket_frames([Image.open(p) for p in sources], 224, 28)
    assert torch.equal(clip.permute(3, 0, 1, 2), golden["clip.pixels_uint8_cthw"])


def test_vit_normalisation_is_clip():
    frames = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)
    x = normalize_for_vit(frames)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), CLIP_MEAN, CLIP_STD)]
    assert x.shape == (3, 1, 1, 1)
    assert x.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert normalize_for_vae(frames).flatten().tolist() == pytest.approx([-1, 128 / 127.5 - 1, 1], abs=1e-6)


def test_temporal_padding_duplicates_last_frame(vit_cfg):
    image = vit_input(np.full((56, 56, 3), 7, np.uint8), 56, vit_cfg)
    assert image.grid_thw == (1, 4, 4)
    clip = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1).expand(3, 3, 2, 2)
    padded = pad_to_temporal_patches(clip, 2)
    assert padded[0, :, 0, 0].tolist() == [0, 1, 2, 2]
    assert pad_to_temporal_patches(padded, 2) is padded


def test_patchify_feature_order_is_channel_frame_y_x(vit_cfg):
    video = torch.arange(3 * 2 * 28 * 28, dtype=torch.float32).view(3, 2, 28, 28)
    patches, grid = patchify_with_merge(video, vit_cfg)
    assert grid == (1, 2, 2) and patches.shape == (4, 1176)
    # second patch of the merge cell = top-right 14x14 block
    assert torch.equal(patches[1].view(3, 2, 14, 14), video[:, :, :14, 14:])
    assert torch.equal(patches[2].view(3, 2, 14, 14), video[:, :, 14:, :14])


# ---------------------------------------------------------------- frame sampling

def test_sampler_matches_golden_reads(golden_dir):
    for task in ("x2t_video", "video_edit"):
        read = json.loads((golden_dir / task / "settings.json").read_text())["video_read"]
        for indices, total, fps in zip(read["indices"], read["n_total"], read["fps"]):
            assert sample_frame_indices(total, fps) == indices


def test_sampler_rules():
    assert sample_frame_indices(20, 24) == [0, 2, 4, 7, 9, 11, 14, 16, 19]
    long = sample_frame_indices(30 * 600, 29.97)  # 10 minutes: 69 frames over the whole clip
    assert len(long) == 69 and long[0] == 0 and long[-1] == 30 * 600 - 1
    assert sample_frame_indices(48, None) == sample_frame_indices(48, 24)  # unknown fps -> 24
    assert sample_frame_indices(48, 0.0) == sample_frame_indices(48, float("nan")) == sample_frame_indices(48, 24)
    assert sample_frame_indices(300, Fraction(30000, 1001)) == sample_frame_indices(300, 30)
    assert len(sample_frame_indices(48, 24)) == 21   # 2 s -> 24 -> 4k case -> 21
    assert len(sample_frame_indices(50, 24)) == 25   # round(25.0) = 25 -> 4k+1
    assert sample_frame_indices(1, 30) == [0]
    for total in range(1, 200):
        n = len(sample_frame_indices(total, 25))
        assert n % 4 == 1 and n <= 69
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 24)


# ---------------------------------------------------------------- input checks

def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgb = np.asarray(rgb_frames(rgba)[0])
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 1].tolist() == [255, 255, 255]
    la = Image.fromarray(np.stack([np.full((2, 2), 9, np.uint8), np.zeros((2, 2), np.uint8)], -1), "LA")
    assert np.asarray(rgb_frames(la)[0]).tolist() == [[[255] * 3] * 2] * 2


def test_gray_16bit_and_float_inputs_are_converted():
    assert np.asarray(rgb_frames(np.full((2, 2), 100, np.uint8))[0])[0, 0].tolist() == [100] * 3
    assert np.asarray(rgb_frames(np.full((2, 2, 3), 65535, np.uint16))[0])[0, 0].tolist() == [255] * 3
    assert np.asarray(rgb_frames(Image.fromarray(np.full((2, 2), 257 * 40, np.uint16)))[0])[0, 0].tolist() == [40] * 3
    big_endian = np.full((2, 2), 257 * 40, ">u2")
    assert np.asarray(rgb_frames(big_endian)[0])[0, 0].tolist() == [40] * 3
    comfy_image = torch.full((2, 3, 3, 3), 128 / 255)  # ComfyUI IMAGE: float [B, H, W, C]
    frames = rgb_frames(comfy_image)
    assert len(frames) == 2 and np.asarray(frames[1])[0, 0].tolist() == [128] * 3
    assert np.asarray(rgb_frames(comfy_image.half())[0])[0, 0].tolist() == [128] * 3


@pytest.mark.parametrize("media, message", [
    (np.zeros((4, 4, 5), np.uint8), "channels last"),
    (np.zeros((4, 4, 3), np.int32), "dtype int32"),
    (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((0, 4, 4, 3), np.uint8), "at least one frame"),
    ([], "at least one frame"),
    ("image.png", "unsupported media type"),
    ([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))], "same size"),
])
def test_bad_media_is_refused_with_reason(media, message):
    with pytest.raises((ValueError, TypeError), match=message):
        rgb_frames(media)


def test_too_small_for_crop_cell():
    with pytest.raises(ValueError, match="smaller than the 28-px crop cell"):
        center_crop_to_multiple(torch.zeros(1, 20, 40, 3, dtype=torch.uint8), 28)
    with pytest.raises(ValueError, match="too small"):
        bucket_sizes(4)
