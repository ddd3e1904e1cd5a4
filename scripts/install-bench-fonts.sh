#!/usr/bin/env bash
# The font the benchmark report's plots draw their text with (typha-loadtest bench-report loads
# it at run time): DejaVu Sans from Debian's fonts-dejavu-core. A no-op when it is installed.
set -euo pipefail

FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[[ -f "$FONT" ]] && exit 0

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "install-bench-fonts: need root (or sudo) for: $*" >&2
    exit 1
  fi
}

echo "install-bench-fonts: apt-get install fonts-dejavu-core" >&2
if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y fonts-dejavu-core >&2; then
  as_root apt-get update >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y fonts-dejavu-core >&2
fi
[[ -f "$FONT" ]] || { echo "install-bench-fonts: $FONT still missing" >&2; exit 1; }
