"""Input checks shared by the nodes. Each returns an error message (naming the problem, the allowed
values and the fix) or None, so it serves both ``validate_inputs`` (errors before the prompt runs) and
checks inside ``execute`` on values that only exist at run time.

ComfyUI skips its own min/max checks for every input that ``validate_inputs`` names, so the widget
checks here cover the range as well.
"""
from __future__ import annotations

from ..lance_model.config import LATENT
from ..lance_model.positions import VIT_TEMPORAL_BAND
from ..lance_model.prompts import VISUAL_PLACEHOLDER, render_chat

PIXELS_PER_LATENT = LATENT.spatial_factor
MAX_SIDE = LATENT.max_latent_size * LATENT.spatial_factor
MAX_FRAMES = LATENT.max_num_frames


def side_error(name: str, value: int | None) -> str | None:
    if value is None:  # linked from another node: checked when it runs
        return None
    if value % PIXELS_PER_LATENT or not PIXELS_PER_LATENT <= value <= MAX_SIDE:
        nearest = min(max(round(value / PIXELS_PER_LATENT) * PIXELS_PER_LATENT, PIXELS_PER_LATENT), MAX_SIDE)
        return (f"{name} must be a multiple of {PIXELS_PER_LATENT} between {PIXELS_PER_LATENT} and {MAX_SIDE} px "
                f"(Lance's latent is {PIXELS_PER_LATENT}x smaller and at most {LATENT.max_latent_size} wide), got "
                f"{value}; use {nearest}")
    return None


def frames_error(value: int | None, minimum: int = 1) -> str | None:
    if value is None:
        return None
    step = LATENT.temporal_factor
    if (value - 1) % step or not minimum <= value <= MAX_FRAMES:
        lower = max(minimum, min(MAX_FRAMES, (value - 1) // step * step + 1))
        return (f"frames must be {step}k+1 between {minimum} and {MAX_FRAMES} (1 = one image; the Wan 2.2 VAE "
                f"packs {step} frames per latent frame after the first), got {value}; use {lower}")
    return None


def latent_size_error(t: int, h: int, w: int) -> str | None:
    """A latent [.., t, h, w] that Lance cannot place: its position table has ``max_latent_size`` rows per
    side (beyond them the reference reuses positions and the picture repeats) and videos end at
    ``max_latent_frames``."""
    if max(h, w) > LATENT.max_latent_size:
        return (f"the latent is {w}x{h} ({w * PIXELS_PER_LATENT}x{h * PIXELS_PER_LATENT} px) but Lance places at "
                f"most {LATENT.max_latent_size} latent pixels per side ({MAX_SIDE} px); larger sizes would reuse "
                f"positions and repeat content; make the latent at most {MAX_SIDE}x{MAX_SIDE} px")
    if t > LATENT.max_latent_frames:
        return (f"the latent has {t} latent frames ({(t - 1) * LATENT.temporal_factor + 1} video frames) but Lance "
                f"generates at most {LATENT.max_latent_frames} ({MAX_FRAMES} frames); use fewer frames")
    return None


def text_error(name: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        return f"{name} is empty (or only spaces); Lance needs text here: type it into the {name} box"
    return None


def prompt_length_error(tokenizer, name: str, text: str, system_prompt: str) -> str | None:
    """Lance numbers the ViT block's positions from 1000 (MaPE); text that reaches that band would share
    positions with image tokens, and the model never saw prompts that long."""
    prompt_tokens = len(tokenizer.encode(text))
    template_tokens = len(tokenizer.encode(render_chat(system_prompt, "", VISUAL_PLACEHOLDER)))
    allowed = VIT_TEMPORAL_BAND - template_tokens
    if prompt_tokens > allowed:
        return (f"{name} is {prompt_tokens} tokens long; at most {allowed} fit before position "
                f"{VIT_TEMPORAL_BAND}, where Lance places image tokens; shorten it")
    return None


def option_error(name: str, value: str | None, options) -> str | None:
    """A combo value outside its options (ComfyUI 0.3.75 does not check V3 combos itself)."""
    if value is None or value in options:
        return None
    return f"{name} must be one of {', '.join(options)}, got {value!r}"


def first_error(*errors: str | None) -> str | bool:
    """What ``validate_inputs`` returns: the first message, or True when all checks passed."""
    return next((e for e in errors if e), True)
