"""Speed and memory of every Lance task on one GPU, full-size model with random weights.

Run from the repository root (ComfyUI is needed for the Wan VAE and the Qwen2.5 vocabulary):

    COMFYUI_PATH=/path/to/ComfyUI python bench/run_bench.py            # all tasks, both modes
    python bench/run_bench.py --tiny                                    # CPU smoke test of the same code

Two modes: ``standalone`` times the library's steps with every part resident on the GPU (bf16);
``comfyui`` runs the same tasks through the node pack inside ComfyUI, its memory manager placing the
parts, once unconstrained and once per VRAM budget, for each loader ``weight_dtype`` (``comfy_mode.py``).

Writes ``bench/results/<gpu>-<date>.json`` (a list of records, one per task, size, mode, budget and
setting; a rerun on the same day replaces matching records) and, with ``--profile``, a kernel breakdown.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # the repository root: lance_model

import torch  # noqa: E402

from lance_model.tokenizer import LanceTokenizer  # noqa: E402

import comfy_mode  # noqa: E402
import perf_table  # noqa: E402
from kernel_profile import profile_kernels  # noqa: E402
from models import FULL, TINY, build_models  # noqa: E402
from precision_runs import rel_l2  # noqa: E402
from records import generation_record, understanding_record  # noqa: E402
from runners import Timing, flow_settings, run_generation, run_understanding, short_sampling_call  # noqa: E402
from tasks import FULL_TASKS, TINY_TASKS, TaskSpec, select  # noqa: E402
from variants import VARIANTS, variant_setting  # noqa: E402

RECORD_KEY = ("task", "frames", "height", "width", "mode", "variant", "vram_budget_gib", "dtype", "weight_dtype")
REPEATED = ("end_to_end_s", "step_cfg_s", "step_plain_s", "prefill_s", "decode_s", "tokens_per_s")


def gpu_name(device: torch.device) -> tuple[str, str]:
    """(full name, short lower-case slug for file names)."""
    if device.type != "cuda":
        return "cpu", "cpu"
    name = torch.cuda.get_device_name(device)
    model = re.search(r"\b([A-Z]+\d{2,4}[A-Z]?)\b", name)
    return name, (model.group(1) if model else re.sub(r"[^A-Za-z0-9]+", "_", name)).lower()


def default_tokenizer_dir() -> Path:
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI folder: the benchmark uses its Wan VAE and the Qwen2.5 "
                         "vocabulary it ships (comfy/text_encoders/qwen25_tokenizer), or pass --tokenizer")
    return Path(root) / "comfy" / "text_encoders" / "qwen25_tokenizer"


def run_task(models, spec: TaskSpec, common: dict, repeat: int) -> tuple[dict, Timing]:
    """Warm up, time ``repeat`` runs, keep the run with the median end-to-end time (all runs' main
    figures are listed under ``repeats``)."""
    cfg = models.decoder.config
    if spec.task.startswith("x2t"):
        run_understanding(models, spec, spec.new_tokens)  # a shorter warm-up left the first timed run 2x slow
        runs = [run_understanding(models, spec, spec.new_tokens) for _ in range(repeat)]
        records = [understanding_record(spec, t, cfg, common) for t in runs]
    else:
        # The warm-up runs every stage once (prefill, kernels, VAE decode); a video warms up on its first
        # latent frame only, since its timed short run discards its own first (cold) step anyway.
        warm_spec = dataclasses.replace(spec, frames=1) if spec.extrapolated else spec
        run_generation(models, warm_spec, flow_settings(spec, warmup=True))
        runs = [run_generation(models, spec, flow_settings(spec, warmup=False)) for _ in range(repeat)]
        records = [generation_record(spec, t, cfg, common) for t in runs]
    order = sorted(range(repeat), key=lambda i: records[i]["end_to_end_s"])
    median = order[(repeat - 1) // 2]
    record = records[median]
    record["repeats"] = [{k: r.get(k) for k in REPEATED} for r in records]
    return record, runs[median]


def agreement(output: torch.Tensor, reference: torch.Tensor) -> dict:
    """How close a variant's output is to the first variant's (same seed and inputs)."""
    if output.is_floating_point():
        return {"rel_l2_vs_first_variant": rel_l2(output, reference)}
    n = min(len(output), len(reference))
    same = int((output[:n] == reference[:n]).cumprod(0).sum()) if n else 0
    return {"tokens_equal_to_first_variant": same}


def merge_save(path: Path, records: list[dict]) -> None:
    """Replace same-key records of an earlier run of the day, keep the others."""
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    keys = {tuple(r.get(k) for k in RECORD_KEY) for r in records}
    kept = [r for r in old if tuple(r.get(k) for k in RECORD_KEY) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept + records, indent=1) + "\n", encoding="utf-8")


def summary(record: dict) -> str:
    setting = record["variant"] if record["mode"] == "standalone" else \
        f"{record['weight_dtype']}@{record['vram_budget_gib'] or 'all'}"
    head = f"{record['task']:<10} {record.get('frames', '')!s:>4} {setting:<17}"
    if "error" in record:
        return f"{head} ERROR {record['error']}"

    def f(key, digits=3):
        value = record.get(key)
        return "-" if value is None else f"{value:.{digits}f}"
    spread = "/".join(f"{r['end_to_end_s']:.1f}" for r in record.get("repeats", []))
    return (f"{head} cfg {f('step_cfg_s')} plain {f('step_plain_s')} prefill {f('prefill_s')} dec {f('decode_s')} "
            f"e2e {f('end_to_end_s', 1)}{'' if record['end_to_end_measured'] else '*'} [{spread}] peak "
            f"{f('peak_alloc_gib', 1)}/{f('peak_reserved_gib', 1)} tok/s {f('tokens_per_s', 1)} "
            f"floor {f('floor_fraction_cfg', 2)} {record.get('rel_l2_vs_first_variant', record.get('tokens_equal_to_first_variant', ''))}")


def parse_budget(text: str) -> float | None:
    return None if text.lower() in ("none", "all") else float(text)


def run_standalone(args, specs, device, tokenizer, base, save) -> list[dict]:
    models = build_models(TINY if args.tiny else FULL, tokenizer, device, with_vae=not args.no_vae)
    print(f"standalone: models materialised in {models.load_s:.1f} s, "
          f"{(torch.cuda.memory_allocated() / 2**30) if device.type == 'cuda' else 0:.2f} GiB", flush=True)
    base = {**base, "mode": "standalone", "vram_budget_gib": None, "dtype": "bf16", "load_s": models.load_s}
    records, first_outputs = [], {}
    for variant in args.variants:
        common = {**base, "variant": variant}
        with variant_setting(variant), torch.inference_mode():
            for spec in specs:
                try:
                    record, timing = run_task(models, spec, common, args.repeat)
                    if spec.key in first_outputs:
                        record.update(agreement(timing.output, first_outputs[spec.key]))
                    else:
                        first_outputs[spec.key] = timing.output
                except Exception as error:  # keep the other tasks' numbers
                    traceback.print_exc()
                    record = error_record(common, spec, error)
                records.append(record)
                save(record)
    if args.profile and device.type == "cuda":
        profile(args, models, device)
    return records


def run_comfyui(args, specs, device, tokenizer, base, save) -> list[dict]:
    """Every task through the nodes for each weight dtype: unconstrained first (with the full 30-step
    schedule for ``--full-schedule`` videos, whose final latents the fp8 runs are compared with), then
    under each VRAM budget; budget records carry the whole-card step times of the same process."""
    sizes = TINY if args.tiny else FULL
    comfy_mode.check_weight_dtypes(args.weight_dtypes)
    setup = comfy_mode.start_comfyui(sizes, device)
    records, reference, whole_card = [], {}, {}
    for weight_dtype in args.weight_dtypes:
        start = time.perf_counter()
        image_model = comfy_mode.build_lance_model(sizes, tokenizer, weight_dtype, device)
        models = {"image": image_model, "video": dataclasses.replace(image_model, variant="video")}
        print(f"comfyui {weight_dtype}: model built in {time.perf_counter() - start:.1f} s", flush=True)
        with torch.inference_mode():
            comfy_mode.warm_up(setup, models, specs)
            for budget in args.budgets:
                comfy_mode.unload_everything(setup)
                common = {**base, "mode": "comfyui", "variant": "default", "vram_budget_gib": budget,
                          "dtype": comfy_mode.dtype_label(weight_dtype), "weight_dtype": weight_dtype}
                with comfy_mode.VramBudget(budget, device):
                    for spec in specs:
                        full = budget is None and spec.key in args.full_schedule
                        try:
                            record, timing = comfy_mode.run_task_nodes(setup, models, spec, common, full)
                            if budget is None:
                                whole_card[(weight_dtype, spec.key)] = record
                            elif (weight_dtype, spec.key) in whole_card:  # same process, same machine state
                                base_record = whole_card[(weight_dtype, spec.key)]
                                record["whole_card_step_cfg_s"] = base_record["step_cfg_s"]
                                record["whole_card_step_plain_s"] = base_record["step_plain_s"]
                            if budget is None and timing.output is not None and timing.output.is_floating_point():
                                first = reference.setdefault(spec.key, (weight_dtype, timing.output))
                                if first[0] != weight_dtype:
                                    record[f"final_latent_rel_l2_vs_{first[0]}"] = rel_l2(timing.output, first[1])
                        except Exception as error:  # out of memory under a budget is a result too
                            traceback.print_exc()
                            record = error_record(common, spec, error)
                            comfy_mode.unload_everything(setup)
                        records.append(record)
                        save(record)
        comfy_mode.unload_everything(setup)
        del image_model, models
        gc.collect()
    return records


def error_record(common: dict, spec: TaskSpec, error: Exception) -> dict:
    return {**common, "task": spec.task, "frames": spec.frames, "height": spec.height, "width": spec.width,
            "error": f"{type(error).__name__}: {str(error)[:300]}"}


def profile(args, models, device) -> None:
    profile_path = args.results_dir / f"profile-{args.slug}-{args.date}.json"
    profiles = json.loads(profile_path.read_text()) if profile_path.exists() else {}
    for spec in select(TINY_TASKS if args.tiny else FULL_TASKS, args.profile):
        for variant in args.variants:
            with variant_setting(variant), torch.inference_mode():
                call = short_sampling_call(models, spec)
                call()  # warm-up
                profiles[f"{spec.key}/{variant}"] = result = profile_kernels(call)
            print(f"profile {spec.key}/{variant}: busy {result['gpu_busy_fraction']:.2f} launches "
                  f"{result['launches']} { {k: round(v, 4) for k, v in result['by_category_s'].items()} }",
                  flush=True)
            profile_path.write_text(json.dumps(profiles, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and sizes (CPU smoke test)")
    parser.add_argument("--tasks", nargs="*", help="task keys (t2i x2t_image image_edit t2v_49 t2v_121)")
    parser.add_argument("--variants", nargs="+", default=["default"], choices=VARIANTS,
                        help="settings to measure (see variants.py); outputs are compared with the first")
    parser.add_argument("--repeat", type=int, default=1,
                        help="standalone: timed runs per task (the median is kept); the ComfyUI mode runs short "
                             "tasks twice and keeps the second (parts already placed, as between queued prompts)")
    parser.add_argument("--profile", nargs="*", default=[], help="task keys to kernel-profile (CUDA only)")
    parser.add_argument("--no-vae", action="store_true", help="standalone: skip the Wan VAE decode")
    parser.add_argument("--log-level", default="WARNING",
                        help="Python logging level; INFO shows ComfyUI's placement decisions (loaded partially ...)")
    parser.add_argument("--modes", nargs="+", default=["standalone", "comfyui"], choices=["standalone", "comfyui"])
    parser.add_argument("--budgets", nargs="+", type=parse_budget, default=[None, 24, 16, 12, 10],
                        help="comfyui mode: VRAM budgets in GiB ('none' = the whole card)")
    parser.add_argument("--weight-dtypes", nargs="+", default=["default", "fp8_e4m3fn_fast"],
                        help="comfyui mode: Lance Checkpoint Loader weight_dtype options to measure")
    parser.add_argument("--full-schedule", nargs="*", default=["t2v_49"],
                        help="comfyui mode: videos timed over all steps (not extrapolated) when unconstrained")
    parser.add_argument("--tokenizer", type=Path, help="folder with vocab.json + merges.txt")
    parser.add_argument("--results-dir", type=Path,
                        help="default: bench/results (a temporary folder with --tiny, so smoke runs never reach the README)")
    parser.add_argument("--copy-to", type=Path, help="also copy the results file(s) here")
    parser.add_argument("--readme", action="store_true", help="regenerate the README table afterwards")
    args = parser.parse_args()

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(message)s", force=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name, args.slug = gpu_name(device)
    args.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if args.results_dir is None:
        args.results_dir = Path(tempfile.gettempdir()) / "lance-bench" if args.tiny else BENCH_DIR / "results"
    results_path = args.results_dir / f"{args.slug}-{args.date}.json"
    tokenizer = LanceTokenizer.from_dir(args.tokenizer or default_tokenizer_dir())
    specs = select(TINY_TASKS if args.tiny else FULL_TASKS, args.tasks)
    base = {"gpu": name, "date": args.date, "torch": torch.__version__, "cuda": torch.version.cuda,
            "tiny": args.tiny}

    def save(record: dict) -> None:
        merge_save(results_path, [record])
        print(summary(record), flush=True)

    records = []
    if "standalone" in args.modes:
        records += run_standalone(args, specs, device, tokenizer, base, save)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "comfyui" in args.modes:
        records += run_comfyui(args, specs, device, tokenizer, base, save)
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for path in args.results_dir.glob(f"*{args.slug}-{args.date}.json"):
            (args.copy_to / path.name).write_bytes(path.read_bytes())
    if args.readme:
        perf_table.update_readme(BENCH_DIR.parent / "README.md",
                                 perf_table.render(json.loads(results_path.read_text()), results_path.name))
    print("\n".join(summary(r) for r in records))


if __name__ == "__main__":
    main()
