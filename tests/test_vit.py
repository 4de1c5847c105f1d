"""Vision tower against the golden ViT outputs (component goldens and the tasks' ``vit.output_0``)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lance_model.preprocess import normalize_for_vit, patchify_with_merge
from lance_model.varlen_attention import PackedSegments, varlen_attention
from lance_model.vit import window_order
from mot_cases import rel_l2
from parity_measures import SINGLE_FORWARD_REL_L2, vision_tower, vit_task_error

# golden weight-set name -> the Lance folder whose loader picks those ViT weights
WEIGHT_SETS = {"vit_safetensors": "Lance_tiny", "lance_tiny_video_vit_model": "Lance_tiny_Video"}
VIT_TASKS = ("image_edit", "video_edit", "x2t_image", "x2t_video")


def tower(golden_dir, folder: str, dtype: torch.dtype):
    return vision_tower(golden_dir / "ckpt" / folder, dtype)


@pytest.fixture(scope="module")
def vit_golden(golden_dir):
    return load_file(golden_dir / "vit" / "vit_golden.safetensors")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("weights", sorted(WEIGHT_SETS))
@pytest.mark.parametrize("item", ["image", "clip"])
def test_component_golden(golden_dir, vit_golden, item, weights, dtype):
    vit = tower(golden_dir, WEIGHT_SETS[weights], dtype)
    pixels = vit_golden[f"{item}.pixels_uint8_cthw"].permute(1, 2, 3, 0)  # -> [T, H, W, C]
    patches, grid = patchify_with_merge(normalize_for_vit(pixels), vit.config)
    with torch.no_grad():
        out = vit(patches, [grid])
    ref = vit_golden[f"{item}.output.{weights}"]
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_l2(out, ref) <= SINGLE_FORWARD_REL_L2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("task", VIT_TASKS)
def test_task_golden_from_input_file(golden_dir, task, dtype):
    """Media file -> (frame sampling) -> preprocessing -> tower = the reference's ``vit.output_0``."""
    assert vit_task_error(golden_dir, task, dtype) <= SINGLE_FORWARD_REL_L2


def test_packed_items_equal_separate_runs(golden_dir, vit_golden):
    vit = tower(golden_dir, "Lance_tiny", torch.float32)
    items = [patchify_with_merge(normalize_for_vit(vit_golden[f"{n}.pixels_uint8_cthw"].permute(1, 2, 3, 0)),
                                 vit.config) for n in ("image", "clip")]
    with torch.no_grad():
        separate = torch.cat([vit(p, [g]) for p, g in items])
        packed = vit(torch.cat([p for p, _ in items]), [g for _, g in items])
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)


def test_temporal_slices_do_not_attend_to_each_other(golden_dir, vit_golden):
    vit = tower(golden_dir, "Lance_tiny", torch.float32)
    pixels = vit_golden["clip.pixels_uint8_cthw"].permute(1, 2, 3, 0)
    patches, grid = patchify_with_merge(normalize_for_vit(pixels), vit.config)
    edited = pixels.clone()
    edited[2:] = 255 - edited[2:]  # change only the second temporal patch
    patches2, _ = patchify_with_merge(normalize_for_vit(edited), vit.config)
    with torch.no_grad():
        a, b = vit(patches, [grid]), vit(patches2, [grid])
    first = grid[1] * grid[2] // 4
    torch.testing.assert_close(a[:first], b[:first], rtol=0, atol=0)
    assert (a[first:] - b[first:]).abs().max() > 0.01


def test_window_order_clips_edge_windows(golden_dir):
    cfg = tower(golden_dir, "Lance_tiny", torch.float32).config
    # 18x12 patches -> 9x6 merge cells -> windows of 4x4 cells: 3 window rows (4, 4, 1) x 2 columns (4, 2)
    order, lengths = window_order([(1, 18, 12)], cfg)
    assert lengths == [4 * n for n in (16, 8, 16, 8, 4, 2)]
    assert sorted(order.tolist()) == list(range(54))
    assert order[:16].tolist() == [r * 6 + c for r in range(4) for c in range(4)]
    assert order[-2:].tolist() == [52, 53]
    # every temporal slice is windowed separately
    order2, lengths2 = window_order([(2, 18, 12)], cfg)
    assert lengths2 == lengths * 2 and order2[54:].tolist() == (order + 54).tolist()


def test_varlen_attention_matches_block_diagonal_reference():
    torch.manual_seed(0)
    lengths = [5, 3, 5, 1, 7]
    q, k, v = (torch.randn(sum(lengths), 2, 8) for _ in range(3))
    out = varlen_attention(q, k, v, PackedSegments(lengths))
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = segment[:, None] == segment[None, :]
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    torch.testing.assert_close(out, ref)


def test_bad_inputs_are_refused(golden_dir):
    vit = tower(golden_dir, "Lance_tiny", torch.float32)
    with pytest.raises(ValueError, match=r"patches must be \[16, 1176\]"):
        vit(torch.zeros(15, 1176), [(1, 4, 4)])
    with pytest.raises(ValueError, match="not divisible by the merge size 2"):
        vit(torch.zeros(12, 1176), [(1, 4, 3)])
    with pytest.raises(ValueError, match="segments cover 10"):
        varlen_attention(*(torch.zeros(9, 1, 4) for _ in range(3)), PackedSegments([4, 6]))
