"""The benchmark's tasks through the node pack inside ComfyUI: the nodes' ``execute`` run in-process, and
ComfyUI's memory manager decides where the und / gen experts, the vision tower and the VAE live, with
the GPU limited to a VRAM budget the way a smaller card limits it.

A budget of B GiB caps PyTorch's allocator at B (``set_per_process_memory_fraction``) and makes
``torch.cuda.mem_get_info``, which ComfyUI plans with, report a card of B GiB with what the allocator
holds already taken. The CUDA context and library workspaces (~0.5–1 GiB on a real card) are outside
both, so a real card of B GB has a little less room than this budget.

The model is the full-size architecture with random weights (same seeds as the standalone runs), built
with the ComfyUI layer classes the Lance Checkpoint Loader uses for the chosen ``weight_dtype`` and
wrapped by the loader's own ``wrap_parts``; the VAE is ComfyUI's, made from a random Wan 2.2 state dict.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lance_model.comfy_lookup import import_comfy_module
from lance_model.mot import build_experts
from lance_model.parts import LanceParts
from lance_model.preprocess import RESOLUTION_PRESETS
from lance_model.sampling import FlowSettings
from lance_model.tokenizer import LanceTokenizer
from lance_model.vae import WAN22_DEC_DIM, WAN22_DIM, build_wan22_vae
from lance_model.vit import build_vision_tower

from clock import GIB, Clock, PeakMemory, StepMarks
from models import ModelSizes, never_stop
from random_weights import materialize_random_
from records import generation_record, understanding_record
from runners import Timing, cfg_flags, flow_settings, random_image
from tasks import EDIT_INSTRUCTION, PROMPT, QUESTION, TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import pack_loader  # noqa: E402

PACK_NAME = "lance_pack_bench"
# Ticks of one batch of decoded tokens arrive microseconds apart; batches are many milliseconds apart.
BATCH_GAP_S = 0.005


def dtype_label(weight_dtype: str) -> str:
    return "bf16" if weight_dtype == "default" else "fp8"  # every other loader option stores fp8 weights


class VramBudget:
    """Context manager: the GPU looks like a card of ``gib`` GiB to PyTorch's allocator and to ComfyUI."""

    def __init__(self, gib: float | None, device: torch.device):
        self.gib = gib
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device

    def __enter__(self):
        if self.gib is None or self.device.type != "cuda":
            return self
        budget = int(self.gib * GIB)
        total = torch.cuda.get_device_properties(self.device).total_memory
        self.real_info = torch.cuda.mem_get_info

        def budgeted_info(device=None):
            free, _ = self.real_info(device)
            return min(free, max(0, budget - torch.cuda.memory_reserved(device))), budget

        torch.cuda.mem_get_info = budgeted_info
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), self.device)
        return self

    def __exit__(self, *exc):
        if self.gib is not None and self.device.type == "cuda":
            torch.cuda.mem_get_info = self.real_info
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
        return False


@dataclass
class ComfySetup:
    """The pack's node classes, ComfyUI's VAE decode node and a VAE, for one process."""
    nodes: dict
    vae_decode: object
    vae: object
    memory: object          # comfy.model_management


def check_weight_dtypes(names: list[str]) -> None:
    known = pack_loader.pack_module(PACK_NAME, "nodes.model_handle").WEIGHT_DTYPES
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown weight dtype(s) {unknown}; Lance Checkpoint Loader offers {list(known)}")


def start_comfyui(sizes: ModelSizes, device: torch.device, seed: int = 3) -> ComfySetup:
    """Import ComfyUI and the pack in-process; build ComfyUI's VAE from a random Wan 2.2 state dict.
    ComfyUI's VAE loader always builds the released widths, so the VAE is full-size even for ``--tiny``."""
    nodes = pack_loader.node_classes(PACK_NAME)
    vae_module = build_wan22_vae(WAN22_DIM, WAN22_DEC_DIM, device="meta")
    materialize_random_(vae_module, device, seed)
    state_dict = {k: v.to("cpu") for k, v in vae_module.state_dict().items()}
    del vae_module
    vae = import_comfy_module("comfy.sd").VAE(sd=state_dict)
    return ComfySetup(nodes=nodes, vae_decode=import_comfy_module("nodes").VAEDecode(), vae=vae,
                      memory=import_comfy_module("comfy.model_management"))


