#!/usr/bin/env bash
# Installs what the browser tests need, idempotently: a chromium from the system's packages (apt-get
# install chromium; playwright downloads no browser) and playwright-core from package-lock.json into
# tests/browser/node_modules. scripts/test.sh runs this before the tests.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
log() { printf '[browser setup] %s\n' "$*" >&2; }
die() { printf '[browser setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Root runs apt-get directly; anyone else needs password-less sudo.
as_root() {
    if (( EUID == 0 )); then "$@"
    elif sudo -n true 2> /dev/null; then sudo -n "$@"
    else return 1
    fi
}

apt_install() {
    command -v apt-get > /dev/null || die "no apt-get here: install $* with the system's package manager"
    log "apt-get install $*"
    # Try without refreshing the package lists first: that is fast when they are recent enough.
    {
        as_root apt-get install -y --no-install-recommends "$@" \
            || { as_root apt-get update && as_root apt-get install -y --no-install-recommends "$@"; }
    } > "$here/.apt.log" 2>&1 \
        || die "apt-get install $* failed (needs root or password-less sudo; log: $here/.apt.log)"
}

# The names comfy_page.mjs looks for, in its order.
has_chromium() {
    [[ -n "${CHROMIUM_PATH:-}" && -x "${CHROMIUM_PATH:-}" ]] && return 0
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$name" > /dev/null && return 0
    done
    return 1
}

has_chromium || apt_install chromium
has_chromium || die "chromium is still missing after apt-get install chromium; set CHROMIUM_PATH to a chromium binary"

if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
    apt_install nodejs npm
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || die "node $(node --version) is too old for playwright-core (package.json: engines); install node 20 or newer"

# Reinstall when the lock file changes; the stamp holds the lock file's checksum.
lock_sum="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [[ ! -d "$here/node_modules/playwright-core" || "$(cat "$here/.installed" 2> /dev/null)" != "$lock_sum" ]]; then
    log "npm ci (playwright-core, no browser download)"
    (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error > "$here/.npm.log" 2>&1) \
        || die "npm ci failed (log: $here/.npm.log)"
    echo "$lock_sum" > "$here/.installed"
fi
