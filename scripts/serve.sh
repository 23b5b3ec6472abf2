#!/usr/bin/env bash
# Installs what is needed, builds the page's wasm client and serves HEXray at
# http://127.0.0.1:8080 with the bundled model. Extra arguments go to `hexray serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

# On a fresh machine the three compiles are most of the wait: the wasm-bindgen CLI (setup.sh),
# the page's wasm client and the server. The CLI needs nothing of the client, so the two compile
# side by side and fill each other's single-threaded stretches; the client needs only the wasm
# target, which rustup adds in seconds. (Both wasm and native builds share target/'s lock, so
# they cannot overlap the same way.)
rustup target add wasm32-unknown-unknown
bash scripts/setup.sh > >(sed -u 's/^/[setup] /') 2>&1 &
setup=$!
cargo build --release --target wasm32-unknown-unknown -p hexray-wasm
wait "$setup" || { echo "scripts/setup.sh failed: see its [setup] lines above" >&2; exit 1; }
bash scripts/build-web.sh
cargo run --release -p hexray-evaluator -- serve "$@"
