"""Numerical agreement on a GPU: bf16 vs fp32 of the same model and inputs, and attention kernel vs kernel.

Run from the repository root (the full-size section takes the Qwen2.5 vocabulary from ComfyUI):

    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_agreement.py          # both sections, CUDA
    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_agreement.py --tiny   # the same code, tiny model, CPU
    python bench/gpu_agreement.py --sections golden    # golden section only (CUDA, or the CPU without one)

Section ``golden`` (``golden_agreement``): the check the bounds below are calibrated for, on the golden
tiny checkpoints and stored inputs (``LANCE_GOLDEN_DIR``, default ``../shared/golden`` beside the
repository): bf16 against the reference's stored outputs and fp32 against bf16, for every golden task.

Section ``full``, on the full-size architecture with random weights (``random_weights``) and an fp32 copy
of them:

* precision: t2i step-0 velocities (both CFG branches and their combination) and the latent after a
  free-running 8-step schedule from the same noise; t2v step-0 velocities; x2t next-token logits after
  the prompt and the greedy answer. bf16 runs as users run it (default kernels, CUDA graphs); the fp32
  reference runs eagerly on SDPA's math kernel. Bounds: the model-core parity bounds of the golden
  tests (``tests/parity_measures.py``).
* attention: the t2i sampling again with SDPA restricted to each backend and with each optional
  package (CUDA graphs off, so the restriction applies at every call), and one direct kernel call at
  the attention shape of a long video's noise block, each against fp32.

Prints a table and writes ``bench/results/agreement[-<section>]-<gpu>-<date>.json`` (a temporary folder
on the CPU). Exit status 1 when a bounded row fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # the repository root: lance_model
sys.path.insert(1, str(BENCH_DIR.parent / "tests"))  # the parity tests' cases, measures and bounds

import torch  # noqa: E402

from lance_model.generation import encode_prompt, sample_latent  # noqa: E402
from lance_model.sampling import FlowSettings  # noqa: E402
from lance_model.sequence import latent_shape  # noqa: E402
from lance_model.tokenizer import LanceTokenizer  # noqa: E402
from lance_model.vision_tokens import encode_vision  # noqa: E402

from agreement_rows import Row, exit_status, render_table  # noqa: E402
from attention_agreement import fp32_math_reference, kernel_rows, sampling_backend_rows  # noqa: E402
from golden_agreement import golden_rows, golden_tasks, require_golden_dir  # noqa: E402
from parity_measures import COMBINED_REL_L2, SINGLE_FORWARD_REL_L2  # noqa: E402
from parity_measures import FINAL_LATENT_REL_L2 as FINAL_LATENT_REL_L2_BY_TASK  # noqa: E402
from models import FULL, TINY, ModelSizes, build_models  # noqa: E402
from precision_runs import (Step0, draw_noise, float32_decoder, float32_vit, rel_l2, step0_velocities,  # noqa: E402
                            x2t_answer)
from run_bench import default_tokenizer_dir, gpu_name  # noqa: E402
from runners import random_image  # noqa: E402
from tasks import PROMPT  # noqa: E402

# The model-core parity bounds (golden README §5): single forward passes, CFG-combined velocities and the
# free-running 8-step text-to-image latent.
FINAL_LATENT_REL_L2 = FINAL_LATENT_REL_L2_BY_TASK["t2i"]

SECTIONS = ("full", "golden")

RANDOM_WEIGHTS_NOTE = (
    "Random weights (bench/random_weights.py: N(0, 1/fan_in), residual outputs scaled by 1/sqrt(2*layers)) "
    "keep activations at a trained model's scale, but attention is nearly uniform and logits have no "
    "confident winner, so a trained model may be more or less sensitive to rounding than these numbers "
    "show; greedy-token agreement in particular meets many near-ties.")


@dataclass(frozen=True)
class AgreementSizes:
    models: ModelSizes
    image: tuple[int, int]               # t2i (height, width)
    clip: tuple[int, int, int]           # t2v (frames, height, width): step-0 velocities
    x2t_image: int                       # side of the random x2t image
    vit_side: int                        # its ViT bucket side
    kernel_clip: tuple[int, int, int]    # the clip whose noise-block attention the kernel check runs
    steps: int = 8
    new_tokens: int = 32


FULL_SIZES = AgreementSizes(FULL, (512, 512), (9, 256, 256), 448, 448, (121, 480, 848))
TINY_SIZES = AgreementSizes(TINY, (64, 64), (5, 64, 96), 64, 56, (9, 64, 96))


def _velocity_rows(label: str, ours: Step0, reference: Step0) -> list[Row]:
    return [Row(f"{label} step-0 v_cond, bf16 vs fp32", rel_l2(ours.cond, reference.cond), SINGLE_FORWARD_REL_L2),
            Row(f"{label} step-0 v_uncond, bf16 vs fp32", rel_l2(ours.uncond, reference.uncond),
                SINGLE_FORWARD_REL_L2),
            Row(f"{label} step-0 v_combined, bf16 vs fp32", rel_l2(ours.combined, reference.combined),
                COMBINED_REL_L2, note=f"guidance ||v_cond - v_uncond|| = "
                                      f"{rel_l2(reference.uncond, reference.cond) * 100:.2f}% of ||v_cond|| (fp32): "
                                      f"CFG scales its error")]


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


class Progress:
    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def done(self, section: str) -> None:
        self.seconds[section] = round(time.perf_counter() - self.start - sum(self.seconds.values()), 2)
        print(f"[{sum(self.seconds.values()):6.1f} s] {section}", flush=True)


def measure(sizes: AgreementSizes, tokenizer: LanceTokenizer, device: torch.device, seed: int,
            progress: Progress) -> list[Row]:
    models = build_models(sizes.models, tokenizer, device, with_vae=False, seed=seed)
    decoder, decoder32 = models.decoder, float32_decoder(models.decoder)
    vit32 = float32_vit(models.vit)
    progress.done("models (bf16 random weights and their fp32 copy)")
    settings = FlowSettings(steps=sizes.steps)
    image_label, clip_label = "t2i {}x{}".format(*sizes.image), "t2v {}x{}x{}f".format(*sizes.clip[1:], sizes.clip[0])
    shapes = {"t2i": latent_shape(1, *sizes.image), "t2v": latent_shape(*sizes.clip)}
    noise = {task: draw_noise(shape, device, seed) for task, shape in shapes.items()}
    rows: list[Row] = []

    conditions = {task: encode_prompt(decoder, tokenizer, task, PROMPT) for task in shapes}
    ours = {task: step0_velocities(decoder, conditions[task], noise[task], settings) for task in shapes}
    latent = sample_latent(decoder, conditions["t2i"], noise["t2i"], settings)
    with fp32_math_reference():
        conditions32 = {task: encode_prompt(decoder32, tokenizer, task, PROMPT) for task in shapes}
        reference = {task: step0_velocities(decoder32, conditions32[task], noise[task], settings) for task in shapes}
        latent32 = sample_latent(decoder32, conditions32["t2i"], noise["t2i"], settings)
    for task, label in (("t2i", image_label), ("t2v", clip_label)):
        rows += _velocity_rows(label, ours[task], reference[task])
    rows.append(Row(f"{image_label} {settings.steps}-step latent, bf16 vs fp32", rel_l2(latent, latent32),
                    FINAL_LATENT_REL_L2))
    progress.done("precision: t2i, t2v")

    rows += sampling_backend_rows(decoder, conditions["t2i"], noise["t2i"], settings, reference["t2i"].cond,
                                  latent32, (SINGLE_FORWARD_REL_L2, FINAL_LATENT_REL_L2), image_label)
    progress.done("attention backends: t2i sampling")

    image = random_image(sizes.x2t_image, seed)
    with fp32_math_reference():
        vision32 = encode_vision(vit32, image, sizes.vit_side)
    vision = encode_vision(models.vit, image, sizes.vit_side)
    # Both decoders read the fp32 tower's tokens, so the x2t rows measure the LLM alone.
    answer = x2t_answer(decoder, tokenizer, vision32, sizes.new_tokens)
    with fp32_math_reference():
        answer32 = x2t_answer(decoder32, tokenizer, vision32, sizes.new_tokens)
    same = sum(a == b for a, b in zip(answer.ids, answer32.ids))
    rows += [Row(f"x2t ViT output ({sizes.vit_side} px), bf16 vs fp32", rel_l2(vision.embeds, vision32.embeds),
                 SINGLE_FORWARD_REL_L2),
             Row("x2t logits after the prompt, bf16 vs fp32", rel_l2(answer.logits, answer32.logits),
                 SINGLE_FORWARD_REL_L2),
             Row(f"x2t greedy tokens equal to fp32's before the first difference (of {sizes.new_tokens})",
                 _first_difference(answer.ids, answer32.ids), None, unit="tokens",
                 note=f"{same} of {sizes.new_tokens} positions equal; not bounded (near-ties)")]
    progress.done("precision: x2t")
    del decoder32, vit32, conditions32

    queries = math.prod(latent_shape(*sizes.kernel_clip)) + 2  # the latent tokens and their two markers
    keys = queries + len(conditions["t2v"].cond_cache)         # after the t2v prompt's cached prefix
    frames, height, width = sizes.kernel_clip
    rows += kernel_rows(decoder.config, queries, keys, device, seed, SINGLE_FORWARD_REL_L2,
                        f"attention kernel t2v {width}x{height}x{frames}f (q {queries}, k/v {keys})")
    progress.done("attention kernels: direct call")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="full: the full-size random-weight model; golden: the golden tiny checkpoints and "
                             "inputs (default: both)")
    parser.add_argument("--tiny", action="store_true", help="everything on the CPU, the full-size section with "
                                                            "tiny model and sizes (smoke test)")
    parser.add_argument("--tokenizer", type=Path, help="folder with vocab.json + merges.txt")
    parser.add_argument("--results-dir", type=Path, help="default: bench/results (a temporary folder on the CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sections = [section for section in SECTIONS if section in args.sections]

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if "full" in sections and device.type != "cuda" and not args.tiny:
        raise SystemExit("the full-size check needs a CUDA GPU (about 45 GB of memory for the bf16 model and "
                         "its fp32 copy); run with --tiny for the CPU smoke test of the same code, or with "
                         "--sections golden")
    golden_dir = require_golden_dir() if "golden" in sections else None
    tasks = golden_tasks(golden_dir) if golden_dir is not None else []
    # The fp32 reference must be fp32 arithmetic: no TF32 in matmuls or in cuDNN's convolutions (the ViT's
    # patch embedding is one).
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    name, slug = gpu_name(device)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    results_dir = args.results_dir or (Path(tempfile.gettempdir()) / "lance-bench" if device.type == "cpu"
                                       else BENCH_DIR / "results")
    sizes = TINY_SIZES if args.tiny else FULL_SIZES

    progress = Progress()
    rows: list[Row] = []
    with torch.inference_mode():
        if "full" in sections:
            tokenizer = LanceTokenizer.from_dir(args.tokenizer or default_tokenizer_dir())
            rows += measure(sizes, tokenizer, device, args.seed, progress)
        if golden_dir is not None:
            rows += golden_rows(golden_dir, tasks, device, progress.done)
    print(render_table(rows))
    if "full" in sections:
        print(RANDOM_WEIGHTS_NOTE)

    report = {
        "gpu": name, "date": date, "sections": sections, "tiny": args.tiny, "seed": args.seed,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "settings": ("bf16: default kernels and CUDA graphs, as users run it; fp32 reference: eager, SDPA math, "
                     "fp32 matmul precision 'highest', no TF32 convolutions; attention-backend rows: bf16, CUDA "
                     "graphs off (LANCE_CUDA_GRAPHS=0), only the sampling passes restricted; the sampler keeps x in "
                     "bf16 between steps in every run"),
        "seconds": progress.seconds,
        "rows": [row.to_json() for row in rows],
    }
    if "full" in sections:
        report |= {"sizes": {k: v for k, v in asdict(sizes).items() if k != "models"}, "weights": RANDOM_WEIGHTS_NOTE}
    if golden_dir is not None:
        report["golden_tasks"] = tasks
    results_dir.mkdir(parents=True, exist_ok=True)
    prefix = "agreement" if sections == list(SECTIONS) else "-".join(["agreement", *sections])
    path = results_dir / f"{prefix}-{slug}-{date}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    status = exit_status(rows)
    print(f"wrote {path}; {'all bounded rows within their bounds' if status == 0 else 'SOME ROWS FAIL'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
