#!/usr/bin/env bash
# Dataplane bench: userspace router vs Linux kernel forwarding in the same
# namespaces, one run, ratios. Needs root (namespaces, TUN, raw sockets).
# Usage: scripts/bench-dataplane.sh [SECONDS_PER_FIGURE]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "bench-dataplane: needs root (network namespaces, TUN, raw sockets)" >&2
    exit 1
fi
exec cargo run --quiet --release -p router-core --example dataplane_bench -- "${1:-3}"
