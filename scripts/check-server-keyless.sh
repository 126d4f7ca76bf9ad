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
# The binary itself: built on its own it must start past its key-holding guard (it then fails on
# the missing files, exit 1); a build that linked key code would refuse with exit 2. `cargo run`
# builds it with this package's features alone and wherever CARGO_TARGET_DIR points.
set +e
out=$(cargo run -q -p blindkd-server --bin blindkd-server -- \
  --index /nonexistent.bkd --issuer /nonexistent.pub --ephemeral-state 2>&1)
rc=$?
set -e
if [ "$rc" -ne 1 ] || grep -q "key-holding" <<<"$out"; then
  echo "FAIL: the operator's blindkd-server binary (rc $rc): $out" >&2
  exit 1
fi
echo "ok: blindkd-server does not enable blindkd-engine/client"
