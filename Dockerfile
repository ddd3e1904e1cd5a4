# syntax=docker/dockerfile:1
# typha-rs container image: build in the Rust image, run from distroless (glibc, no shell, no
# package manager, uid 65532). Build from the repository root:
#
#   docker build -t <registry>/typha-rs:<version> .
#
# The image runs `typha` (the daemon); `typha client ...` is the debugging client in the same
# binary, e.g. `kubectl -n kube-system exec deploy/calico-typha -- typha client --addr
# 127.0.0.1:5473 --digest --quiet-updates`.

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace (the load-test crate is a member); .dockerignore keeps target/ and the
# like out of the context.
COPY . .
# Cache mounts keep the crate registry and the target directory between builds; the binary is
# copied out of the cached target directory because the mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin typha \
    && install -D -m 0755 target/release/typha /out/typha

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/typha /usr/local/bin/typha
# The same ports as Calico's Typha: protocol, health, metrics.
EXPOSE 5473 9098 9093
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/typha"]
