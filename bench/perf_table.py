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


def render(records: list[dict], source: str) -> str:
    # the code as users run it; probes of proposed changes stay in the results file and bench/NOTES.md
    ok = sorted((r for r in records if "error" not in r and r.get("variant") == "default"), key=_order)
    first = ok[0] if ok else {}
    lines = [
        f"Measured by `python bench/run_bench.py` on {first.get('gpu', '?')} ({first.get('date', '?')}, "
        f"torch {first.get('torch', '?')}), full-size model with random weights, bf16, standalone "
        f"(no ComfyUI memory manager); source `bench/results/{source}`. Seconds unless marked; "
        "in brackets the reference (official code, H100) and the speed relative to it (>1× = faster). "
        "End to end = prefill + 30 steps + VAE decode (+ ViT and VAE encode for edits); * = extrapolated "
        "from timed steps. Peak memory includes all weights resident (LLM, ViT and VAE: 14.3 GiB). Share of "
        "floor = the CFG step's arithmetic at 790 TFLOP/s over its time (x2t: tokens/s over weight bytes at "
        "3 TB/s).",
        "",
        "| task | size | CFG step | plain step | prefill | VAE decode | end to end | "
        "peak alloc / reserved GiB | share of floor | x2t tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        ref = _reference(r)
        e2e = _cell(r["end_to_end_s"], ref.end_to_end_s, digits=1) + ("" if r.get("end_to_end_measured") else " *")
        peak = "–" if r["peak_alloc_gib"] is None else f"{r['peak_alloc_gib']:.1f} / {r['peak_reserved_gib']:.1f}"
        if ref.peak_alloc_gib and r["peak_alloc_gib"] is not None:
            peak += f" (ref {_show_ref(ref.peak_alloc_gib)})"
        share = r.get("floor_fraction_cfg") or r.get("floor_fraction_tokens")
        lines.append(" | ".join([
            f"| {r['task']}", _size(r),
            _cell(r["step_cfg_s"], ref.step_cfg_s, digits=3), _cell(r["step_plain_s"], ref.step_plain_s, digits=3),
            _cell(r["prefill_s"], digits=3), _cell(r.get("vae_decode_s")), e2e, peak,
            "–" if share is None else f"{100 * share:.0f}%",
            _cell(r["tokens_per_s"], ref.tokens_per_s, higher_is_better=True, digits=1) + " |",
        ]))
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
