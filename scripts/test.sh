#!/usr/bin/env bash
# Every check a submission must pass: formatting, clippy, the Rust tests in one release build
# (TFHE is unusably slow unoptimised), the wasm client's tests in headless Chromium, the
# end-to-end test that drives the real page, and the deployment: the Kubernetes manifests
# validated, the container image built and run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The browser client is compiled for wasm32 only in the page build: lint it for that target too.
cargo clippy --release -p hexray-wasm --target wasm32-unknown-unknown --all-targets -- -D warnings
# A private PostgreSQL (Debian's package, TLS only) for the shared back end's tests, stopped
# on exit. Those tests are #[ignore]d in a plain `cargo test`; here they run, and a database
# that does not start fails the run.
pg_dir=$(mktemp -d /tmp/hexray-pg-XXXXXX)
trap 'bash scripts/postgres.sh stop "$pg_dir"; rm -rf "$pg_dir"' EXIT
url=$(bash scripts/postgres.sh start "$pg_dir" 55433)
export HEXRAY_TEST_DATABASE_URL=$url HEXRAY_TEST_POSTGRES_DIR=$pg_dir
cargo test --release --workspace -- --include-ignored
# The same API suite against the PostgreSQL back end. `--workspace` keeps the features of the
# build above: `-p hexray-evaluator` alone would resolve them differently and rebuild tfhe.
HEXRAY_TEST_STORAGE=postgres cargo test --release --workspace --test server_api
bash scripts/build-web.sh
# wasm-bindgen-test in a real browser; --mode no-install uses the CLI setup.sh installed.
(cd wasm-client && wasm-pack test --headless --chrome --release --mode no-install)
node --test --test-concurrency=1 tests/browser/
# The deployment, checked and run: the manifests against the Kubernetes API schemas, and the
# container image built from the Dockerfile and run (one node, then two on the test database).
bash scripts/validate-kubernetes.sh
bash scripts/container-test.sh
