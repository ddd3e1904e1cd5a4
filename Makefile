# typha-rs. The two commands a fresh machine needs: `make run` and `make test`.

CARGO ?= cargo
# Extra arguments for the daemon under `make run`, e.g. ARGS="--sim-endpoints 50000".
ARGS ?=

.PHONY: run build test lint fmt bench bench-codecs bench-report doc clean deps apiserver benchdeps image interop

## Build in release and run the daemon on the embedded sim datastore.
run: deps
	$(CARGO) build --release --bin typha
	./target/release/typha --datastore-type sim --server-port 5473 --health-host 127.0.0.1 $(ARGS)

build: deps
	$(CARGO) build --release --workspace --all-targets

## Everything CI checks: formatting, lints, every test. The Kubernetes datastore tests need a
## real kube-apiserver + etcd: `scripts/test-apiserver.sh install` installs Debian's packages and
## builds, once, the current kube-apiserver and kubectl from the k8s.io/kubernetes Go module and
## kube-apiserver v1.20.2 from Debian's source (cached under ~/.cache/typha-rs; see
## docs/test-apiserver.md for the times).
test: deps apiserver benchdeps interop
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p typha --all-targets --features fault-injection -- -D warnings
	$(CARGO) test --workspace --all-targets
	$(CARGO) test -p typha --features fault-injection --test process_faults --test health
	$(CARGO) test --workspace --doc

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Criterion benchmarks (encode a batch, fan out to N sinks, snapshot encode+compress).
bench: deps
	$(CARGO) bench --bench fanout

## The codec comparison table of docs/benchmarks-codecs-and-micro.md.
bench-codecs: deps
	$(CARGO) run --release --example codecs

# Options for `typha-loadtest bench-report`, e.g. BENCH_ARGS=--quick (the smoke matrix), or
# BENCH_ARGS="--calico-typha-bin PATH" (Calico's Typha for its cells; also CALICO_TYPHA_BIN).
BENCH_ARGS ?=
BENCH_TARGET_DIR = $${CARGO_TARGET_DIR:-target}

## The generated benchmark report docs/benchmarks.md (+ docs/benchmarks/results.json and *.png):
## the load-test matrix against Redis, NATS, a bare writer and direct API-server watchers
## (about 25 minutes on 2 cores).
bench-report: deps apiserver
	$(CARGO) build --release --workspace
	bash scripts/install-bench-deps.sh
	bash scripts/install-bench-fonts.sh
	"$(BENCH_TARGET_DIR)/release/typha-loadtest" bench-report --repo-root . $(BENCH_ARGS)

doc:
	$(CARGO) doc --no-deps --workspace

clean:
	$(CARGO) clean

apiserver:
	bash scripts/test-apiserver.sh install

## The Go interop suite (Felix's side on Go's own gob and snappy; docs/interop.md), cached under
## ~/.cache/typha-rs/interop; needs Go >= 1.26 and the Go module proxy on a fresh machine.
interop:
	bash scripts/build-interop.sh

## What the comparison tests and the report need: Debian's redis-server and nats-server, and the
## font the plots are drawn with. No-ops when installed.
benchdeps:
	bash scripts/install-bench-deps.sh
	bash scripts/install-bench-fonts.sh

## The container image (needs Docker with BuildKit); IMAGE=<registry>/typha-rs:<version>.
IMAGE ?= typha-rs:latest
image:
	docker build -t $(IMAGE) .

# A Rust toolchain is the only prerequisite of the daemon itself; cargo fetches the crates.
deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }
