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
cargo build --quiet --bin syncd
syncd=target/debug/syncd

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

step() { printf '\n\033[1m$ syncd %s\033[0m\n' "$*"; "$syncd" "$@"; }
step put todos '{"title":"buy milk","done":false}'
id=$("$syncd" put todos '{"title":"call the plumber","done":false}')
step patch todos "$id" '{"done":true}'
step get todos "$id"
step list todos --limit 10
step queue
step status
printf '\nThe writes are durable and queued; with [backend] url set in a config\nfile (see daemon.toml.example) the sync worker would now push them.\n'
