# syntax=docker/dockerfile:1
# mailvault's image: one binary, /mailvault, for the operator (`operator`), its archiving
# Jobs (`worker`) and the CLI. Build from the repository root:
#   docker build -t mailvault:dev .
# Both architectures of a release (cross-compiled, not emulated):
#   docker buildx build --platform linux/amd64,linux/arm64 -t IMAGE:TAG --push .
# The binary's line tables, for symbolising a backtrace, as a file per architecture:
#   docker buildx build --platform ... --target debuginfo --output type=local,dest=out .

# The toolchain the project is developed and tested with; rust-version in Cargo.toml is
# the oldest that builds it. The build runs on the builder's own platform and compiles for
# the target's.
ARG RUST_VERSION=1.95
FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
# The Rust target and the GNU tools for the image's architecture; a cross C compiler and
# linker (Debian 12's, glibc 2.36 like the runtime image) when it is not the builder's.
RUN set -eu; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    case "$arch" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; pkg=x86-64-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; pkg=aarch64-linux-gnu ;; \
      *) echo "unsupported architecture $arch" >&2; exit 1 ;; \
    esac; \
    if [ "$arch" != "$(dpkg --print-architecture)" ]; then \
      apt-get update -q; \
      apt-get install -y -q --no-install-recommends "gcc-$pkg" "libc6-dev-$arch-cross"; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    rustup target add "$triple"; \
    echo "$triple" >/triple; echo "$gnu" >/gnu
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY operator ./operator
# Caches keep the registry and the build between image builds; the binary leaves the cache
# in the same step. TLS is rustls (ring), so the binary needs no OpenSSL at run time. Built
# with line tables, which then move to /mailvault.debug: the image gets the stripped binary
# (what the release profile builds), the debuginfo stage the rest.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; triple=$(cat /triple); gnu=$(cat /gnu); \
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
      CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
      CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
      CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc; \
    cargo build --release --locked --bin mailvault --target "$triple" \
      --config 'profile.release.debug="line-tables-only"' --config 'profile.release.strip=false'; \
    cp "target/$triple/release/mailvault" /mailvault; \
    "$gnu-objcopy" --only-keep-debug /mailvault /mailvault.debug; \
    "$gnu-objcopy" --strip-all --add-gnu-debuglink=/mailvault.debug /mailvault

FROM scratch AS debuginfo
COPY --from=build /mailvault.debug /

# glibc, libgcc and CA certificates, no shell, no package manager; Debian 12 like the build.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /mailvault /mailvault
# The "nonroot" user (65532), which the Deployment and the archiving pods also run as.
USER 65532:65532
ENTRYPOINT ["/mailvault"]
