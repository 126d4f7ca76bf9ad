#!/usr/bin/env bash
# The main job on bundled data: index Cleveland heart, serve it, issue a token QR, query through it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p blindkd -- demo "$@"
