#!/usr/bin/env bash
# Throughput of one long TCP transfer client -> VIP through the namespace lab
# (`pronto lab up`), with every daemon on the kernel fast path and then on the
# userspace path, alternating, with the counters that show who forwarded it.
# Needs root, iperf3 (apt-get install iperf3) and a release build.
#
#   scripts/bench-fastpath.sh [SECONDS] [ROUNDS]
#
# The hosts other than a1 advertise a high load, so the least-cost policy
# puts iperf3's control and data connections on the same server.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
ROUNDS="${2:-1}"
PRONTO="${PRONTO:-${CARGO_TARGET_DIR:-target}/release/pronto}"
DIR=/run/pronto-bench-fp
PREFIX=bf
VIP=192.200.0.10

[ "$(id -u)" = 0 ] || { echo "bench-fastpath: needs root" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "bench-fastpath: apt-get install iperf3" >&2; exit 1; }
[ -x "$PRONTO" ] || { echo "bench-fastpath: build first: cargo build --release ($PRONTO)" >&2; exit 1; }

stat() { # FILE SECTION KEY
  awk -v s="[$2]" -v k="$3" '$0 == s {in_s = 1; next} /^\[/ {in_s = 0} in_s && $1 == k {print $3}' "$1"
}

run() { # PATH
  "$PRONTO" lab down --dir "$DIR" --prefix "$PREFIX" >/dev/null 2>&1 || true
  "$PRONTO" lab up --dir "$DIR" --prefix "$PREFIX" --fast-path "$1" \
    --load a2=5 --load b1=5 --load b2=5 >/dev/null 2>&1
  for h in a1 a2 b1 b2; do
    ip netns exec "$PREFIX-$h" iperf3 -s -D -1 >/dev/null 2>&1
  done
  sleep 1
  local before_k before_e
  before_k=$(stat "$DIR/stats/sys.toml" fast_path forwarded)
  before_e=$(stat "$DIR/stats/sys.toml" engine packets)
  local bps
  bps=$(ip netns exec "$PREFIX-client" iperf3 -c "$VIP" -t "$SECS" -J \
    | awk -F'[:,]' '/"sum_received"/ {f = 1} f && /"bits_per_second"/ {print $2; exit}')
  sleep 0.5
  local k e
  k=$(( $(stat "$DIR/stats/sys.toml" fast_path forwarded) - before_k ))
  e=$(( $(stat "$DIR/stats/sys.toml" engine packets) - before_e ))
  printf '%-10s %6.2f Gbit/s   system SLR: kernel fast path %9d packets, engine %9d packets\n' \
    "$1" "$(awk -v b="$bps" 'BEGIN {print b / 1e9}')" "$k" "$e"
  "$PRONTO" lab down --dir "$DIR" --prefix "$PREFIX" >/dev/null 2>&1 || true
}

echo "bench-fastpath: iperf3 client -> $VIP for $SECS s, $ROUNDS round(s) ($("$PRONTO" --version 2>/dev/null || echo pronto))"
for _ in $(seq "$ROUNDS"); do
  run bpf
  run userspace
done
