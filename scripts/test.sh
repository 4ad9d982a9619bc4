#!/usr/bin/env bash
# The whole test suite: every test target runs even when one fails
# (--no-fail-fast); the exit status is cargo's (non-zero on any failure) and
# the failed tests and targets are listed at the end. Extra arguments go to
# `cargo test`. Works from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=$(mktemp "${TMPDIR:-/tmp}/syncd-test.XXXXXX")
trap 'rm -f "$out"' EXIT

rc=0
# With pipefail the pipeline's status is cargo's (tee succeeds).
cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$out" || rc=$?
# --all-targets leaves out doctests (the client crate's examples).
cargo test --workspace --doc --no-fail-fast 2>&1 | tee -a "$out" || rc=$?

if ((rc != 0)); then
    printf '\n==> test suite FAILED (cargo exit %d)\n' "$rc"
    # "---- name stdout ----" per failed test, under the "Running FILE"
    # line of its test binary.
    failed=$(awk '
        /^ +Running / { t = $0; sub(/^ +Running (unittests )?/, "", t); sub(/ \(.*$/, "", t) }
        /^---- .* stdout ----$/ { n = $0; sub(/^---- /, "", n); sub(/ stdout ----$/, "", n); print t ": " n }
    ' "$out")
    if [[ -n $failed ]]; then
        echo "failed tests:"
        sed 's/^/    /' <<<"$failed"
    fi
    # "error: test failed, to rerun pass `--test NAME`" per failed target,
    # then "error: N targets failed:" and the targets, one per line.
    targets=$( { grep -E '^error: .*to rerun pass|^ +`--' "$out" || true; } \
        | grep -oE '`--[^`]+`' | tr -d '`' | sort -u || true)
    if [[ -n $targets ]]; then
        echo "failed targets (rerun with: cargo test TARGET):"
        sed 's/^/    /' <<<"$targets"
    fi
    # Anything that stopped cargo before the tests ran (a build error, say).
    if [[ -z $failed && -z $targets ]]; then
        echo "no test failures recorded; last lines of output:"
        tail -n 20 "$out" | sed 's/^/    /'
    fi
    exit "$rc"
fi
