#!/usr/bin/env bash
# System tools the test suite needs beyond the venv, from Debian's packages:
#   redis-server    (history-store tests and the native stack test)
#   prometheus      (prometheus + promtool: config/rule checks and the native stack test)
#   docker-compose  (validates docker-compose.yml without a Docker engine)
# Idempotent and quick: apt runs only when a binary is missing. Needs root (or passwordless sudo) then.
set -euo pipefail

declare -A binary_to_package=(
    [redis-server]=redis-server
    [prometheus]=prometheus
    [promtool]=prometheus
    [docker-compose]=docker-compose
)

missing=()
for binary in "${!binary_to_package[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("${binary_to_package[$binary]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "ci-system-deps: missing Debian packages: $packages; install them as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends $packages" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-system-deps: missing $packages and no apt-get here; install them with your package manager" >&2
    exit 1
fi

echo "ci-system-deps: installing $packages" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q >/dev/null
# --no-install-recommends keeps docker-compose from pulling in the Docker engine.
# shellcheck disable=SC2086
"${as_root[@]}" apt-get install -y -q --no-install-recommends $packages >/dev/null
