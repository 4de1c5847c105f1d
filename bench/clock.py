"""Wall-clock and per-step timing that is honest about asynchronous GPU work, and peak memory."""
from __future__ import annotations

import time

import torch

GIB = 1024 ** 3


class Clock:
    """``now()`` waits for the device first, so a difference of two readings covers the GPU work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class StepMarks:
    """Marks the stream between sampler steps without waiting for it (CUDA events), so timing does not
    add host syncs to the loop; ``durations()`` reads them once at the end."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self, *_ignored) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class PeakMemory:
    """Peak allocated / reserved GiB since ``reset`` (CUDA only; None elsewhere)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def allocated_gib(self) -> float | None:
        return torch.cuda.memory_allocated() / GIB if self.cuda else None

    def peaks_gib(self) -> tuple[float | None, float | None]:
        if not self.cuda:
            return None, None
        return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB
