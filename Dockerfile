# HEXray's evaluator as a container image: `hexray serve` with the page, the wasm client and the
# models, running as an unprivileged user. Build from the repository root:
#
#   docker build -t hexray:latest .
#
# Stage 1 builds the server and the browser client; stage 2 keeps only what runs.
FROM rust:1.92-bookworm AS build
WORKDIR /src
# The wasm target and the wasm-bindgen CLI matching the crate that wasm-client pins.
RUN rustup target add wasm32-unknown-unknown
COPY wasm-client/Cargo.toml wasm-client/Cargo.toml
RUN cargo install --locked wasm-bindgen-cli \
      --version "$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' wasm-client/Cargo.toml)"
COPY . .
RUN cargo build --release --locked -p hexray-evaluator --bin hexray \
 && bash scripts/build-web.sh

FROM debian:bookworm-slim
# No shell tools beyond the base image's; certificates for a TLS connection to PostgreSQL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/hexray --create-home hexray
COPY --from=build /src/target/release/hexray /usr/local/bin/hexray
COPY --from=build /src/web /opt/hexray/web
# The models this image serves. The model owner's network stays on the server side: clients
# receive only each model's client spec.
COPY models/pneumonia-a.hexray models/pneumonia-mlp-64.hexray /opt/hexray/models/
USER 10001:10001
WORKDIR /var/lib/hexray
# Off loopback, `hexray serve` needs HEXRAY_TOKENS_FILE (or HEXRAY_ALLOW_OPEN behind an
# authenticating proxy); it refuses to start otherwise. HEXRAY_DATABASE_URL makes nodes share
# keys and jobs (see docs/scaling.md).
ENV HEXRAY_BIND=0.0.0.0:8080 \
    HEXRAY_WEB_DIR=/opt/hexray/web \
    HEXRAY_MODELS_DIR=/opt/hexray/models \
    HEXRAY_DATA_DIR=/var/lib/hexray/data \
    RUST_LOG=info
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hexray", "serve"]
