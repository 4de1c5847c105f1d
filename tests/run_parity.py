"""End-to-end parity of ``python -m lance_model run`` with the golden reference runs.

Each golden task is run through the command with the reference's inputs and settings (prompt, request,
sizes, 8 steps, shift 3.5, CFG 4.0, the recorded target noise and VAE posterior noise, video frames as
the reference's reader returned them) and its outputs are measured against the stored reference tensors.
``measure_task`` returns one row per quantity; ``tests/test_run_parity.py`` asserts them and
``python -m tests.parity_report`` prints them as one table.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lance_model.cli import build_parser
from lance_model.commands.run import ANSWER_FILE, RESULT_FILE, build_request, execute, load_models
from lance_model.config import LLMConfig
from lance_model.kv_plan import plan_generation, understanding_prefill
from lance_model.pipeline import check_request, resolution_of
from lance_model.positions import understanding_positions
from lance_model.prompts import ENDOFTEXT
from lance_model.tokenizer import LanceTokenizer
from lance_model.understanding import prefill_question
from lance_model.vision_tokens import encode_vision
from parity_measures import FINAL_LATENT_REL_L2, TIE_ULPS, golden_media, logit_gap_ulps

GENERATION_TASKS = ("t2i", "t2v", "i2v", "image_edit", "video_edit")
UNDERSTANDING_TASKS = ("x2t_image", "x2t_video")
TASKS = GENERATION_TASKS + UNDERSTANDING_TASKS

DECODED_MEAN_ABS_LEVELS = 2.0
# Free-running greedy answers follow the reference until our bf16 logits meet a near-tie (the reference's
# own fp32 run flips x2t_image after 36 tokens): the first 4 tokens must agree (their logits are checked
# by parity_measures.teacher_forced_text) and a difference must be a tie within TIE_ULPS bf16 steps.
MIN_MATCHING_IDS = 4


@dataclass(frozen=True)
class Row:
    task: str
    quantity: str
    measured: str
    bound: str
    ok: bool


def _golden(golden_dir: Path, task: str):
    folder = golden_dir / task
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    request = json.loads((folder / "inputs" / "request.json").read_text(encoding="utf-8"))
    return folder, settings, next(iter(request.values())), load_file(str(folder / "tensors.safetensors"))


def _frame_folder(inputs: Path, work: Path) -> Path:
    """The frames the reference's video reader returned (first read), alone in a folder."""
    folder = work / "frames"
    folder.mkdir(exist_ok=True)
    for frame in sorted(inputs.glob("decoded_read0_frame*.png")):
        shutil.copy(frame, folder / frame.name)
    return folder


def golden_argv(golden_dir: Path, task: str, work: Path) -> list[str]:
    """The ``python -m lance_model`` arguments that replay the golden run of ``task``; writes the
    recorded noise files into ``work``."""
    folder, settings, entry, tensors = _golden(golden_dir, task)
    args = settings["reference_cli_args"]
    ckpt = golden_dir / "ckpt"
    argv = ["run", "--task", task, "--checkpoint", str(golden_dir / settings["checkpoint"]),
            "--vit", str(ckpt / "Qwen2.5-VL-ViT"), "--vae", str(ckpt / "Wan2.2_VAE.pth"),
            "--resolution", args["resolution"], "--out", str(work / "out")]
    if task in ("i2v", "image_edit", "x2t_image"):
        argv += ["--image", str(golden_media(golden_dir, task))]
    if task in ("video_edit", "x2t_video"):
        argv += ["--video", str(_frame_folder(folder / "inputs", work)), "--fps", str(settings["video_read"]["fps"][0])]
    if task in UNDERSTANDING_TASKS:
        instruction, question, _answer = entry["interleave_array"][1]
        return argv + ["--instruction", instruction, "--prompt", question,
                       "--max-new-tokens", str(tensors["x2t.generated_ids"].numel())]

    argv += ["--prompt", (folder / "inputs" / "prompt.txt").read_text(encoding="utf-8"),
             "--steps", str(args["validation_num_timesteps"]), "--shift", str(args["validation_timestep_shift"]),
             "--cfg", str(args["cfg_text_scale"]), "--cfg-interval", *map(str, settings["cfg_interval"])]
    if task in ("t2i", "t2v"):
        argv += ["--height", str(args["video_height"]), "--width", str(args["video_width"])]
    if task in ("t2v", "i2v"):
        argv += ["--frames", str(args["num_frames"])]
    save_file({"noise": tensors["gen.noise_randn"].contiguous()}, str(work / "noise.safetensors"))
    argv += ["--noise", str(work / "noise.safetensors")]
    if "vae_enc.eps_0" in tensors:
        save_file({"eps": tensors["vae_enc.eps_0"].contiguous()}, str(work / "eps.safetensors"))
        argv += ["--posterior-eps", str(work / "eps.safetensors")]
    return argv


def _exact(task: str, quantity: str, actual, expected) -> Row:
    if torch.is_tensor(expected):
        same = actual.shape == expected.shape and torch.equal(actual, expected)
    else:
        same = actual == expected
    return Row(task, quantity, "equal" if same else "DIFFERENT", "exact", same)


def _first_difference(actual: list[int], expected: list[int]) -> int:
    """Length of the common prefix (len of both when equal)."""
    for index, (a, b) in enumerate(zip(actual, expected)):
        if a != b:
            return index
    return min(len(actual), len(expected))


