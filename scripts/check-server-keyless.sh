#!/usr/bin/env bash
# The server crate, built on its own, must not enable blindkd-engine's `client` feature (the code
# that holds secret keys, decrypts and unmasks). Checked on the resolved feature graph and by a build.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p blindkd-server -e features -i blindkd-engine --edges normal)
if grep -q 'blindkd-engine feature "client"' <<<"$tree"; then
  echo "FAIL: blindkd-server enables blindkd-engine/client:" >&2
  echo "$tree" >&2
  exit 1
fi
# And the engine compiles without it (the server's view of the engine).
cargo clippy -q -p blindkd-engine --no-default-features -- -D warnings
cargo check -q -p blindkd-server --bin blindkd-server
echo "ok: blindkd-server does not enable blindkd-engine/client"
