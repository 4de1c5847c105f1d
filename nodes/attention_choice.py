"""The loader's attention option: which kernels are installed, and what ``auto`` means."""
from __future__ import annotations

import importlib.util

ATTENTION_OPTIONS = ("auto", "sdpa", "flash_attn", "sage")
# Optional packages behind the non-default kernels, and how users get them.
_PACKAGES = {"flash_attn": ("flash_attn", "pip install flash-attn --no-build-isolation"),
             "sage": ("sageattention", "pip install sageattention")}


def installed_backends() -> list[str]:
    """``sdpa`` (torch's own) plus every optional kernel whose package imports."""
    return ["sdpa"] + [name for name, (package, _) in _PACKAGES.items() if importlib.util.find_spec(package)]


def resolve_attention(choice: str) -> str:
    """The kernel to run for ``choice``. ``auto`` takes flash-attn when installed, else torch SDPA; sage
    is never picked automatically because it quantises Q and K (faster, not exact)."""
    if choice not in ATTENTION_OPTIONS:
        raise ValueError(f"attention must be one of {ATTENTION_OPTIONS}, got {choice!r}")
    available = installed_backends()
    if choice == "auto":
        return "flash_attn" if "flash_attn" in available else "sdpa"
    if choice not in available:
        package, install = _PACKAGES[choice]
        raise ValueError(f"attention '{choice}' needs the {package} package, which is not installed "
                         f"(installed: {', '.join(available)}); run '{install}' in ComfyUI's Python, or choose "
                         f"auto")
    return choice
