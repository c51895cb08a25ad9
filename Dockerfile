# syntax=docker/dockerfile:1
# One image for the three binaries: tether-controlplane, tether-agent and
# tetherctl. Pick one with the command, e.g.
#   docker run --rm tether tether-agent --help
# Build from the repository root: docker build -t tether .
# (docs/install-kubernetes.md; podman and buildah read this file too).

# Rust 1.95 on Debian 12, the same glibc as the runtime stage below.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds; the
# binaries are copied out because a cache mount is gone after this step.
# protoc comes from the protoc-bin-vendored crate: no system packages needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --bin tether-controlplane --bin tether-agent --bin tetherctl \
 && mkdir -p /out \
 && cp target/release/tether-controlplane target/release/tether-agent \
       target/release/tetherctl /out/

# distroless/cc: glibc, libgcc, CA certificates and a nonroot user (65532),
# no shell and no package manager. The binaries link only glibc (SQLite is
# bundled, TLS is rustls).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
WORKDIR /home/nonroot
# The control plane's gRPC (TLS) and ops HTTP ports.
EXPOSE 8443 8080
CMD ["tether-controlplane", "--help"]
