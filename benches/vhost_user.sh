#!/usr/bin/env bash
# vhost-user bench: 64-byte packets per second from one DPDK testpmd through tapswitch to a
# second one, each testpmd a vhost-user frontend (virtio_user, --no-huge) on its own tapswitch
# vhost-user port.
#
#   sudo benches/vhost_user.sh [--duration SECS] [--client] [--queue-size N]
#        [--cpus SWITCH,RX,TX] [--loop [--in-flight N]] [--perf FILE]
#
#   A: dpdk-testpmd --forward-mode=txonly --txpkts=64   -> port vua (socket A)
#   tapswitch run (workers = 1) switches A's frames to B (a static FDB entry for testpmd's
#      txonly destination MAC, so nothing floods)
#   B: dpdk-testpmd --forward-mode=rxonly                <- port vub (socket B)
#
# It reports, over SECS seconds after a warm-up: what A sent (Tx-pps), what tapswitch read from
# A and wrote to B (its port counters), what B received (Rx-pps), the loss (frames A sent that B
# did not get: RX buffers of B full, counted by tapswitch as vhost-user rx_no_buffers), and
# tapswitch's CPU use (utime + stime of its process from /proc/PID/stat).
#
# --client: tapswitch connects (vhost_user_mode = "client") and testpmd listens (server=1).
# --cpus: pin tapswitch, testpmd B and testpmd A (each testpmd gets both of its lcores on its
# CPU; default 1,0,1 on a 2-CPU machine).
# --loop: one testpmd instead of two, on one CPU, with both ports (A and B) and
#   --forward-mode=mac: it sends N frames into each port once (--tx-first, --burst N; default
#   N 256) and from then on forwards every frame it receives on one port out of the other, so
#   the frames circle testpmd -> tapswitch -> testpmd. tapswitch's worker then has a CPU to
#   itself (--cpus SWITCH,TESTPMD; default 1,0) and the rate is what it forwards, both ways.
#   Frames lost on the way (a ring full) leave the circle: the loss is reported.
# --perf FILE: record tapswitch with `perf record -F 999 -g` over the measured seconds.
#
# Needs root (tapswitch's control socket and DPDK's /var/run/dpdk), dpdk-testpmd (Debian's
# dpdk-dev), and a release build (cargo build --release). Everything it makes has this script's
# PID in its name (a temp directory with the sockets, config, state and logs; DPDK file prefixes
# tsvub<PID>a/b, whose /var/run/dpdk/<prefix> directories are removed) and is removed on exit;
# it stops only the processes it started, by PID.
set -euo pipefail

DURATION=10
CLIENT=0
QSIZE=256
CPUS="1,0,1"
PERF=""
LOOP=0
INFLIGHT=256
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --client) CLIENT=1; shift ;;
        --queue-size) QSIZE=$2; shift 2 ;;
        --cpus) CPUS=$2; shift 2 ;;
        --perf) PERF=$2; shift 2 ;;
        --loop) LOOP=1; shift ;;
        --in-flight) INFLIGHT=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ "$LOOP" = 1 ] && [ "$CPUS" = "1,0,1" ]; then CPUS="1,0"; fi
IFS=, read -r CPU_SW CPU_B CPU_A <<<"$CPUS"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPSWITCH:-$ROOT/target/release/tapswitch}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v dpdk-testpmd >/dev/null || { echo "needs dpdk-testpmd (apt-get install dpdk-dev)" >&2; exit 1; }

ID=$$
DIR=$(mktemp -d "/tmp/tsvub$ID.XXXX")
PREFIX_A=tsvub${ID}a
PREFIX_B=tsvub${ID}b
SW_PID=""; A_PID=""; B_PID=""
cleanup() {
    for pid in $A_PID $B_PID; do kill -INT "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in $A_PID $B_PID $SW_PID; do kill "$pid" 2>/dev/null || true; done
    for pid in $A_PID $B_PID $SW_PID; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$DIR" "/var/run/dpdk/$PREFIX_A" "/var/run/dpdk/$PREFIX_B"
}
trap cleanup EXIT INT TERM