def build_lance_model(sizes: ModelSizes, tokenizer: LanceTokenizer, weight_dtype: str, device: torch.device,
                      seed: int = 0):
    """The LANCE_MODEL the loader would return for a checkpoint with these random weights: built with the
    loader's layer classes, filled on ``device`` (fast) and handed to the offload device ComfyUI uses."""
    handle = pack_loader.pack_module(PACK_NAME, "nodes.model_handle")
    attention = pack_loader.pack_module(PACK_NAME, "nodes.attention_choice").resolve_attention("auto")
    offload = handle.comfy_runtime.offload_device()
    ops = handle.part_operations(weight_dtype)
    und, gen = build_experts(sizes.llm, ops=ops, device="meta", dtype=torch.bfloat16)
    vit = build_vision_tower(sizes.vision, ops=ops, device="meta", dtype=torch.bfloat16)
    for offset, (part, depth) in enumerate(((und, sizes.llm.num_hidden_layers), (gen, sizes.llm.num_hidden_layers),
                                            (vit, sizes.vision.depth))):
        materialize_random_(part, device, seed + offset, residual_layers=depth)
        part.to(offload)
    never_stop(und, tokenizer)
    parts = LanceParts(und=und, gen=gen, vit=vit, vit_source="random weights")
    return handle.wrap_parts(parts, name="Lance_3B (random weights)", variant="image", config=sizes.llm,
                             tokenizer=tokenizer, weight_dtype=weight_dtype, attention=attention)


def _image_preset(side: str, pixels: int) -> str:
    """The image resolution preset whose ``side`` ('vae' or 'vit') is closest to ``pixels``."""
    images = {name: r for name, r in RESOLUTION_PRESETS.items() if name.startswith("image_")}
    return min(images, key=lambda name: abs(getattr(images[name], side) - pixels))


def _image(side: int, seed: int) -> torch.Tensor:
    """A random picture as ComfyUI's IMAGE [1, H, W, 3] in [0, 1]."""
    return torch.from_numpy(random_image(side, seed)).float().div(255).unsqueeze(0)


class ProgressTicks:
    """ComfyUI's progress hook while a node runs: CUDA events per tick (sampler steps) and host times
    (captioner tokens, which reach the host in batches)."""

    def __init__(self, device: torch.device):
        self.utils = import_comfy_module("comfy.utils")
        self.marks = StepMarks(device)
        self.host_times: list[float] = []

    def __enter__(self):
        self.saved = self.utils.PROGRESS_BAR_HOOK
        self.utils.PROGRESS_BAR_HOOK = self._tick
        self.marks.mark()
        return self

    def _tick(self, value, total, preview=None, node_id=None):
        self.marks.mark()
        self.host_times.append(time.perf_counter())

    def __exit__(self, *exc):
        self.utils.PROGRESS_BAR_HOOK = self.saved
        return False


def _gpu_weight_share(model) -> dict:
    """How much of each part's weights ComfyUI left on the GPU (1.0 = fully loaded)."""
    share = {}
    for name, patcher in model.parts.items():
        loaded, size = getattr(patcher, "loaded_size", None), getattr(patcher, "model_size", None)
        if loaded is not None and size is not None and size():
            share[name] = round(loaded() / size(), 3)
    return share


def run_generation_nodes(setup: ComfySetup, model, spec: TaskSpec, settings: FlowSettings,
                         seed: int = 0) -> tuple[Timing, dict]:
    """Text/edit encode -> Lance Sampler -> VAE Decode, as a workflow would chain them."""
    device = model.device
    clock, memory = Clock(device), PeakMemory(device)
    memory.reset()
    timing = Timing(step_is_cfg=cfg_flags(settings))
    start = clock.now()
    if spec.task == "image_edit":
        cond, latent = setup.nodes["LanceEditEncode"].execute(
            model=model, vae=setup.vae, image=_image(spec.height, seed), instruction=EDIT_INSTRUCTION, kind="image",
            fps=12.0, resolution=_image_preset("vae", spec.vae_side)).args
    else:
        task = "text_to_image" if spec.task == "t2i" else "text_to_video"
        cond = setup.nodes["LanceTextEncode"].execute(model=model, prompt=PROMPT, task=task).args[0]
        latent = setup.nodes["LanceEmptyLatent"].execute(width=spec.width, height=spec.height,
                                                         frames=spec.frames).args[0]
    sample_start = clock.now()
    timing.prefill_s = sample_start - start
    timing.cond_prefix, timing.uncond_prefix = len(cond.cond_cache), len(cond.uncond_cache)
    with ProgressTicks(device) as ticks:
        generated = setup.nodes["LanceSampler"].execute(
            model=model, cond=cond, latent=latent, seed=seed, steps=settings.steps, cfg=settings.cfg_scale,
            shift=settings.shift, cfg_start=settings.cfg_interval[0], cfg_end=settings.cfg_interval[1],
            renorm=settings.renorm, noise="comfy").args[0]
    decode_start = clock.now()
    timing.sample_s = decode_start - sample_start
    timing.step_s = ticks.marks.durations()
    placement = _gpu_weight_share(model)
    setup.vae_decode.decode(setup.vae, generated)
    timing.vae_decode_s = clock.now() - decode_start
    timing.finite = bool(torch.isfinite(generated["samples"]).all())
    timing.output = generated["samples"].float().cpu()
    timing.peak_alloc_gib, timing.peak_reserved_gib = memory.peaks_gib()
    # The sampler node's own work outside the steps (placing the experts, caches to the device).
    extras = {"sampler_overhead_s": timing.sample_s - sum(timing.step_s), "gpu_weight_share": placement}
    return timing, extras


