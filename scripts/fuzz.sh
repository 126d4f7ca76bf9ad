#!/usr/bin/env bash
# Long fuzz runs of every decoder of untrusted bytes (fuzz/, cargo-fuzz + libFuzzer).
#
#   scripts/fuzz.sh build                 # build every target (ASan, debug assertions)
#   scripts/fuzz.sh run TARGET [RUNS]     # fuzz one target, default 1000000 executions
#   scripts/fuzz.sh all [RUNS]            # every target in turn
#   scripts/fuzz.sh replay                # the corpus replay test (what CI runs; no cargo-fuzz)
#   scripts/fuzz.sh list
#
# Targets: token, qr, qr_image, qr_payload, index_file, session_request, start_request, block_request,
# mlhe_query (fuzz/src/harness.rs; session_request: fuzz/src/session.rs).
#
# Toolchain: cargo-fuzz needs nightly-only -Z flags. With only a stable toolchain,
# RUSTC_BOOTSTRAP=1 makes stable accept them (that is what this script does); a nightly
# toolchain works as well (FUZZ_TOOLCHAIN=nightly). Install the runner with
# `cargo install cargo-fuzz --locked`.
#
# The run writes new inputs to fuzz/target-corpus/TARGET (not committed), reading the committed
# seeds in fuzz/corpus/TARGET; crashes land in fuzz/artifacts/TARGET/. To keep a crash as a
# regression, minimise it (`cargo fuzz tmin TARGET ARTIFACT`) and copy it to
# fuzz/regressions/TARGET/: keys/tests/fuzz_regressions.rs replays it in every test run.
# The committed corpus is the hand-made seeds (`seed-*`, written by the seed generators in the
# replay tests) plus the minimised corpus of the last long run (`min-<sha1>`): merge with
# `fuzz/target/…/TARGET -merge=1 NEWDIR fuzz/corpus/TARGET fuzz/target-corpus/TARGET` and copy the
# files of NEWDIR that are not seeds to fuzz/corpus/TARGET/min-<sha1 of the file>.
#
# Environment: FUZZ_JOBS (parallel libFuzzer jobs, default 1), FUZZ_MAX_LEN (default per target),
# FUZZ_TIMEOUT (seconds per input, default 10, 120 for qr), FUZZ_RSS_MB (default 2048), FUZZ_SANITIZER
# (default address; `none` builds into fuzz/target-none, coverage and debug assertions only: the
# QR targets run ~3x faster so, and every crate on their path but base45 is free of `unsafe`,
# while base45 is covered under ASan by the token target).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/../fuzz"

TARGETS=(token qr qr_image qr_payload index_file session_request start_request block_request mlhe_query)
TOOLCHAIN=${FUZZ_TOOLCHAIN:-stable}
export RUSTC_BOOTSTRAP=1

max_len() {
    case "$1" in
        qr) echo 32768 ;;           # small images and bitmaps (the 8-bit token seed is 26 KB)
        qr_image) echo 32768 ;;     # small PNG and JPEG files (the token JPEG seed is 15 KB)
        qr_payload) echo 4096 ;;    # a version-40 module matrix is 3.9 KB
        index_file) echo 16384 ;;   # the seeds are ≤ 5 KB
        mlhe_query) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

SANITIZER=${FUZZ_SANITIZER:-address}
SAN_ARGS=(-s "$SANITIZER")
if [ "$SANITIZER" != address ]; then
    SAN_ARGS+=(--target-dir "target-$SANITIZER")
fi

timeout_for() {
    case "$1" in
        # rqrr's detector has crafted worst cases of seconds to minutes (SECURITY.md §9);
        # scan_qr bounds them with its time budget, the harness cannot.
        qr) echo 120 ;;
        *) echo 10 ;;
    esac
}

build() {
    cargo "+$TOOLCHAIN" fuzz build -O --debug-assertions "${SAN_ARGS[@]}" "$@"
}

run() {
    local t=$1 runs=${2:-1000000}
    mkdir -p "target-corpus/$t"
    local jobs=()
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
        # libFuzzer then writes each job's output to fuzz-N.log.
        jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
    fi
    # -O: release build; --debug-assertions: integer overflow and debug_assert! are findings.
    # Inputs go to target-corpus/$t; corpus/$t is read-only seed input.
    cargo "+$TOOLCHAIN" fuzz run -O --debug-assertions "${SAN_ARGS[@]}" "$t" "target-corpus/$t" "corpus/$t" -- \
        -runs="$runs" \
        -max_len="${FUZZ_MAX_LEN:-$(max_len "$t")}" \
        -timeout="${FUZZ_TIMEOUT:-$(timeout_for "$t")}" \
        -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        "${jobs[@]}" \
        -print_final_stats=1
}

case "${1:-}" in
    build) shift; build "$@" ;;
    run) shift; run "$@" ;;
    all)
        shift
        for t in "${TARGETS[@]}"; do run "$t" "${1:-1000000}"; done
        ;;
    replay)
        cd ..
        cargo test -p blindkd-keys --test fuzz_regressions
        cargo test -p blindkd-tests --test fuzz_session
        ;;
    list) printf '%s\n' "${TARGETS[@]}" ;;
    *)
        sed -n '2,/^set /{/^#/p}' "$SELF"
        exit 2
        ;;
esac
