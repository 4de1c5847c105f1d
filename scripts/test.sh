#!/usr/bin/env bash
# The project's test command: bash scripts/test.sh [pytest arguments]
#
# Makes sure the project's ComfyUI environment exists (scripts/comfy_env.sh install; the first run
# takes a couple of minutes), then runs pytest with that environment's interpreter. Without
# arguments it runs everything under tests/. Fails when a test fails and when no test ran.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
env_script="$repo/scripts/comfy_env.sh"

bash "$env_script" install
# The browser tests drive the system's chromium through playwright-core (tests/browser/setup.sh
# installs both). Without them the other tests still run; tests/server/test_browser.py then fails.
bash "$repo/tests/browser/setup.sh" || echo "test.sh: browser test setup failed; test_browser.py will fail" >&2
settings="$(bash "$env_script" env)"
eval "$settings"
# The tests reach ComfyUI's `comfy` package through COMFYUI_PATH, and the server fixture starts
# this same ComfyUI through comfy_env.sh, which reads both variables.
export COMFYUI_PATH COMFY_PYTHON
# The tiny models run many small bf16 matmuls; on a 2-core machine two threads per op fight each
# other (the model-core tests take 4x longer). A caller's own setting wins.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# Quiet by default; a caller's own -q/-v wins (-qq would also drop pytest's summary line).
verbosity=(-q)
for arg in "$@"; do
    case "$arg" in -q* | -v* | --quiet | --verbose) verbosity=() ;; esac
done

cd "$repo"
status=0
"$COMFY_PYTHON" -m pytest "${verbosity[@]}" "$@" || status=$?
if (( status == 5 )); then
    echo "test.sh: no test ran (pytest exit code 5); check the test paths and -k/-m filters" >&2
fi
exit "$status"
