#!/usr/bin/env bash
# Builds the browser client into web/pkg: the wasm module and its JavaScript bindings, which
# the page and its Web Worker import.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-unknown-unknown -p hexray-wasm
# Cargo writes to CARGO_TARGET_DIR when it is set.
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
  "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/hexray_wasm.wasm"
# SHA-256 of every file the page serves, for IT to pin when hosting the page themselves
# (`cd web && sha256sum -c SHA256SUMS`).
(cd web && find . -type f \( -name '*.html' -o -name '*.js' -o -name '*.css' -o -name '*.wasm' \) \
  -not -path './node_modules/*' | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