MODE=server; VSRV=""
if [ "$CLIENT" = 1 ]; then MODE=client; VSRV=",server=1"; fi
# testpmd's txonly frames go to this MAC (its default peer address for port 0).
DST=02:00:00:00:00:00
# --loop: the destinations of testpmd's two ports.
PEER_A=02:00:00:00:00:0a
PEER_B=02:00:00:00:00:0b
cat >"$DIR/config.toml" <<EOF
[switch]
workers = 1
state_dir = "$DIR/state"

[[port]]
name = "vua$ID"
type = "vhost-user"
socket = "$DIR/a.sock"
vhost_user_mode = "$MODE"

[[port]]
name = "vub$ID"
type = "vhost-user"
socket = "$DIR/b.sock"
vhost_user_mode = "$MODE"

$(if [ "$LOOP" = 1 ]; then
    # testpmd's port 0 (A) sends to PEER_A, which is reached through B, and port 1 to PEER_B.
    printf '[[fdb]]\nmac = "%s"\nport = "vub%s"\n\n[[fdb]]\nmac = "%s"\nport = "vua%s"\n' \
        "$PEER_A" "$ID" "$PEER_B" "$ID"
else
    printf '[[fdb]]\nmac = "%s"\nport = "vub%s"\n' "$DST" "$ID"
fi)
EOF
PA=vua$ID; PB=vub$ID

taskset -c "$CPU_SW" "$BIN" run --config "$DIR/config.toml" --socket "$DIR/ctl.sock" \
    >"$DIR/tapswitch.log" 2>&1 &
SW_PID=$!
for _ in $(seq 50); do [ -S "$DIR/ctl.sock" ] && break; sleep 0.1; done
ts() { "$BIN" --socket "$DIR/ctl.sock" "$@"; }

testpmd() { # NAME CPU SOCKET PREFIX MODE; exec: the background job's PID is testpmd's
    exec taskset -c "$2" dpdk-testpmd --lcores "0@$2,1@$2" --no-huge -m 1024 --no-pci \
        --file-prefix="$4" \
        --vdev="net_virtio_user0,path=$3,queues=1,queue_size=$QSIZE$VSRV" -- \
        --forward-mode="$5" --txpkts=64 --stats-period 1 --auto-start --nb-cores=1 \
        --rxq=1 --txq=1 --total-num-mbufs=16384 --eth-peer=0,$DST
}
loop_testpmd() { # CPU; exec as above
    local q=$((INFLIGHT > QSIZE ? INFLIGHT : QSIZE))
    exec taskset -c "$1" dpdk-testpmd --lcores "0@$1,1@$1" --no-huge -m 1024 --no-pci \
        --file-prefix="$PREFIX_A" \
        --vdev="net_virtio_user0,path=$DIR/a.sock,queues=1,queue_size=$q$VSRV" \
        --vdev="net_virtio_user1,path=$DIR/b.sock,queues=1,queue_size=$q$VSRV" -- \
        --forward-mode=mac --tx-first --burst="$INFLIGHT" --txpkts=64 --stats-period 1 \
        --auto-start --nb-cores=1 --rxq=1 --txq=1 --total-num-mbufs=16384 \
        --eth-peer=0,$PEER_A --eth-peer=1,$PEER_B
}
if [ "$LOOP" = 1 ]; then
    loop_testpmd "$CPU_B" >"$DIR/a.log" 2>&1 &
    A_PID=$!
else
    testpmd B "$CPU_B" "$DIR/b.sock" "$PREFIX_B" rxonly >"$DIR/b.log" 2>&1 &
    B_PID=$!
    sleep 3
    testpmd A "$CPU_A" "$DIR/a.sock" "$PREFIX_A" txonly >"$DIR/a.log" 2>&1 &
    A_PID=$!
fi
sleep 5 # warm-up: both connected, A sending

