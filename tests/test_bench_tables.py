"""CPU checks of the benchmark's arithmetic and of the README tables it writes."""
from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

from lance_model.config import LANCE_3B_LLM  # noqa: E402

import floors  # noqa: E402
import perf_table  # noqa: E402


def test_dense_floor_counts_every_projection_of_both_attention_and_mlp():
    per_layer = 2048 * 2048 * 2 + 2 * 2048 * 256 + 3 * 2048 * 11008
    assert floors.layer_weights(LANCE_3B_LLM) == per_layer == 77_070_336
    assert floors.dense_flops(LANCE_3B_LLM, 1) == 2 * per_layer * 36  # 5.549 GFLOP per token
    assert floors.attention_flops(LANCE_3B_LLM, 10, 30) == 4 * 10 * 30 * 16 * 128 * 36
    assert floors.attention_flops(LANCE_3B_LLM, 10, 30, causal=True) == 2 * 10 * 30 * 16 * 128 * 36


def test_decode_floor_reads_und_layers_lm_head_and_cache_once():
    bytes_0 = floors.decode_bytes_per_token(LANCE_3B_LLM, 0)
    assert bytes_0 == 2 * (77_070_336 * 36 + 2048 * 151936)
    assert floors.decode_bytes_per_token(LANCE_3B_LLM, 100) - bytes_0 == 2 * 2 * 36 * 100 * 2 * 128
    assert round(floors.decode_floor_tokens_per_s(LANCE_3B_LLM, 0)) == round(3.0e12 / bytes_0)


def _record(**overrides):
    record = dict(task="t2i", frames=1, height=768, width=768, variant="default", gpu="GPU X", date="2026-01-01",
                  mode="standalone", vram_budget_gib=None,
                  torch="9.9", step_cfg_s=0.155, step_plain_s=0.31, prefill_s=0.1, vae_decode_s=0.05,
                  end_to_end_s=5.0, end_to_end_measured=True, peak_alloc_gib=17.0, peak_reserved_gib=18.0,
                  tokens_per_s=None, floor_fraction_cfg=0.25)
    record.update(overrides)
    return record


def test_table_rows_show_reference_and_speed_and_skip_probes():
    text = perf_table.render([_record(), _record(variant="fused-elementwise", step_cfg_s=0.001),
                              _record(task="t2v", frames=121, height=480, width=848, end_to_end_measured=False,
                                      end_to_end_s=95.5, peak_alloc_gib=21.24)], "x.json")
    rows = [line for line in text.splitlines() if line.startswith("| t2")]
    assert len(rows) == 2  # the probe variant is not a user figure
    assert "| standalone bf16 |" in rows[0]
    assert "0.155 (ref 0.29–0.33, 2.00×)" in rows[0]
    assert "0.310 (ref 0.13–0.18, 0.50×)" in rows[0]
    assert "95.5 (ref 191, 2.00×) *" in rows[1] and "21.2 / 18.0 (ref 22.5)" in rows[1]


def test_comfyui_rows_show_fp8_error_and_budget_ratios_to_the_whole_card():
    comfy = dict(mode="comfyui", weight_dtype="fp8_e4m3fn_fast")
    whole = _record(**comfy, final_latent_rel_l2_vs_default=0.0351)
    budgeted = _record(**comfy, vram_budget_gib=12.0, step_cfg_s=0.31, step_plain_s=0.62, peak_alloc_gib=9.44,
                       peak_reserved_gib=11.5, gpu_weight_share={"und": 1.0, "gen": 0.25},
                       whole_card_step_cfg_s=0.155, whole_card_step_plain_s=0.31)
    failed = _record(mode="comfyui", weight_dtype="default", vram_budget_gib=10.0, error="OutOfMemoryError: x")
    text = perf_table.render([_record(), whole, budgeted, failed], "x.json")
    rows = [line for line in text.splitlines() if line.startswith("| t2i")]
    assert len(rows) == 4
    assert "| ComfyUI fp8_e4m3fn_fast |" in rows[1] and rows[1].endswith("| 3.5% |")
    # budget rows: bf16 before fp8
    assert "| bf16 | 10 | failed: OutOfMemoryError: x |" in rows[2]
    assert "| fp8_e4m3fn_fast | 12 | 0.310 (2.00×) | 0.620 (2.00×) |" in rows[3]
    assert "| 9.4 / 11.5 | 100% / 25% |" in rows[3]


def test_readme_update_touches_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# X\n\n## Performance\n\nintro\n\n## License\n\nMIT\n", encoding="utf-8")
    perf_table.update_readme(readme, "table one")
    first = readme.read_text(encoding="utf-8")
    assert first.startswith("# X\n\n## Performance\n\n<!-- perf-table:start -->\ntable one\n<!-- perf-table:end -->\n")
    assert first.endswith("intro\n\n## License\n\nMIT\n")
    perf_table.update_readme(readme, "table two")
    assert readme.read_text(encoding="utf-8") == first.replace("table one", "table two")
