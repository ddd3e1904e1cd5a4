#!/usr/bin/env bash
# Calico's own Typha for bench-report's typha-rs-vs-Typha cells: where it comes from.
#
# This repository does not build Calico's code. bench-report takes a calico-typha binary
# (v3.32.1, the release typha-rs is compared with) that you supply:
#
#   make bench-report BENCH_ARGS="--calico-typha-bin /path/to/calico-typha"
#   CALICO_TYPHA_BIN=/path/to/calico-typha make bench-report
#
# Without one, those cells are recorded as "not measured: no calico-typha binary" and the rest
# of the matrix runs. To get a binary, build it outside this repository from Calico's own
# sources at the release tag (its go.mod asks for Go 1.25.11), with the Go module proxy:
#
#   git clone --depth 1 --branch v3.32.1 https://github.com/projectcalico/calico
#   cd calico && GOTOOLCHAIN=go1.25.11 CGO_ENABLED=0 go build -o /somewhere/calico-typha ./typha/cmd/calico-typha
#
# Use the Go its go.mod names: a build with Go 1.26 starts but panics (makeslice: len out of
# range, in uniquelabels.Map.MarshalJSON under json-iterator) on the first workload endpoint
# with labels, so it dies as soon as pods exist.
#
# (inside Calico's own module its replace lines apply, which is why that works where requiring
# the module from here does not: docs/interop.md). Or copy /usr/bin/calico-typha out of the
# calico/typha:v3.32.1 image.
#
#   scripts/build-calico-typha.sh [PATH]   check PATH (default $CALICO_TYPHA_BIN) and print it,
#                                          or say how to get one (exit status 1)
set -euo pipefail

bin="${1:-${CALICO_TYPHA_BIN:-}}"
if [[ -z "$bin" ]]; then
    sed -n '2,23s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 1
fi
if [[ ! -f "$bin" || ! -x "$bin" ]]; then
    echo "build-calico-typha: $bin is not an executable file" >&2
    exit 1
fi
# calico-typha --version prints the build's version fields and exits 0.
if ! timeout 10 "$bin" --version >/dev/null 2>&1; then
    echo "build-calico-typha: $bin --version failed: not a calico-typha binary?" >&2
    exit 1
fi
realpath "$bin"
