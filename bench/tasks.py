"""What the benchmark runs: one spec per task and size, with the reference figures it is compared to.

Reference figures: the official code on one H100, bf16, random weights (the issue "Speed and memory
on a real GPU"). A pair is a measured range; the table compares against its midpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

Range = tuple[float, float]

PROMPT = (
    "A quiet harbour town at dawn: small wooden fishing boats painted red, blue and yellow rest on calm "
    "green water, gulls circle above the masts, and a narrow stone pier leads to a white lighthouse with a "
    "black lantern room. Behind the harbour, houses with orange tile roofs climb a steep hill between "
    "cypress trees. Soft golden light, light mist over the water, long shadows, gentle ripples reflecting "
    "the sky, a fisherman in a yellow raincoat coiling rope on the nearest boat."
)
EDIT_INSTRUCTION = "Make the sky pink at sunset and add a white moon above the hills."
QUESTION = "Describe this image in detail."


@dataclass(frozen=True)
class Reference:
    step_cfg_s: Range | None = None
    step_plain_s: Range | None = None
    end_to_end_s: Range | None = None
    peak_alloc_gib: Range | None = None
    tokens_per_s: Range | None = None


@dataclass(frozen=True)
class TaskSpec:
    task: str                    # lance task name
    height: int                  # output pixels (generation) or input image side (edit source, x2t)
    width: int
    frames: int = 1
    steps: int = 30              # the schedule whose end-to-end time is reported
    timed_cfg_steps: int = 0     # >0: time only this many CFG steps (the first is a warm-up) ...
    timed_plain_steps: int = 0   # ... and this many plain steps, then extrapolate to ``steps``
    vae_side: int = 768          # bucket side of the edit source for the VAE
    vit_side: int = 672          # bucket side for the ViT (edit source, x2t image)
    new_tokens: int = 0          # x2t: greedy tokens to generate
    reference: Reference = Reference()

    @property
    def key(self) -> str:
        if self.task == "t2v":
            return f"t2v_{self.frames}"
        return self.task

    @property
    def extrapolated(self) -> bool:
        return self.timed_cfg_steps > 0


FULL_TASKS = (
    TaskSpec("t2i", 768, 768, reference=Reference((0.29, 0.33), (0.13, 0.18), (9.5, 10.5))),
    TaskSpec("x2t_image", 768, 768, new_tokens=256, reference=Reference(tokens_per_s=(12.7, 16.4))),
    TaskSpec("image_edit", 768, 768, reference=Reference(end_to_end_s=(11.0, 16.0))),
    TaskSpec("t2v", 480, 848, 49, timed_cfg_steps=3, timed_plain_steps=2,
             reference=Reference((1.88, 1.88), (0.88, 0.88), (55.6, 55.6))),
    TaskSpec("t2v", 480, 848, 121, timed_cfg_steps=3, timed_plain_steps=2,
             reference=Reference((6.65, 6.65), (3.25, 3.25), (191.0, 191.0), peak_alloc_gib=(22.5, 22.5))),
)

# CPU smoke test: same code paths at sizes that run in seconds on a tiny model.
TINY_TASKS = (
    TaskSpec("t2i", 64, 64, steps=3, reference=FULL_TASKS[0].reference),
    TaskSpec("x2t_image", 64, 64, new_tokens=6, vit_side=56, reference=FULL_TASKS[1].reference),
    TaskSpec("image_edit", 64, 64, steps=3, vae_side=64, vit_side=56, reference=FULL_TASKS[2].reference),
    TaskSpec("t2v", 64, 96, 5, steps=4, timed_cfg_steps=2, timed_plain_steps=2, reference=FULL_TASKS[3].reference),
    TaskSpec("t2v", 64, 96, 9, steps=4, timed_cfg_steps=2, timed_plain_steps=1, reference=FULL_TASKS[4].reference),
)


def select(tasks: tuple[TaskSpec, ...], keys: list[str] | None) -> list[TaskSpec]:
    if not keys:
        return list(tasks)
    known = {t.key: t for t in tasks}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {sorted(known)}")
    return [known[k] for k in keys]
