# syntax=docker/dockerfile:1
# Static, non-root image of inbox-operator.
#   make image IMAGE=REGISTRY/inbox-operator:TAG      (docker, or CONTAINER_TOOL=podman)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/inbox-operator:TAG --push .
# The binary is linked statically against musl (TLS is rustls with ring: no OpenSSL), so the
# final image needs no libc. The build stage runs on the target platform, so
# `docker buildx build --platform linux/arm64` builds an aarch64 binary (under emulation).

FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# musl-gcc, for the C and assembly parts of ring. Debian bookworm's version; not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
# The workspace's manifests name every member; only the operator is built (it contains no
# simulator and no test helper: sim/, testkit/ and bench/ are copied so that the workspace loads).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sim ./sim
COPY testkit ./testkit
COPY bench ./bench
# Cache mounts keep the crate registry and compiled dependencies between builds (BuildKit).
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && export "CC_$(echo "$target" | tr - _)=musl-gcc" \
 && cargo build --release --locked --target "$target" -p inbox-operator --bin inbox-operator \
 && cp "target/$target/release/inbox-operator" /inbox-operator

FROM gcr.io/distroless/static-debian12:nonroot
# Set by `make image` from git: the version (tag or describe), the commit, and the source.
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/inbox-operator/inbox-operator
LABEL org.opencontainers.image.title="inbox-operator" \
      org.opencontainers.image.description="Kubernetes operator for AgentSend email inboxes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /inbox-operator /inbox-operator
# distroless "nonroot": uid/gid 65532. Numeric, so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/inbox-operator"]
CMD ["run"]
