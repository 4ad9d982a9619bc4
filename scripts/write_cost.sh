#!/bin/bash
# The cost of one durable write at 1 client (docs/performance.md, "The cost
# of one write"). Starts a daemon (no backend, as in the harness's `writes`)
# on a fresh temp dir, does 300 warm-up puts and then N puts from one client
# (examples/client.py, JSON), and prints per thread the CPU and voluntary
# context switches per write.
#
#   scripts/write_cost.sh [--bin PATH] [--puts N] [--strace] [--callgrind OUT]
#
# --strace      also count the daemon's syscalls per write (strace -c)
# --callgrind   run the daemon under valgrind --tool=callgrind, count only the
#               N puts, and write the profile to OUT (callgrind_annotate
#               --inclusive=yes OUT); instruction counts do not depend on
#               the machine's load, CPU times do.
set -euo pipefail
BIN=target/release/syncd N=3000 STRACE= CG=
while [ $# -gt 0 ]; do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --puts) N=$2; shift 2 ;;
    --strace) STRACE=1; shift ;;
    --callgrind) CG=$2; shift 2 ;;
    *) echo "usage: $0 [--bin PATH] [--puts N] [--strace] [--callgrind OUT]" >&2; exit 2 ;;
  esac
done
BIN=$(realpath "$BIN")
cd "$(dirname "$0")/.."
D=$(mktemp -d "${TMPDIR:-/tmp}/syncd-write-cost.XXXXXX")
trap 'kill $P 2>/dev/null || true; rm -rf "$D"' EXIT
cat > "$D/daemon.toml" <<EOF
[daemon]
socket = "$D/s.sock"
data_dir = "$D/data"
log_level = "warn"
EOF
if [ -n "$CG" ]; then
  valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" "$BIN" run --config "$D/daemon.toml" > "$D/log" 2>&1 &
else
  "$BIN" run --config "$D/daemon.toml" > "$D/log" 2>&1 &
fi
P=$!
for _ in $(seq 300); do [ -S "$D/s.sock" ] && break; sleep 0.1; done
puts() {
  python3 - "$D/s.sock" "$1" <<'EOF'
import sys, time
sys.path.insert(0, "examples")
from client import Client
n = int(sys.argv[2])
with Client(sys.argv[1]) as c:
    t = time.time()
    for i in range(n):
        c.put("todos", {"title": "buy milk", "done": False, "client": 0, "n": i})
    dt = time.time() - t
print(f"{n} puts in {dt:.2f} s: {n / dt:.0f}/s, {dt / n * 1e6:.0f} us each")
EOF
}
threads() {
  for t in /proc/$P/task/*; do
    s=$(cat "$t/stat" 2>/dev/null) || continue
    rest=${s##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo "$(basename "$t") $(cat "$t/comm" | tr ' ' _) ${12} ${13} $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")"
  done | sort
}
puts 300 > /dev/null
[ -n "$CG" ] && callgrind_control -z $P > /dev/null
threads > "$D/t0"
[ -n "$STRACE" ] && { strace -f -c -p $P -o "$D/strace" & S=$!; sleep 0.5; }
puts "$N"
threads > "$D/t1"
[ -n "$STRACE" ] && { kill -INT $S; wait $S 2>/dev/null || true; awk -v n="$N" '$NF ~ /^(pwrite64|fdatasync|futex|epoll_wait|write|sendto|recvfrom)$/ {printf "  %-10s %.2f per write\n", $NF, $4 / n}' "$D/strace"; }
[ -n "$CG" ] && { callgrind_control -d $P > /dev/null; sleep 1; cp "$(ls -t "$D"/cg.out.* | head -1)" "$CG"; echo "callgrind profile of the $N puts: $CG"; }
HZ=$(getconf CLK_TCK)
join "$D/t0" "$D/t1" | awk -v n="$N" -v hz="$HZ" '{u = $7 - $3; s = $8 - $4; cs = ($9 - $5) / n; tu += u; ts += s;
  if (u + s > 0 || cs > 0.01) printf "  %-16s %5.0f us CPU per write (user %.0f, sys %.0f), %.2f voluntary switches per write\n", $2, (u + s) * 1e6 / hz / n, u * 1e6 / hz / n, s * 1e6 / hz / n, cs}
  END {printf "  whole daemon     %5.0f us CPU per write (user %.0f, sys %.0f)\n", (tu + ts) * 1e6 / hz / n, tu * 1e6 / hz / n, ts * 1e6 / hz / n}'
