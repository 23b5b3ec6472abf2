#!/usr/bin/env bash
# Installs what HEXray needs on a fresh Debian machine with rustup, and nothing twice. Safe to
# run again.
#
#   bash scripts/setup.sh          # serving: the wasm target and the wasm-bindgen CLI matching
#                                  # the pinned crate, to build the page's client
#   bash scripts/setup.sh --tests  # and the tests': wasm-pack, Chromium and its driver, Node
#                                  # and the browser tests' npm packages, PostgreSQL, OpenSSL
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown

# The CLI must be exactly the version of the wasm-bindgen crate that wasm-client pins. Without
# its default features it has no TLS stack, which nothing here needs (its test runner talks to
# a local chromedriver over plain HTTP), and it compiles in about a fifth less time. It is built
# at opt-level 1: it runs for a second or two per page build, so compiling it is what a first
# serve waits for, and its output does not depend on how it was optimised.
bindgen_version=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' wasm-client/Cargo.toml)
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $bindgen_version" ]]; then
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install --locked --no-default-features wasm-bindgen-cli --version "$bindgen_version"
fi
[[ ${1:-} == --tests ]] || exit 0

wasm_pack_version=0.13.1
if [[ "$(wasm-pack --version 2>/dev/null)" != "wasm-pack $wasm_pack_version" ]]; then
  cargo install --locked wasm-pack --version "$wasm_pack_version"
fi

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v openssl >/dev/null || missing+=(openssl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if ((${#missing[@]})); then
  sudo=$([[ $(id -u) == 0 ]] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Browser tests' packages, reinstalled only when the lock file changes (a copy of the lock file
# that was installed is kept beside them).
stamp=tests/browser/node_modules/.installed-lock.json
if ! cmp -s tests/browser/package-lock.json "$stamp"; then
  (cd tests/browser && npm ci --no-audit --no-fund)
  cp tests/browser/package-lock.json "$stamp"
fi
