# syntax=docker/dockerfile:1
#
# l4relay container image.
#
#   docker build -t l4relay .
#   docker run --rm -p 8443:8443 -p 9090:9090 \
#       --stop-timeout 405 --ulimit nofile=1048576:1048576 --read-only --cap-drop ALL \
#       -v "$PWD/my.toml:/etc/l4relay/l4relay.toml:ro" l4relay
#
# --stop-timeout: `docker stop` sends SIGKILL after 10 s by default, which would cut the drain
#   (announce 65 s + deadline 300 s + close spread 10 s + 30 s margin = 405 s, as in
#   systemd/l4relay.service). On Kubernetes: terminationGracePeriodSeconds: 405.
# --ulimit nofile: two sockets per relayed connection plus splice pipes; see LimitNOFILE= in the
#   unit for the arithmetic. Many engines already default to 1048576.
# --read-only / --cap-drop ALL: the daemon writes nothing on disk, and the default ports are above
#   1024, so the container needs no capability. Only a config listening on a port below 1024
#   needs --cap-add NET_BIND_SERVICE.

# --- Build -------------------------------------------------------------------------------------
# The Debian 12 based Rust image: the binary links the same glibc (2.36) as the runtime image
# below and the .deb's target hosts. For reproducible builds, pin this and the runtime image by
# digest in CI.
FROM rust:1-bookworm AS chef
# cargo-chef turns the manifests into a recipe, so dependencies compile in a layer of their own
# that is reused until Cargo.toml or Cargo.lock change. It needs no stub sources, so it does not
# break when targets (the bench binary, tests, benches) are added.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# The cached dependency layer.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin l4relay
# The admin listener must bind 0.0.0.0 inside a container: 127.0.0.1 there is the container's own
# loopback, which neither `docker run -p` nor a Prometheus scraper can reach. The shipped config
# keeps the host default, 127.0.0.1:9090 (on a host, only local tools should reach it); the
# image's copy is rewritten here and validated with the binary just built. It sets no token, so
# off loopback its POST endpoints (drain or ready a server) are off: whoever reaches port 9090
# can read /metrics and /status, and change nothing (check says so, as a warning). To change it,
# mount a config of your own over /etc/l4relay/l4relay.toml (with token_file to use the POSTs).
# tests/admin_safety.rs builds this same file and checks that.
RUN sed 's/"127\.0\.0\.1:9090"/"0.0.0.0:9090"/' config/l4relay.toml > l4relay.container.toml \
    && { grep -q '"0.0.0.0:9090"' l4relay.container.toml \
         || { echo 'config/l4relay.toml: no "127.0.0.1:9090" to rewrite' >&2; exit 1; }; } \
    && target/release/l4relay check --config l4relay.container.toml

# --- Runtime -----------------------------------------------------------------------------------
# debian:bookworm-slim rather than gcr.io/distroless/cc-debian12: the HEALTHCHECK needs an HTTP
# client, distroless has neither a shell nor curl, and l4relay has no health-probe subcommand.
# bookworm-slim ships bash, whose /dev/tcp makes the probe below without adding curl. The cost is
# about 50 MB more and a shell inside the image.
FROM debian:bookworm-slim
# ca-certificates: upstream TLS (rustls) verifies against the system store in /etc/ssl/certs.
# Not version-pinned on purpose: a pin to a Debian revision breaks the build as soon as the
# archive moves on, and CA updates should arrive with each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 l4relay \
    && useradd --system --uid 10001 --gid l4relay --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin l4relay
COPY --from=builder /build/target/release/l4relay /usr/bin/l4relay
COPY --from=builder /build/l4relay.container.toml /etc/l4relay/l4relay.toml
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
# 8443: the default relay listener. 9090: admin HTTP (/healthz /readyz /metrics /status; the POST
# endpoints are off without a token). Publish 9090 only to the scraper.
EXPOSE 8443 9090
# SIGTERM starts the drain (readiness 503, keep accepting, stop accepting, wait, close); the
# daemon runs as PID 1 and installs its own handlers, so no init shim is needed (it spawns no
# children to reap). SIGINT exits at once.
STOPSIGNAL SIGTERM
# Liveness: /healthz over bash's /dev/tcp. Readiness (/readyz, 503 while draining) is the load
# balancer's business, not Docker's: a draining container is healthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ $status == 'HTTP/1.'?' 200'* ]]"]
ENTRYPOINT ["l4relay"]
CMD ["run", "--config", "/etc/l4relay/l4relay.toml"]
