#!/usr/bin/env bash
# Every check a submission must pass: formatting, clippy, the Rust tests in one release build
# (TFHE is unusably slow unoptimised), the wasm client's tests in headless Chromium, and the
# end-to-end test that drives the real page.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The browser client is compiled for wasm32 only in the page build: lint it for that target too.
cargo clippy --release -p hexray-wasm --target wasm32-unknown-unknown --all-targets -- -D warnings
# A private PostgreSQL (Debian's package) for the shared back end's tests, stopped on exit.
pg_dir=$(mktemp -d /tmp/hexray-pg-XXXXXX)
trap 'bash scripts/postgres.sh stop "$pg_dir"; rm -rf "$pg_dir"' EXIT
if url=$(bash scripts/postgres.sh start "$pg_dir" 55433); then
  export HEXRAY_TEST_DATABASE_URL=$url HEXRAY_TEST_POSTGRES_DIR=$pg_dir
else
  echo "PostgreSQL could not be started: the shared-database tests say they are skipped" >&2
fi
cargo test --release --workspace
# The same API suite against the PostgreSQL back end, when there is a server to run it on.
# `--workspace` keeps the features of the build above: `-p hexray-e2e` alone would resolve
# them differently and rebuild tfhe.
if [[ -n ${HEXRAY_TEST_DATABASE_URL:-} ]]; then
  HEXRAY_TEST_STORAGE=postgres cargo test --release --workspace --test server_api
fi
bash scripts/build-web.sh
# wasm-bindgen-test in a real browser; --mode no-install uses the CLI setup.sh installed.
(cd wasm-client && wasm-pack test --headless --chrome --release --mode no-install)
node --test --test-concurrency=1 tests/browser/
