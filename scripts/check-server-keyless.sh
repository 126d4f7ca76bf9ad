#!/usr/bin/env bash
# The trust line is a Cargo edge: everything that holds a secret key (class keys, mask PRF, session
# secret keys, decryption, unmasking, token signing, device keys, bundles) is in blindkd-keys, and
# the query server must not depend on it. Checked on the dependency graph and on the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "FAIL: $1" >&2
  shift
  printf '%s\n' "$@" >&2
  exit 1
}

# (a) The server's normal dependencies, with and without its one feature, and (b) the engine's.
for args in "-p blindkd-server" "-p blindkd-server --features paper-she" "-p blindkd-engine" \
  "-p blindkd-engine --features paper-she"; do
  # shellcheck disable=SC2086 # $args is a list of arguments
  tree=$(cargo tree -q $args -e normal --prefix none)
  if grep -q '^blindkd-keys ' <<<"$tree"; then
    fail "cargo tree $args -e normal reaches blindkd-keys:" "$tree"
  fi
  if ! grep -q '^blindkd-engine ' <<<"$tree"; then
    fail "cargo tree $args printed no blindkd-engine (is the check still looking?):" "$tree"
  fi
done

# (c) The operator's binary, built as the README builds it (here in the debug profile): no symbol
# of blindkd-keys may be in it. `cargo build --message-format` names the file wherever
# CARGO_TARGET_DIR points.
bin=$(cargo build -q -p blindkd-server --bin blindkd-server --message-format json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -n "$bin" ] && [ -f "$bin" ] || fail "no blindkd-server binary was built"
if ! grep -c blindkd_engine "$bin" >/dev/null; then
  fail "$bin has no blindkd_engine symbol either (is the check still looking?)"
fi
if n=$(grep -c blindkd_keys "$bin"); then
  fail "$bin contains $n lines with blindkd_keys symbols"
fi
echo "ok: blindkd-server and blindkd-engine do not depend on blindkd-keys;" \
  "$bin has no blindkd_keys symbol"
