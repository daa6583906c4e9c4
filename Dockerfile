# wechat-api container image.
#
#   docker build -t wechat-api .                    # builds the binary in a Rust image
#   docker build --target prebuilt -t wechat-api .  # packages ./wechat-api, built elsewhere
#   DOCKER_BUILDKIT=1 docker build --target binary --output type=local,dest=out .
#                                                   # only the binary, into out/wechat-api
#
# Both builders build every target: the legacy one (DOCKER_BUILDKIT=0; what
# Debian's docker.io 20.10 and docker-compose 1.29 use) and BuildKit.
# tests/container/run.sh builds through `docker-compose build` with each.
#
# Build arguments, for registries that are slow or unreachable (mainland China;
# README, "Build anywhere"):
#   RUNTIME_BASE   the runtime image (any image with glibc >= 2.36)
#   RUST_IMAGE     the build stage's Rust image
#   CARGO_MIRROR   a crates.io index mirror for the build stage's cargo, e.g.
#                  sparse+https://rsproxy.cn/index/ or
#                  sparse+https://mirrors.tuna.tsinghua.edu.cn/crates.io-index/
#   IMAGE_SOURCE   the org.opencontainers.image.source label (unset: no URL claimed)
#
# Runtime base: distroless/cc (glibc, libgcc, CA roots not needed — the binary carries
# its own — no shell, no package manager). The binary needs nothing else: TLS is
# rustls, SQLite is bundled, the health check is the binary. Image size, measured
# with `docker images` (tests/container/run.sh prints it): 18.1 MB on a base of
# glibc alone (3.2 MB, the one CI makes from its host), 14.9 MB of it the binary;
# on distroless/cc, the binary's 14.9 MB plus that image's size (not measured here:
# the test runs offline).
# RUNTIME_BASE can point at any image with glibc (CI uses one made from the host).
#
# The `prebuilt` stage comes first: the legacy builder builds every stage up to
# --target, and a machine that cannot pull a Rust image must not need to. For the
# same reason it must not fail when there is no ./wechat-api (a fresh clone
# building `runtime` passes through it): it copies a pattern, which may match
# nothing. No instruction here is BuildKit-only (no COPY --chmod, no RUN --mount).
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUNTIME_BASE} AS base
ARG IMAGE_SOURCE=""
LABEL org.opencontainers.image.title="wechat-api" \
      org.opencontainers.image.description="WeCom and WeChat Customer Service callbacks over its own TLS, with self-monitoring" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.licenses="MIT"
COPY --chown=1001:1001 docker/layout/app/ /app/
# The MIT licence asks that its text travel with the binary.
COPY LICENSE /usr/share/doc/wechat-api/LICENSE
ENV DATA_DIR=/app/data \
    UPLOAD_DIR=/app/wwwroot/uploadall \
    TLS_CERT_PATH=/app/certs/server.crt \
    TLS_KEY_PATH=/app/certs/server.key \
    HTTPS_PORT=8092
WORKDIR /app
USER 1001:1001
EXPOSE 8092
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/wechat-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/wechat-api"]
CMD ["serve"]

# ./wechat-api, if there is one. `wechat-ap[i]` is a pattern matching exactly that
# name, and a pattern may match nothing only beside a source that exists:
# docker/prebuilt/ (whose only file, .keep, .dockerignore leaves out of the
# context). Without ./wechat-api this image has no binary, and starting it fails
# with `exec: "/usr/local/bin/wechat-api": … no such file or directory`.
FROM base AS prebuilt
COPY --chown=0:0 docker/prebuilt/ wechat-ap[i] /usr/local/bin/

FROM ${RUST_IMAGE} AS build
# Source replacement keeps Cargo.lock's checksums: --locked still holds.
ARG CARGO_MIRROR=""
RUN if [ -n "$CARGO_MIRROR" ]; then \
        mkdir -p "${CARGO_HOME:-/usr/local/cargo}" && \
        printf '[source.crates-io]\nreplace-with = "mirror"\n\n[source.mirror]\nregistry = "%s"\n' "$CARGO_MIRROR" \
            >> "${CARGO_HOME:-/usr/local/cargo}/config.toml"; \
    fi
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wechat-api && \
    install -m 0755 target/release/wechat-api /wechat-api

# The binary alone (BuildKit: --target binary --output type=local,dest=DIR), to
# copy onto a VM that packages it with --target prebuilt and builds nothing.
FROM scratch AS binary
COPY --from=build /wechat-api /wechat-api

# The default target: keep it the last stage.
FROM base AS runtime
# Mode 0755 from the build stage (`install -m 0755`): COPY --chmod is BuildKit-only.
COPY --from=build --chown=0:0 /wechat-api /usr/local/bin/wechat-api
