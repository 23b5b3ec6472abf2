#!/usr/bin/env bash
# Installs what is needed, builds the page's wasm client and serves HEXray at
# http://127.0.0.1:8080 with the bundled model. Extra arguments go to `hexray serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-web.sh
cargo run --release -p hexray-evaluator -- serve "$@"
