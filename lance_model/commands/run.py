"""``run``: one Lance task from the command line, with the reference's defaults.

Usage::

    python -m lance_model run --task {t2i,t2v,i2v,image_edit,video_edit,x2t_image,x2t_video}
        --checkpoint MODEL_DIR [--vit VIT_DIR] [--vae VAE_FILE] --prompt TEXT [--instruction TEXT]
        [--image PNG] [--video MP4_OR_FOLDER_OF_PNG_FRAMES [--fps N]]
        [--height H --width W --frames F] [--resolution PRESET]
        [--steps N --shift S --cfg C --cfg-interval LO HI --renorm {global,channel,none}] [--seed K]
        [--noise FILE] [--posterior-eps FILE] [--max-new-tokens N --temperature T --top-p P]
        [--device DEVICE] --out OUT_DIR

``--prompt`` is the caption (t2i, t2v, i2v), the edit instruction or the question (x2t); ``--instruction``
the x2t system prompt (default: the reference's example for images / videos). Inputs: ``--image`` for
i2v, image_edit and x2t_image; ``--video`` for video_edit and x2t_video — a video file is sampled like
the reference (12 fps over at most 6 s, 4k+1 frames), a folder of frame images (name order) is taken as
the sampled frames themselves (``--fps`` is then only recorded). Sizes: t2i needs ``--height --width``
(multiples of 16, at most 1024), t2v also ``--frames`` (4k+1, at most 121); i2v takes its size from the
image's bucket and ``--frames`` from the command line; edits keep the source's size; ``--resolution``
picks the bucket preset (default image_768res for image inputs, video_480p for videos).
Defaults: 30 steps, shift 3.5, CFG 4.0 inside t ∈ (0.4, 1.0], global renorm, seed 42, greedy x2t with
at most 256 new tokens (``--temperature`` > 0 samples, drawing from ``--seed``). ``--vit`` defaults to ``MODEL_DIR/../Qwen2.5-VL-ViT`` (used by the image
checkpoint; the video checkpoint bundles its own), ``--vae`` to ``MODEL_DIR/../Wan2.2_VAE.pth``.
Noise: ComfyUI's CPU draw from ``--seed`` for the target latent; ``--noise`` FILE (safetensors, tensor
``noise`` [N_vae, 48], token-major, an edit's source rows first) replaces it, and ``--posterior-eps`` FILE
(tensor ``eps`` [48, t, h, w]; i2v uses its first latent frame) fixes the VAE posterior noise of an i2v /
edit condition (otherwise drawn from a CPU generator seeded with ``--seed``).

Outputs in OUT_DIR, each written atomically: ``result.safetensors`` with ``final_latent`` [t, h, w, 48]
(the generated target) and ``decoded_uint8_thwc`` [F, H, W, 3], or ``generated_ids`` for x2t;
``frame_NNNN.png`` per decoded frame; ``answer.txt`` for x2t. The safetensors metadata ``lance_run`` holds
the options as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..checkpoint import VAE_FILE_NAME, VIT_FOLDER_NAME, CheckpointError, LanceCheckpoint, VaeCheckpoint
from ..media import read_frame_folder, read_sampled_video
from ..mot import MoTDecoder
from ..parts import build_parts
from ..pipeline import (DEFAULT_SEED, IMAGE_INPUT_TASKS, TASKS, VAE_TASKS, VIDEO_INPUT_TASKS, VIT_TASKS,
                        LanceModels, RequestError, TaskRequest, TaskResult, check_request, run_task)
from ..preprocess import RESOLUTION_PRESETS
from ..sampling import RENORM_MODES, FlowSettings, TextSettings
from ..sequence import UNDERSTANDING_TASKS
from ..vae import load_wan22_vae

RESULT_FILE = "result.safetensors"
ANSWER_FILE = "answer.txt"
SIZE_TASKS = ("t2i", "t2v")
FRAMES_TASKS = ("t2i", "t2v", "i2v")  # t2i accepts only 1


def register(subparsers) -> None:
    defaults_flow, defaults_text = FlowSettings(), TextSettings()
    parser = subparsers.add_parser(
        "run", help="run one Lance task (generation, edit or x2t) on files",
        description="Run one Lance task with the reference's defaults and write OUT_DIR/result.safetensors "
                    "(final_latent + decoded_uint8_thwc, or generated_ids), frame_NNNN.png / answer.txt.")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--checkpoint", required=True, metavar="MODEL_DIR", help="Lance_3B/ or Lance_3B_Video/")
    parser.add_argument("--vit", metavar="VIT_DIR", help=f"default MODEL_DIR/../{VIT_FOLDER_NAME}")
    parser.add_argument("--vae", metavar="VAE_FILE", help=f"default MODEL_DIR/../{VAE_FILE_NAME}")
    parser.add_argument("--prompt", required=True, help="caption, edit instruction or question")
    parser.add_argument("--instruction", help="x2t system prompt (default: the reference's example)")
    parser.add_argument("--image", metavar="PNG", help="input image of i2v, image_edit, x2t_image")
    parser.add_argument("--video", metavar="MP4_OR_FOLDER", help="input clip of video_edit, x2t_video")
    parser.add_argument("--fps", type=float, help="frame rate of a frame folder (recorded only)")
    parser.add_argument("--height", type=int, help="t2i/t2v output height (multiple of 16)")
    parser.add_argument("--width", type=int, help="t2i/t2v output width (multiple of 16)")
    parser.add_argument("--frames", type=int, help="t2v/i2v output frames (4k+1)")
    parser.add_argument("--resolution", choices=sorted(RESOLUTION_PRESETS), help="bucket preset of media inputs")
    parser.add_argument("--steps", type=int, default=defaults_flow.steps)
    parser.add_argument("--shift", type=float, default=defaults_flow.shift)
    parser.add_argument("--cfg", type=float, default=defaults_flow.cfg_scale, help="text CFG scale")
    parser.add_argument("--cfg-interval", type=float, nargs=2, metavar=("LO", "HI"),
                        default=defaults_flow.cfg_interval, help="CFG runs while LO < t <= HI")
    parser.add_argument("--renorm", choices=RENORM_MODES, default=defaults_flow.renorm, help="CFG renormalisation")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--noise", metavar="FILE", help="safetensors with tensor 'noise' [N_vae, 48]")
    parser.add_argument("--posterior-eps", metavar="FILE", help="safetensors with tensor 'eps' [48, t, h, w]")
    parser.add_argument("--max-new-tokens", type=int, default=defaults_text.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults_text.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults_text.top_p)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, metavar="OUT_DIR")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        execute(args)
    except (ValueError, FileNotFoundError) as e:  # invalid inputs; the message names the fix
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def execute(args) -> TaskResult:
    """Parse the inputs, load the parts the task needs, run it and write OUT_DIR."""
    request = build_request(args)
    check_request(request)  # before loading gigabytes of weights
    result = run_task(load_models(args), request)
    write_outputs(Path(args.out), result, _provenance(args))
    return result


# ----------------------------------------------------------------------------------------------------
# Inputs


def _tensor_from(path: str, name: str, option: str) -> torch.Tensor:
    if not Path(path).is_file():
        raise RequestError(f"{option}: file not found: {path}")
    tensors = load_file(path)
    if name not in tensors:
        raise RequestError(f"{option}: {path} has no tensor '{name}' (it holds {sorted(tensors)})")
    return tensors[name]


def _read_media(args):
    task = args.task
    given = {"--image": args.image, "--video": args.video}
    wanted = "--image" if task in IMAGE_INPUT_TASKS else "--video" if task in VIDEO_INPUT_TASKS else None
    for option, value in given.items():
        if value is not None and option != wanted:
            raise RequestError(f"{task} takes no {option}" + (f"; give {wanted}" if wanted else ""))
    if wanted is None:
        return None
    path = given[wanted]
    if path is None:
        raise RequestError(f"{task} needs {wanted}")
    if wanted == "--image":
        if not Path(path).is_file():
            raise RequestError(f"--image: file not found: {path}")
        with Image.open(path) as image:
            return image.copy()
    clip = read_frame_folder(path, args.fps) if Path(path).is_dir() else read_sampled_video(path)
    return clip.frames


def _ignored_options(args) -> list[str]:
    """Options the task does not use: its size comes from its input, a video file carries its own rate."""
    ignored = []
    if args.task not in SIZE_TASKS:
        ignored += [f"--{name}" for name in ("height", "width") if getattr(args, name) is not None]
    if args.task not in FRAMES_TASKS and args.frames is not None:
        ignored.append("--frames")
    if args.fps is not None and not (args.video and Path(args.video).is_dir()):
        ignored.append("--fps")
    return ignored


def build_request(args) -> TaskRequest:
    ignored = _ignored_options(args)
    if ignored:
        print(f"note: {args.task} ignores {' '.join(ignored)} (sizes come from its input; a video file "
              f"carries its own frame rate)", file=sys.stderr)
    sized = args.task in SIZE_TASKS
    return TaskRequest(
        task=args.task, prompt=args.prompt, media=_read_media(args), instruction=args.instruction,
        height=args.height if sized else None, width=args.width if sized else None,
        frames=args.frames if args.task in FRAMES_TASKS else None, resolution=args.resolution,
        flow=FlowSettings(steps=args.steps, shift=args.shift, cfg_scale=args.cfg,
                          cfg_interval=tuple(args.cfg_interval), renorm=args.renorm),
        text=TextSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p),
        seed=args.seed,
        noise=_tensor_from(args.noise, "noise", "--noise") if args.noise else None,
        posterior_eps=_tensor_from(args.posterior_eps, "eps", "--posterior-eps") if args.posterior_eps else None)


def load_models(args) -> LanceModels:
    """The parts the task needs, in bf16 on ``args.device`` (the weights stay memory-mapped on a CPU)."""
    checkpoint = Path(args.checkpoint)
    ckpt = LanceCheckpoint.open(checkpoint)
    vit_dir = None
    if args.task in VIT_TASKS and ckpt.vit is None:
        vit_dir = Path(args.vit) if args.vit else checkpoint.parent / VIT_FOLDER_NAME
        if not vit_dir.is_dir():
            raise CheckpointError(f"{args.task} needs the vision tower, which {checkpoint} does not bundle: "
                                  f"{vit_dir} not found; pass --vit pointing to the {VIT_FOLDER_NAME} folder")
    parts = build_parts(ckpt, vit_dir, device=args.device, dtype=torch.bfloat16)
    vae = None
    if args.task in VAE_TASKS:
        vae_file = Path(args.vae) if args.vae else checkpoint.parent / VAE_FILE_NAME
        vae = load_wan22_vae(VaeCheckpoint.open(vae_file).state_dict, args.device, torch.bfloat16)
    gen = None if args.task in UNDERSTANDING_TASKS else parts.gen
    return LanceModels(decoder=MoTDecoder(parts.und, gen), tokenizer=ckpt.tokenizer, vit=parts.vit, vae=vae)


# ----------------------------------------------------------------------------------------------------
# Outputs


def _provenance(args) -> dict[str, str]:
    keys = ("task", "prompt", "instruction", "resolution", "steps", "shift", "cfg", "cfg_interval", "renorm", "seed",
            "noise", "posterior_eps", "max_new_tokens", "temperature", "top_p", "fps")
    return {"lance_run": json.dumps({k: getattr(args, k) for k in keys}, ensure_ascii=False)}


def _atomic(path: Path, write) -> None:
    """``write(temp_path)`` then rename over ``path``: readers never see a partial file."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def write_outputs(out_dir: Path, result: TaskResult, metadata: dict[str, str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    if result.answer is not None:
        tensors["generated_ids"] = torch.tensor(result.answer.ids, dtype=torch.int64)
        _atomic(out_dir / ANSWER_FILE, lambda p: Path(p).write_text(result.answer.text + "\n", encoding="utf-8"))
    if result.final_latent is not None:
        tensors["final_latent"] = result.final_latent.cpu().contiguous()
        tensors["decoded_uint8_thwc"] = result.frames.cpu().contiguous()
        for index, frame in enumerate(tensors["decoded_uint8_thwc"].numpy()):
            _atomic(out_dir / f"frame_{index:04d}.png", lambda p, f=frame: Image.fromarray(f).save(p, format="PNG"))
    _atomic(out_dir / RESULT_FILE, lambda p: save_file(tensors, p, metadata=metadata))
