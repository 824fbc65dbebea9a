#!/usr/bin/env bash
# Profiles tapswitch forwarding: two containers (network namespaces) with a TAP port each on a
# `tapswitch run` daemon, iperf3 between them, and `perf record -g` on the daemon meanwhile;
# prints the top of `perf report` (where tapswitch's CPU time goes: its own code, syscalls, the
# kernel's TAP and TCP work done in its threads).
#
#   sudo benches/profile.sh [--udp] [--workers N] [--seconds S] [--out DIR]
#
# --udp profiles 64-byte UDP (iperf3 -u -l 18 -b 0) instead of TCP. The perf data and the full
# report stay in DIR (default: a temporary directory, printed at the end). Every namespace and
# process this script makes carries its PID in the name and is removed on exit.
set -euo pipefail

UDP=0
WORKERS=""
SECONDS_=5
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --udp) UDP=1; shift ;;
    --workers) WORKERS=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "profile: unknown option $1" >&2; exit 1 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "profile: run as root" >&2; exit 1; }
for tool in perf iperf3 ip; do
    command -v "$tool" >/dev/null || { echo "profile: $tool not found" >&2; exit 1; }
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=examples/lib.sh
. "$ROOT/examples/lib.sh"
TAPSWITCH=${TAPSWITCH:-$ROOT/target/release/tapswitch}
[[ -x $TAPSWITCH ]] || cargo build --release --bin tapswitch --manifest-path "$ROOT/Cargo.toml"
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
P=tsp$$
SOCK=$OUT/$P.sock
DAEMON=""
SERVER=""

cleanup() {
    [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null || true
    # stop --purge: the daemon deletes its TAPs and forgets its state, then exits; its state
    # directory and socket go too.
    ts_daemon_stop_all
    ip netns del "${P}a" 2>/dev/null || true
    ip netns del "${P}b" 2>/dev/null || true
}
ts_trap_cleanup cleanup

conf=()
if [[ -n $WORKERS ]]; then
    printf '[switch]\nworkers = %s\n' "$WORKERS" >"$OUT/switch.toml"
    conf=(--config "$OUT/switch.toml")
fi
ts_daemon_start "${conf[@]}" "$TAPSWITCH" "$SOCK" "$OUT/tapswitch.log"
DAEMON=$TS_DAEMON_PID
for side in a b; do
    ip netns add "$P$side"
    ip -n "$P$side" link set lo up
    "$TAPSWITCH" --socket "$SOCK" port add "${P}t$side" --netns "$P$side" --vlan 10 >/dev/null
done
ip -n "${P}a" addr add 10.113.0.1/24 dev "${P}ta"
ip -n "${P}b" addr add 10.113.0.2/24 dev "${P}tb"
ip netns exec "${P}a" ping -c 2 -W 1 10.113.0.2 >/dev/null

ip netns exec "${P}b" iperf3 -s -1 >/dev/null 2>&1 &
SERVER=$!
sleep 0.5
if [[ $UDP -eq 1 ]]; then
    what=(-u -l 18 -b 0)
else
    what=()
fi
ip netns exec "${P}a" iperf3 -c 10.113.0.2 -t $((SECONDS_ + 2)) "${what[@]}" >"$OUT/iperf3.txt" 2>&1 &
CLIENT=$!
sleep 1
perf record -g -o "$OUT/perf.data" -p "$DAEMON" -- sleep "$SECONDS_" 2>"$OUT/perf-record.log"
wait "$CLIENT" || true
SERVER=""
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null >"$OUT/report.txt"
grep -E '^ +[0-9.]+%' "$OUT/report.txt" | head -40
echo
tail -n 4 "$OUT/iperf3.txt"
echo "profile: perf data and full report in $OUT"
