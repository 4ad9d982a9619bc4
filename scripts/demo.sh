#!/usr/bin/env bash
# Builds syncd, starts the daemon on its embedded defaults (no config file,
# no backend), writes a few records as an app would, shows what the daemon
# says, and stops it. Nothing leaves the machine: with no backend the writes
# queue up and status says offline.
#
# The demo's store and socket go to a throwaway directory (through
# XDG_DATA_HOME and XDG_RUNTIME_DIR, which the defaults follow), removed on
# exit: it never writes into your real default store, and never talks to a
# syncd you already run.
set -euo pipefail
cd "$(dirname "$0")/.."
# SYNCD_BIN: a syncd already built (the test suite runs the demo with it).
if [[ -n ${SYNCD_BIN:-} ]]; then
    syncd=$SYNCD_BIN
else
    echo "building syncd (the first build takes a few minutes; later ones are quick)..."
    cargo build --bin syncd
    syncd=${CARGO_TARGET_DIR:-target}/debug/syncd
fi

demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/syncd-demo.XXXXXX")
daemon=
trap '[ -n "$daemon" ] && { kill -TERM "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; }; rm -rf "$demo_dir"' EXIT
chmod 700 "$demo_dir"
# What would point the daemon or the CLI elsewhere goes: systemd's
# directories win over XDG's, and $SYNCD_SOCKET steers every CLI call.
unset SYNCD_SOCKET RUNTIME_DIRECTORY STATE_DIRECTORY
export XDG_DATA_HOME="$demo_dir/data" XDG_RUNTIME_DIR="$demo_dir/run"
mkdir -p -m 700 "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR"

"$syncd" run &
daemon=$!
for _ in $(seq 100); do "$syncd" status --json >/dev/null 2>&1 && break; sleep 0.05; done

# A word as a shell would need it typed: single-quoted unless it is plain,
# so every command shown can be pasted into a shell as it is.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}
show() {
    local line="syncd" w
    for w in "$@"; do line+=" $(quote "$w")"; done
    printf '\n\033[1m$ %s\033[0m\n' "$line"
}
step() { show "$@"; "$syncd" "$@"; }
# step_out VAR ARGS...: like step, and keeps the command's output in VAR.
step_out() {
    local var=$1 out
    shift
    show "$@"
    out=$("$syncd" "$@")
    printf '%s\n' "$out"
    printf -v "$var" '%s' "$out"
}
step put todos '{"title":"buy milk","done":false}'
step_out id put todos '{"title":"call the plumber","done":false}'
step patch todos "$id" '{"done":true}'
step get todos "$id"
step list todos --limit 10
step queue
step status
printf '\nThe writes are durable and queued; with [backend] url set in a config\nfile (see daemon.toml.example) the sync worker would now push them.\n'
printf '\nThis demo ran %s in a throwaway directory, now removed. To try the\ncommands yourself: `cargo install --path .` (puts syncd on your PATH),\n`syncd run` in one terminal, and the commands above in another.\n' "$syncd"
