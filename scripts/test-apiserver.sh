#!/usr/bin/env bash
# A real Kubernetes API server (kube-apiserver + etcd) on loopback, for tests: a current release
# (the default) built from the k8s.io/kubernetes Go module, and v1.20.2 for the few checks that
# need an old cluster.
#
#   scripts/test-apiserver.sh install [current|v1.20|all] # apt packages + build the server(s) once (cached); default all
#   scripts/test-apiserver.sh start DIR [current|v1.20]   # etcd + kube-apiserver on 127.0.0.1; writes DIR/env
#   scripts/test-apiserver.sh crds DIR                    # apply deploy/crds/ and wait until Established
#   scripts/test-apiserver.sh rbac DIR                    # apply deploy/rbac.yaml
#   scripts/test-apiserver.sh restart-apiserver DIR       # restart only the API server (same flags, same port)
#   scripts/test-apiserver.sh stop-apiserver DIR          # stop only the API server (restart-apiserver brings it back)
#   scripts/test-apiserver.sh stop-etcd DIR               # stop only etcd
#   scripts/test-apiserver.sh start-etcd DIR              # start etcd again (same port, same data)
#   scripts/test-apiserver.sh compact DIR                 # compact etcd to its current revision
#   scripts/test-apiserver.sh stop DIR                    # stop both (by recorded pid)
#
# Everything listens on 127.0.0.1 only. Generated keys, certificates and the admin token live
# in DIR only (use a directory under /tmp), never in the repository. See docs/test-apiserver.md.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The current release: the version k8s.io/kubernetes is pinned to in the wrapper module.
CURRENT_MODULE_DIR="$REPO_ROOT/scripts/kube-apiserver-build"
CURRENT_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$CURRENT_MODULE_DIR/go.mod")"
LEGACY_VERSION=v1.20.2
CACHE_DIR="${TYPHA_CACHE_DIR:-$HOME/.cache/typha-rs}"
BIN_DIR="$CACHE_DIR/bin"
BUILD_DIR="$CACHE_DIR/build"
READY_TIMEOUT="${TEST_APISERVER_READY_TIMEOUT:-60}"
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
DEB_SRC_FILE=/etc/apt/sources.list.d/typha-rs-deb-src
# Debian's Go 1.19 (package golang-1.19-go): what the v1.20 source builds with.
LEGACY_GO_BIN=/usr/lib/go-1.19/bin

# Debian packages that `install` makes sure of. kubernetes-client (kubectl v1.20.2) is handled
# separately: on some images /usr/bin/kubectl already belongs to another package.
APT_PACKAGES=(etcd-server etcd-client golang-1.19-go rsync jq golang-github-modern-go-reflect2-dev
  dpkg-dev openssl curl make xz-utils time)

log() { echo "test-apiserver: $*" >&2; }
die() {
  echo "test-apiserver: ERROR: $*" >&2
  exit 1
}

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ "$CURRENT_VERSION" =~ ^v1\.[0-9]+\.[0-9]+$ ]] ||
  die "cannot read the k8s.io/kubernetes version from $CURRENT_MODULE_DIR/go.mod"

# The release a server name stands for: "current" (or its version) or "v1.20".
release_of() {
  case "${1:-current}" in
    current | "$CURRENT_VERSION") echo "$CURRENT_VERSION" ;;
    v1.20 | "$LEGACY_VERSION") echo "$LEGACY_VERSION" ;;
    *) die "unknown server '$1': use current ($CURRENT_VERSION) or v1.20 ($LEGACY_VERSION)" ;;
  esac
}

# KUBE_APISERVER_BIN replaces the current server's binary (not v1.20's).
apiserver_bin() {
  if [[ "$1" == "$CURRENT_VERSION" && -n "${KUBE_APISERVER_BIN:-}" ]]; then
    echo "$KUBE_APISERVER_BIN"
  else
    echo "$BIN_DIR/kube-apiserver-$1"
  fi
}

kubectl_cached() { echo "$BIN_DIR/kubectl-$1"; }

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) for: $*"
  fi
}

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

pkg_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

apt_install() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "apt-get install ${missing[*]}"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2; then
    log "apt-get install failed; running apt-get update and retrying"
    as_root apt-get update >&2 || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2 ||
      die "apt-get install ${missing[*]} failed"
  fi
}

