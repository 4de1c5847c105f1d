"""Flow-matching sampler of the generation tasks (spec §5) and the x2t text decoding loop (spec §6).

Flow convention: ``x_t = (1 − t)·x₀ + t·ε`` with t = 1 pure noise; the model predicts ``v = ε − x₀``
and Euler integrates ``x ← x − v·(t_i − t_{i+1})`` on a shifted linear schedule. ``x`` stays in
bf16 for the whole loop, like the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .cuda_graphs import GraphedCall
from .greedy_decode import greedy_decode
from .kv_cache import KVCache
from .mot import MoTDecoder

# Noise blocks up to this many tokens (every image up to 1024², short clips) are replayed as CUDA
# graphs: their passes are bound by kernel launches. Longer blocks keep the GPU busy on their own.
GRAPH_MAX_TOKENS = 4608
# Blocks from this many tokens (videos) fuse their element-wise chains even without a graph: their
# kernels outlast the compiled calls' host time.
FUSE_MIN_TOKENS = 8192

RENORM_MODES = ("global", "channel", "none")


@dataclass(frozen=True)
class FlowSettings:
    steps: int = 30
    shift: float = 3.5
    cfg_scale: float = 4.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    renorm: str = "global"
    renorm_min: float = 0.0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if self.renorm not in RENORM_MODES:
            raise ValueError(f"renorm must be one of {RENORM_MODES}, got {self.renorm!r}")


def flow_timesteps(steps: int, shift: float) -> torch.Tensor:
    """``t_0 .. t_steps`` (fp32, t_0 = 1, t_steps = 0): ``t = s·u / (1 + (s − 1)·u)`` on ``linspace(1, 0)``."""
    u = _linspace_one_to_zero(steps + 1)
    return shift * u / (1 + (shift - 1) * u)


def _linspace_one_to_zero(count: int) -> torch.Tensor:
    """fp32 ``linspace(1, 0, count)`` bit-exactly as the reference run's CUDA kernel computes it: the
    first half counts up from 1, the second down from 0, each value a fused multiply-add (one rounding,
    reproduced here in float64). torch's CPU kernel rounds differently, depending on the CPU's vector
    width, which can move a step across the CFG window's edge."""
    index = torch.arange(count, dtype=torch.float64)
    step = (torch.tensor(-1.0) / torch.tensor(float(count - 1))).double()  # the kernel's fp32 step
    return torch.where(index < count // 2, 1 + step * index, 0 - step * (count - 1 - index)).float()


def cfg_active(t: torch.Tensor, interval: tuple[float, float]) -> bool:
    """Guidance runs while ``lo < t ≤ hi`` (compared in fp32, as the reference compares its fp32 t)."""
    lo, hi = interval
    t = t.float()
    return bool((t > torch.tensor(lo, dtype=torch.float32)) & (t <= torch.tensor(hi, dtype=torch.float32)))


def combine_cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, renorm: str = "global",
                renorm_min: float = 0.0) -> torch.Tensor:
    """``v_u + s·(v_c − v_u)``, then rescaled so its norm does not exceed ``‖v_c‖``.

    Norms are fp32 (CUDA autocast computes norms in fp32). A global scale is a 0-dim tensor and keeps
    the bf16 velocity bf16; per-token ("channel") scales promote the result to fp32, as in the reference.
    """
    v = v_uncond + scale * (v_cond - v_uncond)
    if renorm == "none":
        return v
    if renorm == "global":
        norm_c, norm_v = torch.linalg.vector_norm(v_cond, dtype=torch.float32), \
            torch.linalg.vector_norm(v, dtype=torch.float32)
    elif renorm == "channel":
        norm_c = torch.linalg.vector_norm(v_cond, dim=-1, keepdim=True, dtype=torch.float32)
        norm_v = torch.linalg.vector_norm(v, dim=-1, keepdim=True, dtype=torch.float32)
    else:
        raise ValueError(f"renorm must be one of {RENORM_MODES}, got {renorm!r}")
    return v * (norm_c / (norm_v + 1e-8)).clamp(min=renorm_min, max=1.0)