def run_captioner_node(setup: ComfySetup, model, spec: TaskSpec, seed: int = 0) -> tuple[Timing, dict]:
    """Lance Captioner on a random image. Tokens reach the host in batches, so tokens/s is taken between
    the first and the last batch; everything before the first batch counts as vision + prefill."""
    device = model.device
    clock, memory = Clock(device), PeakMemory(device)
    memory.reset()
    timing = Timing()
    start = clock.now()
    with ProgressTicks(device) as ticks:
        setup.nodes["LanceCaptioner"].execute(
            model=model, image=_image(spec.height, seed), question=QUESTION, kind="image", fps=12.0,
            resolution=_image_preset("vit", spec.vit_side), instruction="", max_new_tokens=spec.new_tokens,
            sampling="off", temperature=0.7, top_p=0.9, seed=seed)
    end = clock.now()
    times = ticks.host_times
    tokens = len(times)
    first_batch = sum(1 for t in times if t - times[0] < BATCH_GAP_S) if times else 0
    rate = (tokens - first_batch) / (times[-1] - times[first_batch - 1]) if tokens > first_batch else None
    timing.tokens = tokens
    timing.text_decode_s = tokens / rate if rate else end - start
    timing.prefill_s = end - start - timing.text_decode_s
    timing.peak_alloc_gib, timing.peak_reserved_gib = memory.peaks_gib()
    return timing, {"gpu_weight_share": _gpu_weight_share(model)}


def run_task_nodes(setup: ComfySetup, models: dict, spec: TaskSpec, common: dict,
                   full_schedule: bool) -> tuple[dict, Timing]:
    """A timed run of ``spec`` through the nodes; ``models`` maps variant ('image'/'video') to a handle.
    Short tasks run twice: the record is the second run (the parts already where ComfyUI keeps them
    between queued prompts), the first run's end-to-end time, with the weights' transfer, beside it."""
    if spec.task == "t2v":
        return _run_once(setup, models, spec, common, full_schedule)
    first, _ = _run_once(setup, models, spec, common, full_schedule)
    record, timing = _run_once(setup, models, spec, common, full_schedule)
    record["first_run_end_to_end_s"] = first["end_to_end_s"]
    return record, timing


def _run_once(setup: ComfySetup, models: dict, spec: TaskSpec, common: dict,
              full_schedule: bool) -> tuple[dict, Timing]:
    cfg = models["image"].config
    if spec.task.startswith("x2t"):
        timing, extras = run_captioner_node(setup, models["image"], spec)
        return {**understanding_record(spec, timing, cfg, common), **extras}, timing
    if full_schedule:
        spec = dataclasses.replace(spec, timed_cfg_steps=0, timed_plain_steps=0)
    model = models["video" if spec.task == "t2v" else "image"]
    timing, extras = run_generation_nodes(setup, model, spec, flow_settings(spec, warmup=False))
    record = {**generation_record(spec, timing, cfg, common), **extras}
    if spec.extrapolated:  # the node's placement work happens once per run, not per step
        record["end_to_end_s"] += extras["sampler_overhead_s"]
    return record, timing


def warm_up(setup: ComfySetup, models: dict, specs: list[TaskSpec]) -> None:
    """Compile the fused kernels and run every stage once, on one latent frame for videos."""
    for spec in specs:
        if spec.task.startswith("x2t"):
            run_captioner_node(setup, models["image"], spec)
        else:
            small = dataclasses.replace(spec, frames=1) if spec.task == "t2v" else spec
            run_generation_nodes(setup, models["video" if spec.task == "t2v" else "image"], small,
                                 flow_settings(spec, warmup=True))


def unload_everything(setup: ComfySetup) -> None:
    """A fresh start for the next budget, as a new process on a smaller card would have: nothing
    placed, and no CUDA graphs kept from the previous runs."""
    pack_loader.pack_module(PACK_NAME, "lance_model.sampling").REUSED_PASSES.clear()
    setup.memory.unload_all_models()
    setup.memory.soft_empty_cache()