# Does BIN report Kubernetes VERSION exactly?
binary_is() {
  [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -qx "Kubernetes $2"
}

kubectl_ok() {
  [[ -x "$1" ]] && "$1" version --client -o json 2>/dev/null |
    jq -e --arg v "$2" '.clientVersion.gitVersion == $v' >/dev/null 2>&1
}

# kubectl v1.20.2 from Debian's kubernetes-client, cached as kubectl-v1.20.2.
ensure_legacy_kubectl() {
  local cached
  cached="$(kubectl_cached "$LEGACY_VERSION")"
  kubectl_ok "$cached" "$LEGACY_VERSION" && return 0
  mkdir -p "$BIN_DIR"
  local owner
  owner="$(dpkg-query -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1 || true)"
  if [[ -z "$owner" || "$owner" == kubernetes-client ]]; then
    apt_install kubernetes-client
    install -m 0755 /usr/bin/kubectl "$cached"
  else
    # Installing kubernetes-client would fail on the file conflict; take kubectl out of the
    # package instead, without touching the installed one.
    log "/usr/bin/kubectl belongs to package '$owner'; extracting kubernetes-client into $BIN_DIR"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download kubernetes-client >&2) || {
      rm -rf "$tmp"
      die "apt-get download kubernetes-client failed"
    }
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/bin/kubectl" "$cached"
    rm -rf "$tmp"
  fi
  kubectl_ok "$cached" "$LEGACY_VERSION" || die "$cached is not kubectl $LEGACY_VERSION"
}

# The current release, kube-apiserver and kubectl, from the k8s.io/kubernetes module on the Go
# module proxy. scripts/kube-apiserver-build/go.mod requires k8s.io/kubernetes and replaces each
# k8s.io/* staging module it lists (./staging/... in its own go.mod, which a dependency's
# replace cannot use) with the matching v0.x.y release; its go.sum pins every download, so the
# checksum database is never consulted.
build_current() {
  local v="$CURRENT_VERSION" out="$BUILD_DIR/$CURRENT_VERSION" buildlog t0 t1 goversion
  buildlog="$out/build.log"
  mkdir -p "$out" "$BIN_DIR"
  : >"$buildlog"
  command -v go >/dev/null || die "no go on PATH: k8s.io/kubernetes $v needs Go $(awk '$1 == "go" {print $2}' "$CURRENT_MODULE_DIR/go.mod") or newer"
  goversion="$(go env GOVERSION)"
  log "building kube-apiserver and kubectl $v from the k8s.io/kubernetes module with $goversion; log: $buildlog"
  local major minor ldflags="" pkg
  major="${v#v}"
  major="${major%%.*}"
  minor="${v#v*.}"
  minor="${minor%%.*}"
  # Without these the binaries report v0.0.0, and clients that negotiate by version misbehave.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=archive -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  local timer=()
  [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -v)
  t0=$(date +%s)
  local cmd
  for cmd in kube-apiserver kubectl; do
    # GOTOOLCHAIN=local: never download another toolchain; an older go fails here, saying so.
    if ! (cd "$CURRENT_MODULE_DIR" && env GOTOOLCHAIN=local GOFLAGS="-mod=readonly -modcacherw" \
      GOMODCACHE="$BUILD_DIR/gomodcache" GOCACHE="$BUILD_DIR/gocache" CGO_ENABLED=0 \
      "${timer[@]}" go build -trimpath -ldflags "-s -w$ldflags" -o "$out/$cmd" \
      "k8s.io/kubernetes/cmd/$cmd") >>"$buildlog" 2>&1; then
      tail -n 30 "$buildlog" >&2
      die "building $cmd $v failed (full log: $buildlog)"
    fi
  done
  t1=$(date +%s)
  install -m 0755 "$out/kubectl" "$(kubectl_cached "$v").tmp"
  mv -f "$(kubectl_cached "$v").tmp" "$(kubectl_cached "$v")"
  install -m 0755 "$out/kube-apiserver" "$BIN_DIR/kube-apiserver-$v.tmp"
  mv -f "$BIN_DIR/kube-apiserver-$v.tmp" "$BIN_DIR/kube-apiserver-$v"
  rm -f "$out/kubectl" "$out/kube-apiserver"
  binary_is "$BIN_DIR/kube-apiserver-$v" "$v" || die "kube-apiserver --version does not report $v"
  kubectl_ok "$(kubectl_cached "$v")" "$v" || die "kubectl version does not report $v"
  echo "build-seconds: $((t1 - t0))" >>"$buildlog"
  log "built kube-apiserver and kubectl $v in $((t1 - t0)) s ($(du -h "$BIN_DIR/kube-apiserver-$v" | cut -f1)) -> $BIN_DIR"
  grep -h "Maximum resident set size" "$buildlog" | sed 's/^[[:space:]]*/test-apiserver: peak /' >&2 || true
}