def euler_step(x: torch.Tensor, rows: torch.Tensor, v: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """``x[rows] −= v[rows]·dt`` (``dt`` a 0-dim fp32 tensor); returns a new tensor in ``x``'s dtype."""
    x = x.clone()
    x[rows] = (x[rows] - v[rows].to(x.device) * dt.to(x.device)).to(x.dtype)
    return x


@dataclass
class NoiseBlock:
    """The noisy target block queried at every step: ``[start marker, latent tokens…, end marker]``.

    ``marker_embeds`` ``[2, D]`` are the embeddings of the two markers; ``pids`` ``[N]`` the latent
    position-table rows of the N latent tokens (see ``latent.latent_pos_ids``).
    """

    marker_embeds: torch.Tensor
    pids: torch.Tensor

    def __len__(self) -> int:
        return self.pids.numel() + 2


@dataclass
class Branch:
    """One CFG branch: its prefix cache and the MRoPE positions ``[3, len(block)]`` of the noise block."""

    cache: KVCache
    positions: torch.Tensor


class BranchPass:
    """The velocity pass of one CFG branch, its constants (routing, MRoPE tables, position rows,
    markers) computed once per sampling run; ``graphed``: replayed as a CUDA graph after its first call."""

    def __init__(self, decoder: MoTDecoder, block: NoiseBlock, branch: Branch, pos: torch.Tensor,
                 graphed: bool = False):
        self.decoder, self.cache, self.pos = decoder, branch.cache, pos
        self.gen_rows = torch.arange(1, len(block) - 1)
        self.layout = decoder.prepare_pass(branch.positions, self.gen_rows,
                                           fused=graphed or len(block) >= FUSE_MIN_TOKENS)
        self.markers = block.marker_embeds.to(decoder.und_device, decoder.dtype)
        self.graph = GraphedCall(self._velocity, decoder.und_device) if graphed else None

    def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        latents = self.decoder.embed_latents(x, t, pos=self.pos)
        embeds = torch.cat([self.markers[:1], latents, self.markers[1:]])
        return self.decoder.velocity(embeds, None, self.cache, self.gen_rows, layout=self.layout)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return self._velocity(x, t)
        return self.graph(x, t).clone()  # the graph's output is overwritten by its next replay


def _content(t: torch.Tensor) -> tuple:
    return tuple(t.shape), str(t.dtype), t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()


def _pass_key(decoder: MoTDecoder, block: NoiseBlock, branch: Branch) -> tuple:
    """Everything a graphed pass bakes in: the weights' addresses (ComfyUI moving a part changes them),
    the decoder's settings, the prefix cache's shapes and the block's constants."""
    weights = tuple(t.data_ptr() for m in (decoder.und, decoder.gen) for t in (*m.parameters(), *m.buffers()))
    cache = tuple((tuple(t.shape), t.dtype, t.device) for t in branch.cache.keys + branch.cache.values)
    return (id(decoder.und), id(decoder.gen), weights, decoder.dtype, decoder.und_device, decoder.attention.name,
            cache, _content(branch.positions), _content(block.pids), _content(block.marker_embeds))


class ReusedPasses:
    """Graphed branch passes kept from one sampling run to the next.

    A graphed pass costs an eager warm-up and a capture on its first two calls (~0.25 s each for a
    768² image, as much as 7 steps). Queued prompts that differ only in the seed, or in words that keep
    the token count, have passes of the same shapes and constants: their graphs are replayed with the
    new prefix caches copied into the captured ones. One pass per branch is kept: its graph's memory
    pool (~1 GiB for a 768² image) and a copy of its prefix cache, memory that ComfyUI's manager does not
    see. So passes are kept only while the device has plenty left (``keep_if_room``), and a run that
    cannot use them frees them."""

    # Keep the passes only when at least this much of the device stays free after sampling: the larger
    # of a fixed floor and a share of the device (what the VAE decode and other models may still need).
    KEEP_MIN_FREE_BYTES = 4 * 2**30
    KEEP_MIN_FREE_SHARE = 0.25

    def __init__(self):
        self.entries: dict[str, tuple[tuple, BranchPass]] = {}

    def get(self, name: str, decoder: MoTDecoder, block: NoiseBlock, branch: Branch,
            pos: torch.Tensor) -> BranchPass:
        key = _pass_key(decoder, block, branch)
        kept = self.entries.get(name)
        if kept is not None and kept[0] == key:
            kept[1].cache.copy_from(branch.cache)
            return kept[1]
        self._release(name)  # the old graph's memory goes before a new one is captured
        built = BranchPass(decoder, block, Branch(branch.cache.clone(), branch.positions), pos, graphed=True)
        self.entries[name] = (key, built)
        return built

    def clear(self) -> None:
        for name in list(self.entries):
            self._release(name)

    def _release(self, name: str) -> None:
        kept = self.entries.pop(name, None)
        if kept is not None and kept[1].graph is not None:
            kept[1].graph.release()
            kept[1].graph = None  # breaks the pass <-> graphed-method cycle: its cache copy goes at once

    def keep_if_room(self, device: torch.device) -> None:
        """Free the kept passes unless ``device`` has room to spare (free as ComfyUI counts it: the
        driver's free memory plus what PyTorch holds unused)."""
        if not self.entries or device.type != "cuda":
            return
        free, total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if free < max(self.KEEP_MIN_FREE_BYTES, self.KEEP_MIN_FREE_SHARE * total):
            self.clear()


REUSED_PASSES = ReusedPasses()


def block_velocity(decoder: MoTDecoder, block: NoiseBlock, x: torch.Tensor, t: torch.Tensor,
                   branch: Branch) -> torch.Tensor:
    """Velocity ``[N, C]`` of every latent token of the block for latents ``x`` at per-token times ``t``."""
    return BranchPass(decoder, block, branch, decoder.latent_positions(block.pids))(x, t)


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def sample_flow(decoder: MoTDecoder, block: NoiseBlock, x: torch.Tensor, updated_rows: torch.Tensor,
                cond: Branch, uncond: Branch | None, settings: FlowSettings,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Integrate the block's latents ``x`` ``[N, C]`` from t = 1 to 0; only ``updated_rows`` move (i2v's
    clean first frame keeps t = 0). ``callback(step, x, v)`` runs after each Euler update.

    The loop never waits for the GPU: per-step times and the moving rows live on the device, and each
    branch's pass is set up once (and replayed as a CUDA graph for small blocks, see ``GRAPH_MAX_TOKENS``,
    kept for the next run with the same shapes, ``ReusedPasses``; fused element-wise kernels run in graphs
    and long blocks, ``FUSE_MIN_TOKENS``).
    """
    if x.shape[0] != block.pids.numel():
        raise ValueError(f"x has {x.shape[0]} latent tokens but the noise block has {block.pids.numel()}")
    timesteps = flow_timesteps(settings.steps, settings.shift)
    x = x.to(torch.bfloat16)
    moving = torch.zeros(x.shape[0], dtype=torch.float32)
    moving[updated_rows] = 1.0
    fixed = None if bool(moving.all()) else (moving == 0).to(x.device)
    moving, step_t = moving.to(x.device), timesteps.to(x.device)
    step_dt = (timesteps[:-1] - timesteps[1:]).to(x.device)
    graphed = len(block) <= GRAPH_MAX_TOKENS and decoder.graphs_usable(with_generation=True)
    if not graphed:
        REUSED_PASSES.clear()
    pos = decoder.latent_positions(block.pids)

    def branch_pass(name: str, branch: Branch) -> BranchPass:
        if graphed:
            return REUSED_PASSES.get(name, decoder, block, branch, pos)
        return BranchPass(decoder, block, branch, pos)

    try:
        passes = {"cond": branch_pass("cond", cond)}
        for step in range(settings.steps):
            t_rows = moving * step_t[step]
            v = passes["cond"](x, t_rows)
            if uncond is not None and settings.cfg_scale > 1.0 and cfg_active(timesteps[step], settings.cfg_interval):
                if "uncond" not in passes:
                    passes["uncond"] = branch_pass("uncond", uncond)
                v_uncond = passes["uncond"](x, t_rows)
                v = combine_cfg(v, v_uncond, settings.cfg_scale, settings.renorm, settings.renorm_min)
            x = _euler(x, v, step_dt[step], fixed)
            if callback is not None:
                callback(step, x, v)
    finally:
        if graphed:
            REUSED_PASSES.keep_if_room(decoder.und_device)
    return x


def _euler(x: torch.Tensor, v: torch.Tensor, dt: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
    """``euler_step`` over all rows but the ``fixed`` ones (a device mask), without indexing by host rows."""
    moved = (x - v.to(x.device) * dt).to(x.dtype)
    return moved if fixed is None else torch.where(fixed[:, None], x, moved)


@dataclass(frozen=True)
class TextSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 → greedy (the reference default)
    top_p: float = 1.0


def pick_token(logits: torch.Tensor, vocab_limit: int, settings: TextSettings,
               generator: torch.Generator | None = None) -> int:
    """Next token from one row of logits; ids ≥ ``vocab_limit`` (embedding rows without a token) are
    never chosen."""
    logits = logits.clone()
    logits[vocab_limit:] = float("-inf")
    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        outside = sorted_probs.cumsum(0) - sorted_probs >= settings.top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def generate_text(decoder: MoTDecoder, cache: KVCache, first_token: int, positions: torch.Tensor,
                  vocab_limit: int, stop_token: int, settings: TextSettings = TextSettings(),
                  generator: torch.Generator | None = None,
                  on_token: Callable[[int], None] | None = None) -> list[int]:
    """Decode after a prefilled ``cache``: feed ``first_token`` (the prompt's last token) and each new
    token at consecutive columns of ``positions`` ``[3, ≥ max_new_tokens]``. Returns the new ids,
    without the stop token."""
    if positions.shape[-1] < settings.max_new_tokens:
        raise ValueError(f"positions cover {positions.shape[-1]} steps, fewer than max_new_tokens "
                         f"{settings.max_new_tokens}")
    if settings.temperature <= 0 and isinstance(decoder, MoTDecoder):
        return greedy_decode(decoder, cache, first_token, positions[:, :settings.max_new_tokens], vocab_limit,
                             stop_token, on_token)
    token, out = first_token, []
    for step in range(settings.max_new_tokens):
        logits = decoder.decode_step(torch.tensor([token]), positions[:, step:step + 1], cache)
        token = pick_token(logits[0], vocab_limit, settings, generator)
        if token == stop_token:
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out
