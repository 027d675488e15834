#!/usr/bin/env bash
# Lab bench (issue 15): in one run, alternating, measure
#   kernel     plain Linux forwarding through one router namespace (the baseline)
#   kernel-lab the lab's own namespaces, links and path (client -> sys -> site-a
#              -> a1, replies over the direct-return bridge) with the daemons
#              stopped and plain kernel routes instead: what the same path costs
#              without Pronto (a second baseline; ratios stay to `kernel`)
#   userspace  the Pronto lab with the userspace data path only
#   bpf        the Pronto lab with the kernel fast path (skipped when the lab
#              has no --fast-path flag or the kernel refuses it)
#   userspace-2t, bpf-2t  the same with two engine threads per router
#              (--engine-threads 2: two TUN queues); add them to MODES
# with iperf3 (Gbit/s, client -> VIP, the direction that crosses the routers),
# wrk new connections/s (Connection: close), wrk keep-alive requests/s, and the
# idle CPU of all the lab's daemons together (at PACE, below). Prints the median of the rounds
# and each figure's ratio to the kernel's.
#
# Needs root. Installs iperf3, wrk and nginx from Debian where missing. Uses
# target/release/pronto (built here unless PRONTO is set).
# Usage: sudo scripts/bench-lab.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-10}
MODES=${MODES:-"kernel userspace bpf"}
# The lab's timers (pronto lab up --pace): normal = load reports, table updates
# and stats once a second, the daemons' defaults, as an operator runs them;
# fast = every 100 ms, as the test suites run them (their idle CPU is that work).
PACE=${PACE:-normal}
[ "$(id -u)" = 0 ] || { echo "bench-lab: needs root" >&2; exit 1; }
for tool in iperf3 wrk nginx; do
    command -v "$tool" >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 wrk nginx-light >/dev/null
        break
    }
done
if [ -z "${PRONTO:-}" ]; then
    cargo build --release --quiet --bin pronto
    PRONTO=target/release/pronto
fi
WORK=$(mktemp -d /tmp/pronto-bench-XXXX)
RESULTS=$WORK/results
: > "$RESULTS"
VIP=192.200.0.10
HOSTS="a1 a2 b1 b2"
trap 'cleanup' EXIT

cleanup() {
    for ns in bk-client bk-fwd bk-srv; do ip netns del "$ns" 2>/dev/null || true; done
    "$PRONTO" lab down --dir "$WORK/lab" --prefix bl >/dev/null 2>&1 || true
    pkill -f "nginx -c $WORK" 2>/dev/null || true
}

# nginx answering every request on :8080 with a short body, in namespace $1.
start_nginx() {
    local ns=$1 conf=$WORK/nginx-$1.conf
    cat > "$conf" <<EOF
worker_processes 1;
pid $WORK/nginx-$ns.pid;
error_log /dev/null;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 8080 reuseport; location / { return 200 "$ns\n"; } }
}
EOF
    ip netns exec "$ns" nginx -c "$conf"
    ip netns exec "$ns" iperf3 -s -D >/dev/null
}

# iperf3 Gbit/s, new connections/s, keep-alive requests/s from the client
# namespace $1 to $2; appends "MODE METRIC VALUE" lines.
measure() {
    local mode=$1 ns=$2 dst=$3 g c k
    g=$(ip netns exec "$ns" iperf3 -c "$dst" -t "$SECS" -f g 2>/dev/null \
        | awk '/receiver/ {print $(NF-2)}')
    c=$(ip netns exec "$ns" wrk -t2 -c32 -d"${SECS}s" -H "Connection: close" "http://$dst:8080/" \
        | awk '/Requests\/sec/ {print $2}')
    k=$(ip netns exec "$ns" wrk -t2 -c32 -d"${SECS}s" "http://$dst:8080/" \
        | awk '/Requests\/sec/ {print $2}')
    echo "$mode gbit_s ${g:-0}" >> "$RESULTS"
    echo "$mode new_conn_s ${c:-0}" >> "$RESULTS"
    echo "$mode keepalive_req_s ${k:-0}" >> "$RESULTS"
    echo "  $mode: ${g:-?} Gbit/s, ${c:-?} new conn/s, ${k:-?} keep-alive req/s" >&2
}

run_kernel() {
    # Each namespace with a TCP hash of its own, as `pronto lab up` makes them
    # (src/lab/topology.rs), so both sides of the comparison keep TCP state alike.
    local ehash
    ehash=$(sysctl -n net.ipv4.tcp_child_ehash_entries 2>/dev/null || echo 0)
    [ "$ehash" = 0 ] && sysctl -qw net.ipv4.tcp_child_ehash_entries=16384 2>/dev/null || true
    ip netns add bk-client; ip netns add bk-fwd; ip netns add bk-srv
    [ "$ehash" = 0 ] && sysctl -qw net.ipv4.tcp_child_ehash_entries=0 2>/dev/null || true
    ip link add c0 netns bk-client type veth peer name f0 netns bk-fwd
    ip link add f1 netns bk-fwd type veth peer name s0 netns bk-srv
    ip -n bk-client addr add 172.31.0.2/24 dev c0
    ip -n bk-fwd addr add 172.31.0.1/24 dev f0
    ip -n bk-fwd addr add 172.31.1.1/24 dev f1
    ip -n bk-srv addr add 172.31.1.2/24 dev s0
    for ns in bk-client bk-fwd bk-srv; do ip -n "$ns" link set lo up; done
    ip -n bk-client link set c0 up; ip -n bk-fwd link set f0 up
    ip -n bk-fwd link set f1 up; ip -n bk-srv link set s0 up
    ip -n bk-client route add default via 172.31.0.1
    ip -n bk-srv route add default via 172.31.1.1
    ip netns exec bk-fwd sysctl -qw net.ipv4.ip_forward=1
    start_nginx bk-srv
    measure kernel bk-client 172.31.1.2
    pkill -f "nginx -c $WORK/nginx-bk-srv.conf" || true
    ip netns exec bk-srv pkill iperf3 2>/dev/null || true
    for ns in bk-client bk-fwd bk-srv; do ip netns del "$ns"; done
}

