#!/usr/bin/env bash
# Installs the servers `typha-loadtest pubsub` compares typha-rs with (docs/comparisons.md):
# Debian's redis-server and nats-server. Idempotent: installs only what is missing, then prints
# the versions. `make test` and `make bench-report` call it.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have redis-server || missing+=(redis-server)
have nats-server || missing+=(nats-server)

if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-bench-deps: need ${missing[*]}, and apt-get is not available: install them by hand" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "install-bench-deps: installing ${missing[*]}"
    # The packages may start their own services on the default ports; the comparison does not
    # use them (it starts its own servers on free loopback ports).
    $sudo apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

path_of() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || echo "/usr/bin/$1"; }
"$(path_of redis-server)" --version
"$(path_of nats-server)" --version
