# HEXray's evaluator as a container image: `hexray serve` with the page, the wasm client and the
# models, running as an unprivileged user. Build from the repository root:
#
#   docker build -t hexray:latest .        (or: podman build -t hexray:latest .)
#
# Stage `build` compiles the server and the browser client; the final stage keeps only what
# runs. Both base images are build arguments, so that a site (or the test script) can use its
# own mirror or a local base. `--build-arg ARTEFACTS=IMAGE` takes the binary and the built page
# from IMAGE instead of compiling them (`scripts/container-test.sh` passes one made from the
# host's build, under /src as here, so that CI does not compile TFHE twice): the final stage is
# the same either way.
ARG BUILD_IMAGE=docker.io/library/rust:1.92-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG ARTEFACTS=build

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# The wasm target and the wasm-bindgen CLI matching the crate that wasm-client pins.
RUN rustup target add wasm32-unknown-unknown
COPY wasm-client/Cargo.toml wasm-client/Cargo.toml
RUN cargo install --locked wasm-bindgen-cli \
      --version "$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' wasm-client/Cargo.toml)"
COPY . .
RUN cargo build --release --locked -p hexray-evaluator --bin hexray \
 && bash scripts/build-web.sh

# The binary and the page: from the stage above, or from a prebuilt image.
FROM ${ARTEFACTS} AS artefacts

FROM ${RUNTIME_IMAGE}
# No shell tools beyond the base image's; certificates for a TLS connection to PostgreSQL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/hexray --create-home hexray \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/hexray/data
# The data folder exists, the server's own, so that a named volume mounted on it (which starts
# as a copy of it) is writable by the server: a fresh one would otherwise be root's.
COPY --from=artefacts /src/target/release/hexray /usr/local/bin/hexray
COPY --from=artefacts /src/web /opt/hexray/web
# The models are the binary's bundled ones, the default first, each with its model card; a
# site serves its own by mounting a directory and setting HEXRAY_MODELS_DIR (each `<id>.hexray`
# with its `<id>.card.md`). The model owner's network stays on the server side: clients receive
# only each model's client spec.
USER 10001:10001
WORKDIR /var/lib/hexray
# Off loopback, `hexray serve` needs HEXRAY_TOKENS_FILE (or HEXRAY_ALLOW_OPEN behind an
# authenticating proxy); it refuses to start otherwise. HEXRAY_DATABASE_URL makes nodes share
# keys and jobs (see docs/scaling.md).
ENV HEXRAY_BIND=0.0.0.0:8080 \
    HEXRAY_WEB_DIR=/opt/hexray/web \
    HEXRAY_DATA_DIR=/var/lib/hexray/data \
    RUST_LOG=info
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hexray", "serve"]
