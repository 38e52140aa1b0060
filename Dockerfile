# syntax=docker/dockerfile:1
#
# nestdock's image: docker build -t nestdock:0.1.0 .
#
# Stage 1 builds the release binary with scripts/build-release.sh, the same
# command CI runs (one cargo profile, the default features, Cargo.lock). The
# builder is Debian bookworm so that the binary's glibc matches the runtime's.
#
# Stage 2 is distroless cc-debian12: glibc and libgcc_s (which the binary links)
# and CA certificates; no shell, no package manager. It runs as uid 65532
# ("nonroot"), numerically, so that Kubernetes' runAsNonRoot can verify it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and compiled dependencies between
# builds; the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bin=$(bash scripts/build-release.sh) \
    && install -D -m 0755 "$bin" /out/nestdock \
    && /out/nestdock --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/nestdock /usr/local/bin/nestdock
USER 65532:65532
# 8443: the webhook (HTTPS); 9090: metrics.
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/nestdock"]
# The paths manifests/base mounts the Secret at; the Deployment passes its own args.
CMD ["serve", "--listen=0.0.0.0:8443", "--tls-cert=/etc/nestdock/tls/tls.crt", "--tls-key=/etc/nestdock/tls/tls.key"]
