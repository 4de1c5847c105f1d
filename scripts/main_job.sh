#!/usr/bin/env bash
# The project's main job: bash scripts/main_job.sh
#
# Starts ComfyUI with this pack on http://127.0.0.1:${COMFY_PORT:-8188} and leaves it running
# (stop it with: bash scripts/comfy_env.sh stop).
#
# Models come from LANCE_MODELS_DIR (default: the models/ folder of the environment's ComfyUI):
# lance/Lance_3B_Video/ (and lance/Lance_3B/, lance/Qwen2.5-VL-ViT/) plus vae/Wan2.2_VAE.pth or
# vae/wan2.2_vae.safetensors. Without those real weights this is a SMOKE run: a tiny random-weight
# checkpoint in the official layout is generated and served instead. Its outputs are noise; a smoke
# run only shows that the whole path works.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
env_script="$repo/scripts/comfy_env.sh"
chosen_env_home="${LANCE_COMFY_ENV:-}"  # only for the stop hint; `env` below sets LANCE_COMFY_ENV

ensure_environment() {
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

# A tiny random-weight model set, laid out like a ComfyUI models folder (lance/ and vae/).
generate_smoke_models() {
    local root="$1"
    echo "generating the tiny random checkpoint in $root" >&2
    rm -rf "$root" "$root.tmp"
    (cd "$repo" && "$COMFY_PYTHON" -m lance_model tiny-checkpoint "$root.tmp/lance" >&2)
    mkdir "$root.tmp/vae"
    mv "$root.tmp/lance/Wan2.2_VAE.pth" "$root.tmp/vae/"
    mv "$root.tmp" "$root"
}

prepare_models() {
    models="${LANCE_MODELS_DIR:-$COMFYUI_PATH/models}"
    missing="$(missing_real_weights "$models")"
    if [[ -z "$missing" ]]; then
        run_kind="real"
    else
        run_kind="smoke"
        models="$job_dir/smoke-models"
        generate_smoke_models "$models"
    fi
    model_paths="$job_dir/extra_model_paths.yaml"
    write_model_paths "$model_paths" "$models/lance" "$models/vae"
}

start_server() {
    # A server left by an earlier run would still hold the old pack code and model folders.
    bash "$env_script" stop
    COMFY_EXTRA_MODEL_PATHS="$model_paths" bash "$env_script" start
}

report() {
    if [[ "$run_kind" == smoke ]]; then
        echo "================ SMOKE RUN ================"
        echo "No real Lance weights; missing:"
        echo "  ${missing//$'\n'/$'\n'  }"
        echo "Serving a tiny random-weight checkpoint instead: its outputs are noise."
        echo "==========================================="
    else
        echo "Real Lance weights: $models"
    fi
    echo "ComfyUI with the Lance nodes: $COMFY_URL"
    echo "Server log: $COMFY_LOG"
    echo "Stop it: ${COMFY_PORT:+COMFY_PORT=$COMFY_PORT }${chosen_env_home:+LANCE_COMFY_ENV=$chosen_env_home }bash scripts/comfy_env.sh stop"
}

ensure_environment
prepare_models
start_server
report
