#!/usr/bin/env bash
# Installs what HEXray needs on a fresh Debian machine with rustup: the wasm target (the shared
# contract crate must build for the browser). Safe to run again.
set -euo pipefail
rustup target add wasm32-unknown-unknown