# Sum of the lab daemons' CPU ticks.
daemon_ticks() {
    local t=0 pid
    for pid in $(awk -F' = ' '/^pid = / {print $2}' "$WORK/lab/lab.toml"); do
        if [ -r "/proc/$pid/stat" ]; then
            t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
        fi
    done
    echo "$t"
}

run_lab() {
    local mode=$1 extra=()
    case $mode in
        bpf*) extra=(--fast-path bpf) ;;
        kernel-lab) extra=(--fast-path userspace) ;;
        userspace*) "$PRONTO" lab up --help | grep -q -- --fast-path \
            && extra=(--fast-path userspace) ;;
    esac
    case $mode in
        *-2t) extra+=(--engine-threads 2) ;;
    esac
    # least-cost with every host but a1 loaded: every connection goes to a1
    # (iperf3's control and data connections must meet the same server).
    "$PRONTO" lab up --help | grep -q -- --pace && extra+=(--pace "$PACE")
    if ! "$PRONTO" lab up --dir "$WORK/lab" --prefix bl --policy least-cost \
        --load a2=5 --load b1=5 --load b2=5 "${extra[@]}" >/dev/null 2>"$WORK/lab-up.err"; then
        echo "  $mode: lab up failed ($(tail -1 "$WORK/lab-up.err")); skipped" >&2
        "$PRONTO" lab down --dir "$WORK/lab" --prefix bl >/dev/null 2>&1 || true
        return
    fi
    for h in $HOSTS; do start_nginx "bl-$h"; done
    if [ "$mode" = kernel-lab ]; then
        kernel_routes
        measure "$mode" bl-client "$VIP"
        stop_lab
        return
    fi
    local hz t0 t1
    hz=$(getconf CLK_TCK)
    sleep 2
    t0=$(daemon_ticks); sleep "$SECS"; t1=$(daemon_ticks)
    echo "$mode idle_cpu_pct $(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$SECS" \
        'BEGIN {printf "%.2f", 100 * d / hz / s}')" >> "$RESULTS"
    measure "$mode" bl-client "$VIP"
    stop_lab
}

stop_lab() {
    for h in $HOSTS; do
        pkill -f "nginx -c $WORK/nginx-bl-$h.conf" || true
        ip netns exec "bl-$h" pkill iperf3 2>/dev/null || true
    done
    "$PRONTO" lab down --dir "$WORK/lab" --prefix bl >/dev/null
}

# The lab without Pronto: every daemon killed (their TUNs and VIP routes go
# with them) and the path that least-cost takes (sys -> site-a -> a1) routed by
# the kernel, a1 holding the VIP on its loopback and answering over the
# direct-return bridge as it does under Pronto.
kernel_routes() {
    local d
    for d in sys site-a site-b a1 a2 b1 b2; do
        "$PRONTO" lab kill --dir "$WORK/lab" "$d" >/dev/null 2>&1 || true
    done
    sleep 0.5
    ip -n bl-sys route replace "${VIP%.*}.0/24" via 10.1.0.2
    ip -n bl-site-a route replace "${VIP%.*}.0/24" via 10.1.1.2
    ip -n bl-a1 addr add "$VIP/32" dev lo
}

for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    for m in $MODES; do
        case $m in
            kernel) run_kernel ;;
            kernel-lab | userspace* | bpf*) run_lab "$m" ;;
        esac
    done
done

median() { { grep "^$1 $2 " "$RESULTS" || true; } | awk '{print $3}' | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}'; }
echo
echo "median of $ROUNDS rounds, $SECS s each (ratio to kernel forwarding; [ratio to kernel-lab, the same path]):"
for metric in gbit_s new_conn_s keepalive_req_s idle_cpu_pct; do
    line=$(printf '%-16s' "$metric")
    base=$(median kernel "$metric")
    path=$(median kernel-lab "$metric")
    for m in kernel kernel-lab userspace userspace-2t bpf bpf-2t; do
        v=$(median "$m" "$metric")
        [ -n "$v" ] || continue
        ratio=""
        if [ "$m" != kernel ] && [ -n "$base" ]; then
            ratio=$(awk -v a="$v" -v b="$base" 'BEGIN {if (b > 0) printf " (%.2fx)", a / b}')
        fi
        if [ "$m" != kernel ] && [ "$m" != kernel-lab ] && [ -n "$path" ]; then
            ratio="$ratio$(awk -v a="$v" -v b="$path" 'BEGIN {if (b > 0) printf " [%.2fx path]", a / b}')"
        fi
        line="$line  $m $v$ratio"
    done
    echo "$line"
done
echo "raw figures: $RESULTS"
trap - EXIT
cleanup
