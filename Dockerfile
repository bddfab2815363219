# syntax=docker/dockerfile:1
# pairbus: the three binaries (pairbus-broker, pairbus-agent, pairbus-projector) in a small
# runtime image. Used by docker-compose.yml (`docker compose up --build`); on its own:
#   docker build -t pairbus:local . && docker run --rm -p 127.0.0.1:8080:8080 pairbus:local

# --- builder: the release binaries, from the locked dependency set ---------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The workspace's release profile keeps line tables for profiling; the image does not need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0
COPY . .
# The cache mounts keep the registry and target/ between builds (BuildKit, the default builder).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p pairbus-broker -p pairbus-agent -p pairbus-projector \
    && mkdir -p /out \
    && cp target/release/pairbus-broker target/release/pairbus-agent \
          target/release/pairbus-projector /out/

# --- runtime: the binaries only, run by a non-root user --------------------------------------
FROM debian:bookworm-slim AS runtime
# /data: the broker's data folder (fleet.key, first identities, log/); /devices: identity
# files, QR images and outboxes made by the factory job; /projector: a standalone projector's
# sled. Created here, owned by the runtime user, so that fresh named volumes are writable.
RUN groupadd --system --gid 10001 pairbus \
    && useradd --system --uid 10001 --gid pairbus --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin pairbus \
    && mkdir -p /data /devices /projector \
    && chown pairbus:pairbus /data /devices /projector
COPY --from=builder /out/pairbus-broker /out/pairbus-agent /out/pairbus-projector /usr/local/bin/
USER pairbus
WORKDIR /data
VOLUME ["/data"]
EXPOSE 1883 1884 8080
# Inside a container the broker listens on all the container's interfaces (its network is
# the container network); publish the ports bound to 127.0.0.1 on the host.
CMD ["pairbus-broker", "serve", "--data", "/data", "--device-listen", "0.0.0.0:1883", "--operator-listen", "0.0.0.0:1884", "--http-listen", "0.0.0.0:8080"]
