# Multi-stage build of a small, static, non-root image.
#   docker build -t inbox-operator:dev .
FROM rust:1.95-bookworm AS build
# musl-tools is taken as the base image ships it (unpinned: a bookworm point release).
# hadolint ignore=DL3008
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin inbox-operator \
 && cp target/x86_64-unknown-linux-musl/release/inbox-operator /inbox-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /inbox-operator /inbox-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/inbox-operator"]
CMD ["run"]
