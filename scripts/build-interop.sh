#!/usr/bin/env bash
# Builds the Go interop suite (interop/: gobclient, decodecheck, vectors) into
# ~/.cache/typha-rs/interop/<hash>/ and prints that directory on stdout.
#
# The hash covers every Go source, go.mod and go.sum under interop/ and the Go version, so a
# change to any of them builds a new directory and an unchanged tree is a no-op (a few ms).
# Dependencies come from the Go module proxy (GOFLAGS=-mod=mod, default GOPATH/GOMODCACHE).
# On a fresh build the suite's own Go tests run first (the digest vectors shared with Rust).
#
#   scripts/build-interop.sh             build if needed, print the bin dir
#   scripts/build-interop.sh --print-dir print the bin dir it would use, build nothing
#                                        (the Rust tests use this to find or skip the suite)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$repo/interop"
cache="${TYPHA_RS_CACHE:-$HOME/.cache/typha-rs}/interop"
bins=(gobclient decodecheck vectors)

command -v go >/dev/null || { echo "build-interop: go not found (the interop suite needs Go >= 1.26)" >&2; exit 1; }

hash=$(
    cd "$src"
    {
        go version
        find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
)
dir="$cache/$hash"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$dir"
    exit 0
fi

if [[ -f "$dir/.complete" ]]; then
    echo "$dir"
    exit 0
fi

echo "build-interop: building the Go interop suite into $dir" >&2
start=$(date +%s)
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(
    cd "$src"
    export GOFLAGS=-mod=mod
    go test ./... >&2
    for b in "${bins[@]}"; do
        go build -o "$tmp/$b" "./$b"
    done
)
touch "$tmp/.complete"
# Another build of the same tree may have won the race; either copy is the same.
if ! mv -T "$tmp" "$dir" 2>/dev/null; then
    [[ -f "$dir/.complete" ]] || { echo "build-interop: could not install $dir" >&2; exit 1; }
fi
trap - EXIT
echo "build-interop: done in $(( $(date +%s) - start ))s" >&2
echo "$dir"
