#!/usr/bin/env bash
# The project's main job: bash scripts/main_job.sh [--download]
#
# Starts ComfyUI with this pack on http://127.0.0.1:${COMFY_PORT:-8188}, runs the text-to-video
# workflow (workflows/api/text_to_video.json) through the server's API while printing its progress,
# and prints the .mp4 it made with its duration. The server keeps running afterwards (stop it with:
# bash scripts/comfy_env.sh stop).
#
# Models come from LANCE_MODELS_DIR (default: the models/ folder of the environment's ComfyUI):
# lance/Lance_3B_Video/ plus vae/Wan2.2_VAE.pth (or vae/wan2.2_vae.safetensors). With --download,
# missing ones are fetched there from Hugging Face (bytedance-research/Lance, about 17 GB) first.
# Without the real weights this is a SMOKE run: a tiny random-weight checkpoint in the official
# layout is generated and served instead, and the workflow runs at a small size. Its video is noise;
# a smoke run only shows that the whole path works.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
env_script="$repo/scripts/comfy_env.sh"
chosen_env_home="${LANCE_COMFY_ENV:-}"  # only for the stop hint; `env` below sets LANCE_COMFY_ENV
workflow="$repo/workflows/api/text_to_video.json"
# Small enough for a CPU: 112x64 (the 16:9-like shape of 848x480), 9 frames, 4 steps.
smoke_overrides=(--width 112 --height 64 --frames 9 --steps 4)

download=0
for arg in "$@"; do
    case "$arg" in
        --download) download=1 ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "main_job.sh: unknown argument '$arg' (see --help)" >&2; exit 1 ;;
    esac
done

step() { printf '\n== %s\n' "$*"; }

ensure_environment() {
    step "environment"
    bash "$env_script" install
    settings="$(bash "$env_script" env)"
    eval "$settings"
    export COMFYUI_PATH COMFY_PYTHON
    job_dir="$LANCE_COMFY_ENV/main-job"
    mkdir -p "$job_dir"
}

# Prints the files a real run needs but cannot find; prints nothing when all are there.
missing_real_weights() {
    local models="$1"
    [[ -f "$models/lance/Lance_3B_Video/model.safetensors" ]] || echo "$models/lance/Lance_3B_Video/model.safetensors"
    [[ -f "$models/vae/Wan2.2_VAE.pth" || -f "$models/vae/wan2.2_vae.safetensors" ]] || echo "$models/vae/Wan2.2_VAE.pth"
}

# The official text-to-video files, from the Hugging Face Hub into a ComfyUI models folder.
download_real_weights() {
    "$COMFY_PYTHON" - "$1" << 'PY'
import sys
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download

REPO = "bytedance-research/Lance"
models = Path(sys.argv[1])
print(f"downloading {REPO}: Lance_3B_Video/ into {models / 'lance'}", flush=True)
snapshot_download(REPO, allow_patterns=["Lance_3B_Video/*"], local_dir=models / "lance")
if not (models / "vae" / "wan2.2_vae.safetensors").is_file():
    print(f"downloading {REPO}: Wan2.2_VAE.pth into {models / 'vae'}", flush=True)
    hf_hub_download(REPO, "Wan2.2_VAE.pth", local_dir=models / "vae")
PY
}

# write_model_paths YAML LANCE_DIR VAE_DIR: an extra_model_paths.yaml for ComfyUI's folder keys
# lance (the checkpoint folders) and vae.
write_model_paths() {
    "$COMFY_PYTHON" - "$@" << 'PY'
import sys
import yaml

path, lance, vae = sys.argv[1:]
with open(path, "w") as f:
    yaml.safe_dump({"lance_main_job": {"lance": lance, "vae": vae}}, f)
PY
}

# A tiny random-weight model set, laid out like a ComfyUI models folder (lance/ and vae/); kept for
# the next smoke run (the same seed always gives the same files).
generate_smoke_models() {
    local root="$1"
    if [[ -d "$root" ]]; then
        echo "reusing the tiny random checkpoint in $root"
        return 0
    fi
    echo "generating the tiny random checkpoint in $root"
    rm -rf "$root.tmp"
    (cd "$repo" && "$COMFY_PYTHON" -m lance_model tiny-checkpoint "$root.tmp/lance" > /dev/null)
    mkdir "$root.tmp/vae"
    mv "$root.tmp/lance/Wan2.2_VAE.pth" "$root.tmp/vae/"
    mv "$root.tmp" "$root"
}

prepare_models() {
    step "models"
    local models="${LANCE_MODELS_DIR:-$COMFYUI_PATH/models}"
    missing="$(missing_real_weights "$models")"
    if [[ -n "$missing" ]] && (( download )); then
        download_real_weights "$models"
        missing="$(missing_real_weights "$models")"
    fi
    if [[ -z "$missing" ]]; then
        run_kind="real"
        echo "real Lance weights in $models"
    else
        run_kind="smoke"
        echo "SMOKE RUN: no real Lance weights (missing: ${missing//$'\n'/, }); use --download to fetch them"
        models="$job_dir/smoke-models"
        generate_smoke_models "$models"
    fi
    model_paths="$job_dir/extra_model_paths.yaml"
    write_model_paths "$model_paths" "$models/lance" "$models/vae"
}

start_server() {
    step "server"
    # A server left by an earlier run would still hold the old pack code and model folders.
    bash "$env_script" stop
    COMFY_EXTRA_MODEL_PATHS="$model_paths" bash "$env_script" start
}

run_text_to_video() {
    local overrides=()
    if [[ "$run_kind" == smoke ]]; then
        overrides=("${smoke_overrides[@]}")
        step "text to video (SMOKE RUN: tiny random weights, ${overrides[*]})"
    else
        step "text to video (${workflow#"$repo/"} as it is: 848x480, 121 frames, 30 steps)"
    fi
    output_dir="$job_dir/output"
    (cd "$repo/scripts" && "$COMFY_PYTHON" run_workflow.py --url "$COMFY_URL" --workflow "$workflow" \
        --out "$output_dir" "${overrides[@]}") | tee "$job_dir/run.log"
}

report() {
    step "done"
    if [[ "$run_kind" == smoke ]]; then
        echo "================ SMOKE RUN ================"
        echo "No real Lance weights; missing:"
        echo "  ${missing//$'\n'/$'\n'  }"
        echo "The video came from a tiny random-weight checkpoint: it is noise."
        echo "Run with --download to fetch the official weights."
        echo "==========================================="
    fi
    grep '^output: ' "$job_dir/run.log" | sed 's/^output: /video: /'
    echo "ComfyUI with the Lance nodes keeps running: $COMFY_URL (log: $COMFY_LOG)"
    echo "Stop it: ${COMFY_PORT:+COMFY_PORT=$COMFY_PORT }${chosen_env_home:+LANCE_COMFY_ENV=$chosen_env_home }bash scripts/comfy_env.sh stop"
}

ensure_environment
prepare_models
start_server
run_text_to_video
report
