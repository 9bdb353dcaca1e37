# syntax=docker/dockerfile:1
# The gateway image used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the registry and the compiled dependencies between builds, so a code
# change recompiles only the workspace's own crates. The target dir lives in the cache, so the
# binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p chat-gateway \
    && cp target/release/chat-gateway /usr/local/bin/chat-gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chat
COPY --from=build /usr/local/bin/chat-gateway /usr/local/bin/chat-gateway
# Never root: the gateway needs no privilege (it listens above 1024 and writes nothing to disk).
USER chat
# Ready means: Redis answers and the node is not draining (see /readyz in docs/architecture.md).
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS "http://${CHAT__SERVER__LISTEN:-127.0.0.1:8080}/readyz" || exit 1
ENTRYPOINT ["/usr/local/bin/chat-gateway"]
