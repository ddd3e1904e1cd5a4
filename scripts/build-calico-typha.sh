#!/usr/bin/env bash
# Builds Calico's own Typha (typha/cmd/calico-typha from the Go module
# github.com/projectcalico/calico) into ~/.cache/typha-rs/calico-typha/<hash>/ and prints that
# directory on stdout. bench-report's Typha-vs-typha-rs cells run the binary from there.
#
# Which Calico: the version of github.com/projectcalico/calico that interop/go.mod requires
# (the v3.32.1 release commit, as a pseudo-version), built with the requirements interop/go.mod
# pins for it. One pin for both: the Go interop suite drives Calico's own syncclient from the
# same module version that this script builds the daemon from. The module's own `replace`
# lines do not apply to a dependent module, which is why interop/go.mod pins its
# github.com/projectcalico/api and k8s.io/* requirements itself.
#
# The hash covers interop/go.mod, interop/go.sum and the Go version, so an unchanged pin is a
# no-op (a few ms). Dependencies come from the Go module proxy (GOFLAGS=-mod=mod, default
# GOPATH/GOMODCACHE).
#
#   scripts/build-calico-typha.sh             build if needed, print the bin dir
#   scripts/build-calico-typha.sh --print-dir print the bin dir it would use, build nothing
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$repo/interop"
cache="${TYPHA_RS_CACHE:-$HOME/.cache/typha-rs}/calico-typha"
calico=github.com/projectcalico/calico
pkg=$calico/typha/cmd/calico-typha

command -v go >/dev/null || { echo "build-calico-typha: go not found (needs Go >= 1.26)" >&2; exit 1; }
[[ -f "$mod/go.mod" ]] || { echo "build-calico-typha: $mod/go.mod not found" >&2; exit 1; }
if ! grep -Eq "^[[:space:]]*(require[[:space:]]+)?$calico[[:space:]]+v" "$mod/go.mod"; then
    echo "build-calico-typha: interop/go.mod does not require $calico: the Calico version" \
         "(v3.32.1) and its pinned requirements are declared there once the module proxy serves" \
         "them (docs/interop.md says why it does not today)" >&2
    exit 1
fi

hash=$(
    cd "$mod"
    { go version; sha256sum go.mod; [[ -f go.sum ]] && sha256sum go.sum; } | sha256sum | cut -c1-16
)
dir="$cache/$hash"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$dir"
    exit 0
fi
if [[ -x "$dir/calico-typha" && -f "$dir/.complete" ]]; then
    echo "$dir"
    exit 0
fi

version=$(cd "$mod" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' "$calico")
echo "build-calico-typha: building $pkg@$version into $dir" >&2
start=$(date +%s)
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(
    cd "$mod"
    export GOFLAGS=-mod=mod CGO_ENABLED=0
    go build -trimpath -o "$tmp/calico-typha" "$pkg" >&2
)
echo "$version" >"$tmp/VERSION"
touch "$tmp/.complete"
# Another build of the same pin may have won the race; either copy is the same.
if ! mv -T "$tmp" "$dir" 2>/dev/null; then
    [[ -f "$dir/.complete" ]] || { echo "build-calico-typha: could not install $dir" >&2; exit 1; }
fi
trap - EXIT
echo "build-calico-typha: done in $(( $(date +%s) - start ))s" >&2
echo "$dir"
