#!/usr/bin/env bash
# The project's test command (README): every test, every feature, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features "$@"