# Make `apt-get source kubernetes` possible: add deb-src entries derived from the bookworm
# entries already configured (deb822 .sources files and one-line .list files).
ensure_deb_src() {
  if apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then return 0; fi
  local have_src=0 f
  if grep -qsE '^[[:space:]]*deb-src[[:space:]].*[[:space:]]bookworm([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list; then have_src=1; fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    if awk 'BEGIN{RS="";FS="\n"} {t="";s=""; for(i=1;i<=NF;i++){ if(tolower($i)~/^types:/)t=$i; if(tolower($i)~/^suites:/)s=$i }
            if (t~/deb-src/ && s~/[ \t]bookworm([ \t]|$)/) found=1 } END{exit !found}' "$f"; then
      have_src=1
    fi
  done
  if [[ $have_src -eq 0 ]]; then
    local deb822="" oneline=""
    for f in /etc/apt/sources.list.d/*.sources; do
      [[ -f "$f" ]] || continue
      deb822+="$(awk 'BEGIN{RS="";FS="\n"}
        { t=""; s=""; en="yes"
          for(i=1;i<=NF;i++){ l=tolower($i)
            if(l~/^types:/) t=$i; if(l~/^suites:/) s=$i; if(l~/^enabled:[ \t]*no/) en="no" }
          if (t~/[ \t]deb([ \t]|$)/ && s~/[ \t]bookworm/ && en=="yes") {
            for(i=1;i<=NF;i++){ if(tolower($i)~/^types:/) print "Types: deb-src"; else print $i }
            print "" } }' "$f")"$'\n'
    done
    oneline="$(grep -hsE '^[[:space:]]*deb[[:space:]].*[[:space:]]bookworm' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed -E 's/^([[:space:]]*)deb([[:space:]])/\1deb-src\2/' || true)"
    if [[ -n "${deb822//[[:space:]]/}" ]]; then
      log "adding deb-src entries (deb822) in $DEB_SRC_FILE.sources"
      printf '# Added by typha-rs scripts/test-apiserver.sh for "apt-get source kubernetes".\n%s' \
        "$deb822" | as_root tee "$DEB_SRC_FILE.sources" >/dev/null
    fi
    if [[ -n "$oneline" ]]; then
      log "adding deb-src lines in $DEB_SRC_FILE.list"
      printf '# Added by typha-rs scripts/test-apiserver.sh for "apt-get source kubernetes".\n%s\n' \
        "$oneline" | as_root tee "$DEB_SRC_FILE.list" >/dev/null
    fi
    [[ -n "${deb822//[[:space:]]/}" || -n "$oneline" ]] ||
      die "no bookworm apt source found to derive a deb-src entry from"
  fi
  log "apt-get update (for the deb-src index)"
  as_root apt-get update >&2 || die "apt-get update failed"
  apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes' ||
    die "apt-cache showsrc kubernetes finds nothing even with deb-src entries"
}

# v1.20.2 from Debian's kubernetes source package, with Debian's Go 1.19: the source predates
# Go modules as the v1.37 tree uses them, and newer Go releases reject parts of it.
build_legacy() {
  local buildlog="$BUILD_DIR/build-kube-apiserver.log" t0 t1 bin
  bin="$BIN_DIR/kube-apiserver-$LEGACY_VERSION"
  mkdir -p "$BUILD_DIR" "$BIN_DIR"
  : >"$buildlog"
  t0=$(date +%s)
  [[ -x "$LEGACY_GO_BIN/go" ]] || die "$LEGACY_GO_BIN/go missing (Debian package golang-1.19-go)"
  log "building kube-apiserver $LEGACY_VERSION from Debian's kubernetes source package; log: $buildlog"

  ensure_deb_src
  local srcver upstream
  srcver="$(apt-cache showsrc kubernetes | awk '/^Version:/{print $2}' | sort -V | tail -n1)"
  upstream="${srcver#*:}"
  upstream="${upstream%-*}"
  upstream="${upstream##*really}"
  [[ "$upstream" == 1.20.* ]] || die "Debian's kubernetes source is $srcver (upstream $upstream), not 1.20.x"
  [[ "v$upstream" == "$LEGACY_VERSION" ]] ||
    log "warning: source is $upstream but the binary is cached as $LEGACY_VERSION"
  log "source package: kubernetes $srcver (upstream $upstream)"

  local src
  src="$(find "$BUILD_DIR" -maxdepth 1 -type d -name "kubernetes-*" | sort | tail -n1)"
  if [[ -z "$src" || ! -f "$src/.typha-source-$srcver" ]]; then
    [[ -n "$src" ]] && rm -rf "$src"
    (cd "$BUILD_DIR" && apt-get source "kubernetes=$srcver") >>"$buildlog" 2>&1 ||
      die "apt-get source kubernetes=$srcver failed (see $buildlog)"
    src="$(find "$BUILD_DIR" -maxdepth 1 -type d -name "kubernetes-*" | sort | tail -n1)"
    [[ -n "$src" && -f "$src/Makefile" ]] || die "no kubernetes source tree under $BUILD_DIR"
    touch "$src/.typha-source-$srcver"
  fi

  # The trap: the vendored github.com/modern-go/reflect2 v1.0.1 relies on runtime internals that
  # changed in Go 1.18, and kube-apiserver built with it segfaults as soon as a CRD is created
  # (json-iterator -> reflect2 -> unsafe map iteration). Debian ships v1.0.2, which fixes it.
  [[ -f "$REFLECT2_SRC/reflect2.go" ]] || die "$REFLECT2_SRC missing (golang-github-modern-go-reflect2-dev)"
  [[ -d "$src/vendor/github.com/modern-go" ]] || die "$src has no vendor/github.com/modern-go"
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$src/vendor/github.com/modern-go/reflect2"
  find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name 'LICENSE' \) \
    ! -name '*_test.go' -exec cp -L {} "$src/vendor/github.com/modern-go/reflect2/" \;
  log "vendor/github.com/modern-go/reflect2 replaced with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"

  # Version stamping: there is no .git in a source package, so hand hack/lib/version.sh the values.
  local major minor
  major="${upstream%%.*}"
  minor="${upstream#*.}"
  minor="${minor%%.*}"
  cat >"$BUILD_DIR/version.env" <<EOF
KUBE_GIT_VERSION='v$upstream'
KUBE_GIT_MAJOR='$major'
KUBE_GIT_MINOR='$minor'
KUBE_GIT_TREE_STATE='archive'
EOF

  log "make WHAT=cmd/kube-apiserver with $("$LEGACY_GO_BIN/go" version) (GOFLAGS=-mod=vendor GOPROXY=off; takes minutes)"
  if ! (cd "$src" && env PATH="$LEGACY_GO_BIN:$PATH" GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on GOTOOLCHAIN=local \
    KUBE_GIT_VERSION_FILE="$BUILD_DIR/version.env" make WHAT=cmd/kube-apiserver) >>"$buildlog" 2>&1; then
    tail -n 30 "$buildlog" >&2
    die "kube-apiserver build failed (full log: $buildlog)"
  fi
  local out
  out="$src/_output/local/bin/linux/$("$LEGACY_GO_BIN/go" env GOARCH)/kube-apiserver"
  [[ -x "$out" ]] || out="$src/_output/bin/kube-apiserver"
  [[ -x "$out" ]] || die "build finished but no kube-apiserver binary under $src/_output (see $buildlog)"
  install -m 0755 "$out" "$bin.tmp"
  mv -f "$bin.tmp" "$bin"
  binary_is "$bin" "$LEGACY_VERSION" || die "$bin --version does not report Kubernetes $LEGACY_VERSION"
  t1=$(date +%s)
  echo "build-seconds: $((t1 - t0))" >>"$buildlog"
  log "built $("$bin" --version) in $((t1 - t0)) s ($(du -h "$bin" | cut -f1)) -> $bin"
  log "reflect2: $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
}

install_current() {
  if binary_is "$BIN_DIR/kube-apiserver-$CURRENT_VERSION" "$CURRENT_VERSION" &&
    kubectl_ok "$(kubectl_cached "$CURRENT_VERSION")" "$CURRENT_VERSION"; then
    log "cached: kube-apiserver and kubectl $CURRENT_VERSION in $BIN_DIR; skipping the build"
  else
    build_current
  fi
}

install_legacy() {
  ensure_legacy_kubectl
  if binary_is "$BIN_DIR/kube-apiserver-$LEGACY_VERSION" "$LEGACY_VERSION"; then
    log "cached: kube-apiserver $LEGACY_VERSION in $BIN_DIR; skipping the build"
  else
    build_legacy
  fi
}

cmd_install() {
  local which="${1:-all}"
  apt_install "${APT_PACKAGES[@]}"
  case "$which" in
    all) install_current && install_legacy ;;
    current | "$CURRENT_VERSION") install_current ;;
    v1.20 | "$LEGACY_VERSION") install_legacy ;;
    *) die "install: unknown server '$which' (current, v1.20 or all)" ;;
  esac
  log "etcd: $(etcd --version 2>/dev/null | head -n1)"
  local v
  for v in "$CURRENT_VERSION" "$LEGACY_VERSION"; do
    binary_is "$BIN_DIR/kube-apiserver-$v" "$v" && log "kube-apiserver $v: $BIN_DIR/kube-apiserver-$v"
    kubectl_ok "$(kubectl_cached "$v")" "$v" && log "kubectl $v: $(kubectl_cached "$v")"
  done
  log "install: OK"
}

# ---------------------------------------------------------------------------------------------
# start / stop / restart-apiserver / compact / crds / rbac
# ---------------------------------------------------------------------------------------------

# The kubectl that matches the server of DIR/env (its KUBECTL), else the cached one of the
# current release.
kubectl_bin() {
  if [[ -n "${KUBECTL:-}" && -x "$KUBECTL" ]]; then
    echo "$KUBECTL"
  elif kubectl_ok "$(kubectl_cached "$CURRENT_VERSION")" "$CURRENT_VERSION"; then
    kubectl_cached "$CURRENT_VERSION"
  else
    die "no kubectl $CURRENT_VERSION in $BIN_DIR: run '$0 install'"
  fi
}

resolve_dir() {
  [[ -n "${1:-}" ]] || die "missing DIR argument"
  mkdir -p "$1"
  local d
  d="$(cd "$1" && pwd)"
  [[ "$d" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR must be a plain path (letters, digits, ._/+-): $d"
  echo "$d"
}

load_env() {
  [[ -f "$1/env" ]] || die "$1/env not found: was '$0 start $1' run?"
  # shellcheck disable=SC1091
  source "$1/env"
}

# Is PID alive and running a command whose argv[0] contains NAME? (guards against pid reuse)
pid_is() {
  local pid="$1" name="$2" argv0
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1 || true)"
  [[ "$argv0" == *"$name"* ]]
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A TCP port on 127.0.0.1 that nothing listens on, not in the list of ports already taken.
# Chosen below the kernel's ephemeral range: a port in that range can be free when checked and
# then taken as the source port of some outgoing connection (tests open thousands) before etcd
# or the API server binds it.
free_port() {
  local p i taken=" $* " lo=10000 hi eph_lo
  eph_lo="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
  hi=$((eph_lo - 1))
  if ((hi - lo < 1000)); then lo=20000; hi=60000; fi
  for ((i = 0; i < 200; i++)); do
    p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
    [[ "$taken" == *" $p "* ]] && continue
    port_in_use "$p" && continue
    echo "$p"
    return 0
  done
  die "no free port found"
}

# Is PID, a process this script just launched, still running? Unlike pid_is this does not look
# at argv[0]: right after `setsid BIN &` the child may not have exec'd BIN yet (on a busy
# machine, long enough to be seen), and a child that exited is a zombie or gone.
alive_pid() {
  local pid="$1" state
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
  [[ -n "$state" && "$state" != Z ]]
}

stop_pid() {
  local pid="$1" name="$2" i
  pid_is "$pid" "$name" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_is "$pid" "$name" || return 0
    sleep 0.2
  done
  log "$name (pid $pid) did not stop after 20 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_is "$pid" "$name" || return 0
    sleep 0.1
  done
  die "$name (pid $pid) is still running"
}

gen_credentials() {
  local dir="$1"
  (
    umask 077
    cd "$dir"
    if [[ ! -f ca.crt || ! -f apiserver.crt || ! -f apiserver.key ]]; then
      cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = typha-rs-test
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc
EOF
      openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt -days 3650 \
        -subj "/CN=typha-rs-test-ca" -config openssl.cnf -extensions v3_ca 2>/dev/null
      openssl req -new -nodes -newkey rsa:2048 -keyout apiserver.key -out apiserver.csr \
        -subj "/CN=kube-apiserver" -config openssl.cnf 2>/dev/null
      openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out apiserver.crt -days 3650 -extfile openssl.cnf -extensions v3_server 2>/dev/null
      rm -f apiserver.csr
    fi
    if [[ ! -f sa.key || ! -f sa.pub ]]; then
      openssl genrsa -out sa.key 2048 2>/dev/null
      openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    fi
    if [[ ! -f admin-token ]]; then
      openssl rand -hex 32 >admin-token
    fi
    printf '%s,admin,admin,"system:masters"\n' "$(cat admin-token)" >tokens.csv
  ) || die "generating credentials in $dir failed"
}

write_env() {
  local dir="$1"
  cat >"$dir/env.tmp" <<EOF
KUBECONFIG=$dir/kubeconfig
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
ADMIN_TOKEN=$ADMIN_TOKEN
APISERVER_PID=$APISERVER_PID
ETCD_PID=$ETCD_PID
APISERVER_PORT=$APISERVER_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_CA=$dir/ca.crt
APISERVER_VERSION=$RELEASE
KUBECTL=$(kubectl_cached "$RELEASE")
TEST_APISERVER_DIR=$dir
EOF
  chmod 600 "$dir/env.tmp"
  mv -f "$dir/env.tmp" "$dir/env"
}

write_kubeconfig() {
  local dir="$1"
  (
    umask 077
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: typha-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$dir/ca.crt")
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: typha-test
  context:
    cluster: typha-test
    user: admin
current-context: typha-test
EOF
  )
}

launch_apiserver() {
  local dir="$1" args=() bin
  mapfile -t args <"$dir/apiserver.args"
  # restart-apiserver runs the binary that start ran, even if KUBE_APISERVER_BIN is unset now.
  bin="$(cat "$dir/apiserver.bin")"
  port_in_use "$APISERVER_PORT" && die "port 127.0.0.1:$APISERVER_PORT is already in use"
  setsid "$bin" "${args[@]}" </dev/null >>"$dir/apiserver.log" 2>&1 &
  APISERVER_PID=$!
}

launch_etcd() {
  local dir="$1" args=()
  mapfile -t args <"$dir/etcd.args"
  port_in_use "$ETCD_PORT" && die "port 127.0.0.1:$ETCD_PORT is already in use"
  setsid etcd "${args[@]}" </dev/null >>"$dir/etcd.log" 2>&1 &
  ETCD_PID=$!
}

wait_etcd_healthy() {
  local dir="$1" deadline=$((SECONDS + 30))
  until curl -s --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; do
    if ! alive_pid "$ETCD_PID"; then
      tail -n 30 "$dir/etcd.log" >&2
      die "etcd exited during startup (log: $dir/etcd.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$dir/etcd.log" >&2
      die "etcd not healthy within 30 s (log: $dir/etcd.log)"
    fi
    sleep 0.2
  done
}

wait_apiserver_ready() {
  local dir="$1" deadline=$((SECONDS + READY_TIMEOUT)) out=""
  local curl_args=(-s --max-time 5 --cacert "$dir/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN")
  while ((SECONDS < deadline)); do
    if ! alive_pid "$APISERVER_PID"; then
      tail -n 40 "$dir/apiserver.log" >&2
      die "kube-apiserver exited during startup (log: $dir/apiserver.log)"
    fi
    out="$(curl "${curl_args[@]}" "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null || true)"
    if [[ "$out" == ok ]] &&
      curl "${curl_args[@]}" -o /dev/null -w '%{http_code}' \
        "https://127.0.0.1:$APISERVER_PORT/api/v1/namespaces/kube-system" 2>/dev/null | grep -q '^200$'; then
      return 0
    fi
    sleep 0.5
  done
  curl "${curl_args[@]}" "https://127.0.0.1:$APISERVER_PORT/readyz?verbose" >&2 2>/dev/null || true
  tail -n 40 "$dir/apiserver.log" >&2
  die "kube-apiserver not ready (readyz + kube-system namespace) within ${READY_TIMEOUT}s (log: $dir/apiserver.log)"
}

cmd_start() {
  local dir bin
  dir="$(resolve_dir "${1:-}")"
  RELEASE="$(release_of "${2:-current}")"
  bin="$(apiserver_bin "$RELEASE")"
  binary_is "$bin" "$RELEASE" || die "no kube-apiserver $RELEASE at $bin: run '$0 install' first"
  kubectl_ok "$(kubectl_cached "$RELEASE")" "$RELEASE" ||
    die "no kubectl $RELEASE in $BIN_DIR: run '$0 install' first"
  command -v etcd >/dev/null || die "no etcd: run '$0 install' first"

  APISERVER_PORT="" ETCD_PORT="" ETCD_PEER_PORT="" APISERVER_PID="" ETCD_PID=""
  if [[ -f "$dir/env" ]]; then
    load_env "$dir"
    if pid_is "$ETCD_PID" etcd || pid_is "$APISERVER_PID" kube-apiserver; then
      die "already running in $dir (ETCD_PID=$ETCD_PID APISERVER_PID=$APISERVER_PID): '$0 stop $dir' first"
    fi
    # Same DIR again: keep the ports when they are still free, so the kubeconfig stays valid.
    for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT; do
      if [[ -n "${!v}" ]] && port_in_use "${!v}"; then printf -v "$v" '%s' ""; fi
    done
  fi
  [[ -n "$ETCD_PORT" ]] || ETCD_PORT="$(free_port "$ETCD_PEER_PORT" "$APISERVER_PORT")"
  [[ -n "$ETCD_PEER_PORT" ]] || ETCD_PEER_PORT="$(free_port "$ETCD_PORT" "$APISERVER_PORT")"
  [[ -n "$APISERVER_PORT" ]] || APISERVER_PORT="$(free_port "$ETCD_PORT" "$ETCD_PEER_PORT")"

  gen_credentials "$dir"
  ADMIN_TOKEN="$(cat "$dir/admin-token")"
  # A failed start leaves nothing running.
  trap 'if [[ -z "${START_OK:-}" ]]; then stop_pid "${APISERVER_PID:-}" kube-apiserver; stop_pid "${ETCD_PID:-}" etcd; log "start failed; stopped what it had started"; fi' EXIT

  # etcd: single member, loopback only. The arguments are kept for start-etcd.
  log "starting etcd on 127.0.0.1:$ETCD_PORT (peer $ETCD_PEER_PORT), data $dir/etcd"
  cat >"$dir/etcd.args" <<EOF
--name=typha-test
--data-dir=$dir/etcd
--listen-client-urls=http://127.0.0.1:$ETCD_PORT
--advertise-client-urls=http://127.0.0.1:$ETCD_PORT
--listen-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT
--initial-advertise-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT
--initial-cluster=typha-test=http://127.0.0.1:$ETCD_PEER_PORT
--initial-cluster-state=new
--initial-cluster-token=typha-test
--logger=zap
--log-outputs=stderr
EOF
  launch_etcd "$dir"
  APISERVER_PID=""
  write_env "$dir"
  wait_etcd_healthy "$dir"

  # kube-apiserver: flags explained in docs/test-apiserver.md.
  cat >"$dir/apiserver.args" <<EOF
--bind-address=127.0.0.1
--advertise-address=127.0.0.1
--secure-port=$APISERVER_PORT
--tls-cert-file=$dir/apiserver.crt
--tls-private-key-file=$dir/apiserver.key
--token-auth-file=$dir/tokens.csv
--authorization-mode=RBAC
--service-account-key-file=$dir/sa.pub
--service-account-signing-key-file=$dir/sa.key
--service-account-issuer=https://kubernetes.default.svc
--disable-admission-plugins=ServiceAccount
--endpoint-reconciler-type=none
--service-cluster-ip-range=10.96.0.0/16
--etcd-servers=http://127.0.0.1:$ETCD_PORT
--allow-privileged=true
EOF
  if [[ "$RELEASE" == "$LEGACY_VERSION" ]]; then
    # Removed in 1.24; v1.20 would otherwise also serve plain HTTP on 127.0.0.1:8080.
    echo "--insecure-port=0" >>"$dir/apiserver.args"
  fi
  if [[ -n "${TEST_APISERVER_EXTRA_ARGS:-}" ]]; then
    tr ' ' '\n' <<<"$TEST_APISERVER_EXTRA_ARGS" | sed '/^$/d' >>"$dir/apiserver.args"
  fi
  echo "$bin" >"$dir/apiserver.bin"
  log "starting kube-apiserver $RELEASE on https://127.0.0.1:$APISERVER_PORT"
  launch_apiserver "$dir"
  write_env "$dir"
  write_kubeconfig "$dir"
  wait_apiserver_ready "$dir"
  START_OK=1
  log "ready: $dir/env"
  cat "$dir/env"
}

cmd_stop() {
  local dir
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  stop_pid "${APISERVER_PID:-}" kube-apiserver
  stop_pid "${ETCD_PID:-}" etcd
  log "stopped (apiserver pid ${APISERVER_PID:-none}, etcd pid ${ETCD_PID:-none})"
}

# Rewrites DIR/env keeping RELEASE (write_env needs it).
rewrite_env() {
  RELEASE="$APISERVER_VERSION"
  write_env "$1"
}

cmd_stop_apiserver() {
  local dir
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  stop_pid "$APISERVER_PID" kube-apiserver
  local deadline=$((SECONDS + 30))
  while port_in_use "$APISERVER_PORT"; do
    ((SECONDS < deadline)) || die "port $APISERVER_PORT still in use after stopping the API server"
    sleep 0.2
  done
  echo "---- stopped $(date -Is) ----" >>"$dir/apiserver.log"
  log "kube-apiserver stopped (pid $APISERVER_PID)"
}

cmd_restart_apiserver() {
  local dir
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  pid_is "$ETCD_PID" etcd || die "etcd (pid $ETCD_PID) is not running: use '$0 start $dir'"
  cmd_stop_apiserver "$dir"
  echo "---- restart $(date -Is) ----" >>"$dir/apiserver.log"
  launch_apiserver "$dir"
  rewrite_env "$dir"
  wait_apiserver_ready "$dir"
  log "kube-apiserver restarted (pid $APISERVER_PID) on https://127.0.0.1:$APISERVER_PORT"
}

cmd_stop_etcd() {
  local dir
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  stop_pid "$ETCD_PID" etcd
  echo "---- stopped $(date -Is) ----" >>"$dir/etcd.log"
  log "etcd stopped (pid $ETCD_PID)"
}

cmd_start_etcd() {
  local dir
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  pid_is "$ETCD_PID" etcd && die "etcd (pid $ETCD_PID) is already running"
  echo "---- start $(date -Is) ----" >>"$dir/etcd.log"
  # The member exists now: its data directory, not the initial-cluster flags, says who it is.
  launch_etcd "$dir"
  rewrite_env "$dir"
  wait_etcd_healthy "$dir"
  log "etcd started (pid $ETCD_PID) on 127.0.0.1:$ETCD_PORT"
}

cmd_compact() {
  local dir rev
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  command -v etcdctl >/dev/null || apt_install etcd-client
  rev="$(ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINT" endpoint status --write-out=json |
    jq -r '.[0].Status.header.revision')"
  [[ "$rev" =~ ^[0-9]+$ ]] || die "could not read etcd's revision (got '$rev')"
  ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINT" compact "$rev" --physical >&2 ||
    die "etcdctl compact $rev failed"
  log "etcd compacted to revision $rev"
  echo "$rev"
}

cmd_crds() {
  local dir k
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  k="$(kubectl_bin)"
  local names
  # Not recursive: deploy/crds/examples/ holds sample objects, applied by the tests themselves.
  names="$("$k" --kubeconfig "$KUBECONFIG" apply -o name -f "$REPO_ROOT/deploy/crds/")" ||
    die "applying deploy/crds/ failed"
  # shellcheck disable=SC2086
  "$k" --kubeconfig "$KUBECONFIG" wait --for condition=established --timeout=60s $names >&2 ||
    die "CRDs not Established within 60 s"
  log "all $(wc -w <<<"$names") CRDs in deploy/crds/ are Established"
}

cmd_rbac() {
  local dir k
  dir="$(resolve_dir "${1:-}")"
  load_env "$dir"
  k="$(kubectl_bin)"
  "$k" --kubeconfig "$KUBECONFIG" apply -f "$REPO_ROOT/deploy/rbac.yaml" >&2 || die "applying deploy/rbac.yaml failed"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart-apiserver) cmd_restart_apiserver "$@" ;;
    stop-apiserver) cmd_stop_apiserver "$@" ;;
    stop-etcd) cmd_stop_etcd "$@" ;;
    start-etcd) cmd_start_etcd "$@" ;;
    compact) cmd_compact "$@" ;;
    crds) cmd_crds "$@" ;;
    rbac) cmd_rbac "$@" ;;
    -h | --help | help | "") usage ;;
    *)
      log "unknown subcommand: $cmd"
      usage
      ;;
  esac
}

main "$@"
