"""Shared fixtures. The golden fixtures live in ``../shared/golden`` beside the checkout (override
with ``LANCE_GOLDEN_DIR``); ComfyUI's ``comfy`` package is found through ``COMFYUI_PATH``, which the
test runner (``scripts/test.sh``) sets to the project's own ComfyUI install."""
from __future__ import annotations

from pathlib import Path

import pytest
from golden_paths import GOLDEN_DIR, SPEC_DIR


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "README.md").is_file():
        pytest.fail(f"golden fixtures not found at {GOLDEN_DIR}; set LANCE_GOLDEN_DIR")
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    if not (SPEC_DIR / "lance-spec.md").is_file():
        pytest.fail(f"spec folder not found at {SPEC_DIR}; set LANCE_SPEC_DIR")
    return SPEC_DIR


pytest_plugins = ["fixtures_tiny"]
