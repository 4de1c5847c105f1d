"""ComfyUI's real frontend against the session's server: runs the playwright-core tests of tests/browser/
(node's test runner, the system's chromium). tests/browser/setup.sh installs both; scripts/test.sh runs it.

The screenshot of the loaded text-to-video workflow lands in tests/browser/artifacts/text_to_video.png
(LANCE_BROWSER_ARTIFACTS overrides the folder)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from example_media import upload_example_media

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
NODE_TESTS = BROWSER_DIR / "frontend.test.mjs"
TIMEOUT_S = 900


def test_frontend(comfy_server, served_tiny_models):
    node = shutil.which("node")
    assert node and (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), \
        "node or playwright-core is missing: run bash tests/browser/setup.sh (scripts/test.sh does)"
    upload_example_media(comfy_server.url)
    env = dict(os.environ, COMFY_URL=comfy_server.url, COMFY_PACK_NAME=comfy_server.pack_name)
    run = subprocess.run([node, "--test", "--test-reporter=spec", str(NODE_TESTS)], cwd=BROWSER_DIR, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, f"browser tests failed:\n{run.stdout[-12000:]}\n{run.stderr[-4000:]}"
    print(run.stdout)
