"""Regenerate the README's performance table from the newest results file.

Only the text between the two markers is replaced (the markers are added under the "Performance"
heading when missing). Run: ``python bench/perf_table.py`` from the repository root.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tasks import FULL_TASKS, Reference

BENCH_DIR = Path(__file__).resolve().parent
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
RESULTS_NAME = re.compile(r"^[a-z0-9_]+-(\d{4}-\d{2}-\d{2})\.json$")
TASK_ORDER = ("t2i", "t2v", "image_edit", "x2t_image")


def newest_results(results_dir: Path) -> Path:
    files = [p for p in results_dir.glob("*.json") if RESULTS_NAME.match(p.name)]
    if not files:
        raise SystemExit(f"no results file (<gpu>-<date>.json) in {results_dir}; run bench/run_bench.py first")
    return max(files, key=lambda p: (RESULTS_NAME.match(p.name).group(1), p.stat().st_mtime))


def _reference(record: dict) -> Reference:
    for spec in FULL_TASKS:
        if spec.task == record["task"] and spec.frames == record["frames"]:
            return spec.reference
    return Reference()


def _mid(pair) -> float | None:
    return (pair[0] + pair[1]) / 2 if pair else None


def _show_ref(pair) -> str:
    if pair[0] == pair[1]:
        return f"{pair[0]:g}"
    return f"{pair[0]:g}–{pair[1]:g}"


def _cell(value: float | None, ref=None, higher_is_better: bool = False, digits: int = 2) -> str:
    """``value (ref R, k×)`` where k > 1 means better than the reference (faster, or more tokens/s)."""
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if ref:
        speed = value / _mid(ref) if higher_is_better else _mid(ref) / value
        text += f" (ref {_show_ref(ref)}, {speed:.2f}×)"
    return text


def _size(record: dict) -> str:
    if record["task"] == "t2v":
        return f"{record['height']}×{record['width']}×{record['frames']}"
    return f"{record['height']}×{record['width']}"


def _order(record: dict):
    task = TASK_ORDER.index(record["task"]) if record["task"] in TASK_ORDER else len(TASK_ORDER)
    return task, record["frames"]


WEIGHTS = {None: "bf16", "default": "bf16"}
BUDGET_TASKS = ("t2i", "t2v", "x2t_image", "image_edit")


def _weights(record: dict) -> str:
    return WEIGHTS.get(record.get("weight_dtype"), record.get("weight_dtype"))


def _mode(record: dict) -> str:
    return "standalone" if record["mode"] == "standalone" else "ComfyUI"


def _unconstrained(records: list[dict]) -> list[dict]:
    """The user-facing runs with the whole card: standalone bf16 and each ComfyUI weight dtype."""
    rows = [r for r in records if "error" not in r and r.get("variant") == "default" and r["vram_budget_gib"] is None]
    return sorted(rows, key=lambda r: (_order(r), r["mode"] != "standalone", _weights(r) != "bf16", _weights(r)))


def _peak(record: dict) -> str:
    if record["peak_alloc_gib"] is None:
        return "–"
    return f"{record['peak_alloc_gib']:.1f} / {record['peak_reserved_gib']:.1f}"


def main_table(records: list[dict]) -> list[str]:
    lines = [
        "| task | size | run | CFG step | plain step | prefill | VAE decode | end to end | "
        "peak alloc / reserved GiB | share of floor | x2t tokens/s | fp8 vs bf16 latent |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _unconstrained(records):
        ref = _reference(r)
        e2e = _cell(r["end_to_end_s"], ref.end_to_end_s, digits=1) + ("" if r.get("end_to_end_measured") else " *")
        peak = _peak(r)
        if ref.peak_alloc_gib and r["peak_alloc_gib"] is not None:
            peak += f" (ref {_show_ref(ref.peak_alloc_gib)})"
        share = r.get("floor_fraction_cfg") or r.get("floor_fraction_tokens")
        error = r.get("final_latent_rel_l2_vs_default")
        lines.append(" | ".join([
            f"| {r['task']}", _size(r), f"{_mode(r)} {_weights(r)}",
            _cell(r["step_cfg_s"], ref.step_cfg_s, digits=3), _cell(r["step_plain_s"], ref.step_plain_s, digits=3),
            _cell(r["prefill_s"], digits=3), _cell(r.get("vae_decode_s")), e2e, peak,
            "–" if share is None else f"{100 * share:.0f}%",
            _cell(r["tokens_per_s"], ref.tokens_per_s, higher_is_better=True, digits=1),
            ("–" if error is None else f"{100 * error:.1f}%") + " |",
        ]))
    return lines


def _ratio(value, base) -> str:
    return "–" if value is None or not base else f"{value:.3f} ({value / base:.2f}×)"


def budget_table(records: list[dict]) -> list[str]:
    """ComfyUI runs per VRAM budget, each step time next to its ratio to the whole-card run of the same
    process (step times vary by a few percent between processes and machines)."""
    lines = [
        "| task | size | weights | VRAM budget GiB | CFG step (× whole card) | plain step (×) | end to end | "
        "peak alloc / reserved GiB | expert weights on the GPU (und / gen) | x2t tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    budgeted = sorted((r for r in records if r["mode"] == "comfyui" and r.get("variant") == "default"
                       and r["vram_budget_gib"] is not None),
                      key=lambda r: (_order(r), _weights(r) != "bf16", _weights(r), -r["vram_budget_gib"]))
    for r in budgeted:
        if "error" in r:
            lines.append(f"| {r['task']} | {_size(r)} | {_weights(r)} | {r['vram_budget_gib']:g} | "
                         f"failed: {r['error'][:80]} | | | | | |")
            continue
        share = r.get("gpu_weight_share", {})
        placed = " / ".join(f"{100 * share[k]:.0f}%" for k in ("und", "gen") if k in share) or "–"
        e2e = _cell(r["end_to_end_s"], digits=1) + ("" if r.get("end_to_end_measured") else " *")
        lines.append(" | ".join([
            f"| {r['task']}", _size(r), _weights(r), f"{r['vram_budget_gib']:g}",
            _ratio(r["step_cfg_s"], r.get("whole_card_step_cfg_s")),
            _ratio(r["step_plain_s"], r.get("whole_card_step_plain_s")),
            e2e, _peak(r), placed, _cell(r["tokens_per_s"], digits=1) + " |",
        ]))
    return lines


def render(records: list[dict], source: str) -> str:
    # the code as users run it; probes of proposed changes stay in the results file and bench/NOTES.md
    ok = [r for r in records if "error" not in r and r.get("variant") == "default"]
    first = max(ok, key=lambda r: r.get("date", "")) if ok else {}
    lines = [
        f"Measured by `python bench/run_bench.py` on {first.get('gpu', '?')} ({first.get('date', '?')}, "
        f"torch {first.get('torch', '?')}), full-size model with random weights; source `bench/results/{source}`. "
        "Seconds unless marked; in brackets the reference (official code, H100, bf16) and the speed relative to "
        "it (>1× = faster). Runs: *standalone* = the library with every part resident; *ComfyUI* = the nodes "
        "inside ComfyUI with its memory manager placing the parts, the whole card available (the next table "
        "limits it); bf16 or fp8 (`weight_dtype fp8_e4m3fn_fast`: per-tensor scaled fp8 weights, fp8 matmuls). "
        "End to end = prefill + 30 steps + VAE decode (+ ViT and VAE encode for edits); * = extrapolated from "
        "timed steps; ComfyUI short tasks: the second of two queued runs. Share of floor = the CFG step's "
        "arithmetic at 790 TFLOP/s over its time (x2t: tokens/s over weight bytes at 3 TB/s). fp8 vs bf16 "
        "latent: relative L2 distance of the final latents from the same noise (30 steps; t2v 121: 5 steps).",
        "",
        *main_table(records),
        "",
        "Through ComfyUI with the GPU limited to a VRAM budget (PyTorch's allocator capped and ComfyUI told the "
        "card's size; the CUDA context, ~0.5 GiB on a real card, is outside the budget). Step times next to "
        "their ratio to the whole-card run of the same process (fp8_e4m3fn_fast at 16/12/10: of the previous "
        "process on the same machine); the expert shares are what ComfyUI had placed when sampling ended.",
        "",
        *budget_table(records),
    ]
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text(encoding="utf-8")
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        heading = re.search(r"^## Performance[^\n]*\n", text, re.M)
        if heading is None:
            text = text.rstrip("\n") + f"\n\n## Performance\n\n{block}\n"
        else:
            text = text[:heading.end()] + f"\n{block}\n" + text[heading.end():]
    readme.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="results file (default: the newest in bench/results)")
    parser.add_argument("--readme", type=Path, default=BENCH_DIR.parent / "README.md")
    args = parser.parse_args()
    results = args.results or newest_results(BENCH_DIR / "results")
    update_readme(args.readme, render(json.loads(results.read_text(encoding="utf-8")), results.name))
    print(f"updated {args.readme} from {results}")


if __name__ == "__main__":
    main()
