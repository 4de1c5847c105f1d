"""Out-of-memory errors of the Lance nodes, turned into a message that says what to change."""
from __future__ import annotations

import torch

from . import comfy_runtime


class LanceOutOfMemoryError(torch.OutOfMemoryError):
    """Still an out-of-memory error, so ComfyUI unloads its models after it as after any other."""


def call_with_memory_advice(what: str, remedy: str, function, *args, **kwargs):
    """``function(*args, **kwargs)``; an out-of-memory error in it becomes ``LanceOutOfMemoryError("<what>
    (<error>); <remedy>")``, raised after the memory of the failed call is released."""
    try:
        return function(*args, **kwargs)
    except torch.OutOfMemoryError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = f"{what} ({first_line}); {remedy}"
    # Raised outside the except block, so the original error (whose traceback frames hold the failed
    # call's tensors) is not chained to the new one and that memory is already free here.
    comfy_runtime.memory_manager().soft_empty_cache()
    raise LanceOutOfMemoryError(message)
