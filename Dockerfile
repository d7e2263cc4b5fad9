# syntax=docker/dockerfile:1
# mailvault's image: one binary, /mailvault, for the operator (`operator`), its archiving
# Jobs (`worker`) and the CLI. Build from the repository root:
#   docker build -t mailvault:dev .

# The toolchain the project is developed and tested with; rust-version in Cargo.toml is
# the oldest that builds it.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY operator ./operator
# Caches keep the registry and the build between image builds; the binary leaves the cache
# in the same step. TLS is rustls (ring), so the binary needs no OpenSSL at run time.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mailvault \
    && cp target/release/mailvault /mailvault

# glibc, libgcc and CA certificates, no shell, no package manager; Debian 12 like the build.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /mailvault /mailvault
# The "nonroot" user (65532), which the Deployment and the archiving pods also run as.
USER 65532:65532
ENTRYPOINT ["/mailvault"]
