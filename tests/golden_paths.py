"""Where the shared fixtures live: ``../shared/golden`` and ``../shared/spec`` beside the checkout,
unless ``LANCE_GOLDEN_DIR`` / ``LANCE_SPEC_DIR`` say otherwise. A module of its own (not conftest) so
that scripts outside pytest can import it under an unambiguous name."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(os.environ.get("LANCE_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))
SPEC_DIR = Path(os.environ.get("LANCE_SPEC_DIR", REPO_ROOT.parent / "shared" / "spec"))