stat_port() { ts --json stats | python3 -c "import json,sys
d=json.load(sys.stdin)
p=[p for p in d['ports'] if p['name']=='$1'][0]
print(p['rx_packets'], p['tx_packets'])"; }
cpu() { awk '{print $14+$15}' "/proc/$SW_PID/stat"; }
read -r A_RX0 A_TX0 <<<"$(stat_port "$PA")"
read -r B_RX0 B_TX0 <<<"$(stat_port "$PB")"
C0=$(cpu); T0=$(date +%s.%N)
if [ -n "$PERF" ]; then
    perf record -q -F 999 ${PERF_CALLGRAPH:--g} -o "$PERF" -p "$SW_PID" -- sleep "$DURATION" >/dev/null 2>&1
else
    sleep "$DURATION"
fi
read -r A_RX1 A_TX1 <<<"$(stat_port "$PA")"
read -r B_RX1 B_TX1 <<<"$(stat_port "$PB")"
C1=$(cpu); T1=$(date +%s.%N)

if [ "$LOOP" = 1 ]; then
    echo "== vhost-user: 64 B frames circling testpmd (mac forwarding, $INFLIGHT sent into each port) <-> tapswitch ($MODE mode, 1 worker)"
    echo "   (cpus: tapswitch $CPU_SW, testpmd $CPU_B; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
else
    echo "== vhost-user: testpmd txonly 64 B -> tapswitch ($MODE mode, 1 worker) -> testpmd rxonly"
    echo "   (cpus: tapswitch $CPU_SW, testpmd B $CPU_B, testpmd A $CPU_A; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
fi
ts port list | sed 's/^/   /'
python3 - "$LOOP" "$A_RX0" "$A_RX1" "$A_TX0" "$A_TX1" "$B_RX0" "$B_RX1" "$B_TX0" "$B_TX1" \
    "$C0" "$C1" "$T0" "$T1" "$(getconf CLK_TCK)" <<'EOF'
import sys
loop = sys.argv[1] == "1"
ar0, ar1, at0, at1, br0, br1, bt0, bt1, c0, c1 = map(int, sys.argv[2:12])
t = float(sys.argv[13]) - float(sys.argv[12]); hz = int(sys.argv[14])
cpu = (c1 - c0) / hz / t
if loop:
    read = (ar1 - ar0 + br1 - br0) / t
    written = (at1 - at0 + bt1 - bt0) / t
    print(f"tapswitch read:         {read/1e6:.3f} Mpps (A {(ar1-ar0)/t/1e6:.3f} + B {(br1-br0)/t/1e6:.3f})")
    print(f"tapswitch wrote:        {written/1e6:.3f} Mpps")
    print(f"loss in tapswitch:      {max(0.0, 100*(1-written/read)) if read else 0:.1f} % (an RX ring full)")
else:
    read, written = (ar1 - ar0) / t, (bt1 - bt0) / t
    print(f"tapswitch read from A:  {read/1e6:.3f} Mpps")
    print(f"tapswitch wrote to B:   {written/1e6:.3f} Mpps")
    print(f"loss in tapswitch:      {100*(1-written/read) if read else 0:.1f} % (B's RX ring full)")
print(f"tapswitch CPU:          {100*cpu:.0f} % of a CPU, {1e9*cpu/read if read else 0:.0f} ns per frame read")
EOF
if [ "$LOOP" = 1 ]; then
    echo "testpmd Rx-pps, ports A and B (last 3 s): $(grep -a 'Rx-pps' "$DIR/a.log" | tail -6 | awk '{print $2}' | xargs)"
else
    echo "testpmd A Tx-pps (last 3 s): $(grep -a 'Tx-pps' "$DIR/a.log" | tail -3 | awk '{print $2}' | xargs)"
    echo "testpmd B Rx-pps (last 3 s): $(grep -a 'Rx-pps' "$DIR/b.log" | tail -3 | awk '{print $2}' | xargs)"
fi
if [ -n "${VERBOSE:-}" ]; then
    for f in tapswitch a b; do [ -f "$DIR/$f.log" ] && { echo "--- $f.log"; tail -15 "$DIR/$f.log"; }; done
fi