def measure_task(golden_dir: Path, task: str, work: Path) -> list[Row]:
    """Run the command on the golden inputs of ``task`` and compare its outputs with the reference."""
    argv = golden_argv(golden_dir, task, work)
    sample = execute(build_parser().parse_args(argv)).sample
    written = load_file(str(work / "out" / RESULT_FILE))
    _, settings, _, tensors = _golden(golden_dir, task)
    ckpt = golden_dir / settings["checkpoint"]
    cfg = LLMConfig.from_file(ckpt / "llm_config.json")
    if task in UNDERSTANDING_TASKS:
        answer = (work / "out" / ANSWER_FILE).read_text(encoding="utf-8")
        return _understanding_rows(task, argv, sample, cfg, LanceTokenizer.from_dir(ckpt), written, answer,
                                   settings, tensors)
    return _generation_rows(task, sample, cfg, written, settings, tensors)


def _generation_rows(task, sample, cfg, written, settings, tensors) -> list[Row]:
    plan = plan_generation(sample, cfg)
    targets = sorted(k for k in tensors if k.startswith("gen.final_latent_"))
    reference_latent = tensors[targets[-1]].float()  # an edit's source comes first
    latent = written["final_latent"].float()
    rel = float((latent - reference_latent).norm() / reference_latent.norm()) \
        if latent.shape == reference_latent.shape else float("inf")
    frames, reference_frames = written["decoded_uint8_thwc"], tensors["out.decoded_uint8_thwc"]
    mae = float((frames.float() - reference_frames.float()).abs().mean()) \
        if frames.shape == reference_frames.shape else float("inf")
    return [
        _exact(task, "token ids", sample.token_ids, tensors["seq.packed_text_ids"]),
        _exact(task, "split layout", list(zip(sample.attn_modes, sample.split_lens)),
               list(zip(settings["attn_modes"], settings["split_lens"]))),
        _exact(task, "positions (cond)", plan.cond_positions, tensors["pos.cond"]),
        _exact(task, "positions (uncond)", plan.uncond_positions, tensors["pos.uncond"]),
        Row(task, "final latent rel-L2", f"{rel:.4%}", f"<= {FINAL_LATENT_REL_L2[task]:.0%}",
            rel <= FINAL_LATENT_REL_L2[task]),
        Row(task, "decoded mean |Δ| (uint8)", f"{mae:.3f}", f"<= {DECODED_MEAN_ABS_LEVELS}",
            mae <= DECODED_MEAN_ABS_LEVELS),
    ]


def _understanding_rows(task, argv, sample, cfg, tokenizer, written, answer, settings, tensors) -> list[Row]:
    prompt_calls = []
    for call in settings["forward_inference_calls"]:
        if call["q_len"] == 1 and prompt_calls:
            break  # decoding starts
        prompt_calls.append(("causal" if call["causal"] else "full", call["q_len"]))
    prefill = [("causal" if s.causal else "full", s.length) for s in understanding_prefill(sample)]
    pad = tokenizer.token_id(ENDOFTEXT)
    reference_ids = tensors["x2t.generated_ids"].tolist()
    ids = written["generated_ids"].tolist()
    matching = _first_difference(ids, reference_ids)
    rows = [
        _exact(task, "prompt token ids", sample.token_ids, tensors["seq.packed_text_ids"][:len(sample)]),
        _exact(task, "prefill split layout", prefill, prompt_calls),
        _exact(task, "positions (prompt + pads)",
               understanding_positions(sample, cfg, pad, len(reference_ids)), tensors["pos.prompt_plus_256_pads"]),
        Row(task, "generated ids equal to the reference", f"{matching}/{len(reference_ids)}",
            f">= {MIN_MATCHING_IDS}", matching >= MIN_MATCHING_IDS and len(ids) <= len(reference_ids)),
    ]
    if matching == len(reference_ids):
        rows.append(_exact(task, "answer text", answer.rstrip("\n"), settings["x2t_answer"]))
    else:
        gap = _tie_gap_ulps(argv, reference_ids, matching)
        rows.append(Row(task, f"logit gap at first difference ({matching})", f"{gap:.1f} bf16 ulp",
                        f"<= {TIE_ULPS} ulp", gap <= TIE_ULPS))
    return rows


def _tie_gap_ulps(argv: list[str], reference_ids: list[int], step: int) -> float:
    """Teacher-force the reference's answer through the command's own models and inputs and return by how
    many bf16 steps our best logit beats the reference's token at ``step``."""
    args = build_parser().parse_args(argv)
    request = build_request(args)
    models = load_models(args)
    vision = encode_vision(models.vit, check_request(request), resolution_of(request).vit)
    state = prefill_question(models.decoder, models.tokenizer, request.task, request.prompt, vision,
                             instruction=request.instruction, max_new_tokens=len(reference_ids))
    last = len(state.sample) - 1
    token = int(state.sample.token_ids[last])
    for k in range(step + 1):
        logits = models.decoder.decode_step(torch.tensor([token]), state.positions[:, last + k:last + k + 1],
                                            state.cache)[0].float()
        token = reference_ids[k]
    return logit_gap_ulps(logits, len(models.tokenizer), reference_ids[step])
