"""Replaying a fixed-shape GPU pass as a CUDA graph.

The small passes of the sampler (an image's noise block) and of text decoding (one token) are bound by
the host: Python and ~4,000 kernel launches per pass take longer than the kernels themselves. Recorded
once as a CUDA graph, a pass costs a single launch. A graph replays fixed tensor addresses, so a
graphed callable takes its inputs by copy into buffers of its own and returns the same output tensors
at every replay (copy or consume them before the next one).

Graphs are used only where they are safe: every tensor on one CUDA device, the weights resident there
(ComfyUI's partial loading streams weights in from the CPU, which a graph cannot replay), and not
disabled by ``LANCE_CUDA_GRAPHS=0``. A pass that cannot be captured runs eagerly instead.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable

import torch
from torch import nn

DISABLE_ENV = "LANCE_CUDA_GRAPHS"


def graphs_enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") != "0"


def resident_on(device: torch.device, *modules: nn.Module | None) -> bool:
    """Whether every weight of ``modules`` lives on the CUDA ``device`` (graph replays need fixed weights)."""
    if device.type != "cuda":
        return False
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return all(t.device == device for m in modules if m is not None for t in [*m.parameters(), *m.buffers()])


# cuDNN releases before 9.15 can fault on replayed long bidirectional attention (a known bug, worked
# around in NVIDIA's Transformer Engine); with those, graphs use SDPA's flash kernel (~0.6x as fast here).
_CUDNN_GRAPH_SAFE = 91500


def _capturable_attention():
    """SDPA's own kernel choice (cuDNN on Hopper) where the cuDNN release replays correctly in graphs,
    else its flash kernel."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if cudnn is not None and cudnn >= _CUDNN_GRAPH_SAFE:
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class GraphedCall:
    """``fn(*inputs)`` run eagerly on its first call (warming up kernels and library handles), then
    captured and replayed. ``fn`` must not synchronise with the host or read CPU tensors, and its
    inputs must keep their shapes and dtypes from call to call."""

    def __init__(self, fn: Callable, device: torch.device):
        self.fn, self.device = fn, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple[torch.Tensor, ...] = ()
        self.output = None
        self.failed = False
        self.calls = 0

    def __call__(self, *inputs: torch.Tensor):
        self.calls += 1
        if self.failed:
            return self.fn(*inputs)
        if self.calls == 1:
            return self._warm_up(inputs)
        if self.graph is None:
            self._capture(inputs)
            if self.failed:
                return self.fn(*inputs)
        for static, value in zip(self.static_inputs, inputs):
            static.copy_(value)
        self.graph.replay()
        return self.output

    def release(self) -> None:
        """Free the graph and its memory pool now. The owner of a graphed bound method forms a reference
        cycle with it, which only Python's cycle collector would break, at a time of its choosing."""
        self.graph, self.static_inputs, self.output = None, (), None
        self.calls = 0

    def _warm_up(self, inputs):
        # First runs on a side stream, as CUDA graph capture requires of lazily initialised libraries.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), _capturable_attention():
            result = self.fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return result

    def _capture(self, inputs):
        self.static_inputs = tuple(t.clone() for t in inputs)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph), _capturable_attention():
                self.output = self.fn(*self.static_inputs)
        except RuntimeError as error:
            torch.cuda.synchronize(self.device)
            warnings.warn(f"CUDA graph capture failed, running eagerly instead ({error}); set "
                          f"{DISABLE_ENV}=0 to skip the attempt", RuntimeWarning, stacklevel=3)
            self.failed, self.output, self.static_inputs = True, None, ()
            return
        self.graph = graph
