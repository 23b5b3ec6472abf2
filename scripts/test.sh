#!/usr/bin/env bash
# Every check a submission must pass, in one release build (TFHE is unusably slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The contract crate is shared with the browser client: prove it builds for wasm32.
cargo build --release --target wasm32-unknown-unknown -p hexray-model
cargo test --release --workspace
