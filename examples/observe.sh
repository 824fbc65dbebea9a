#!/usr/bin/env bash
# Seeing through the pipeline, with examples/nat.toml: web1 (VLAN 10, 10.42.0.2) serves, the
# "client" container (VLAN 10, 10.42.0.3) and "outside" (the uplink, VLAN 100, 10.200.0.254).
# Shows dry-run traces (a Service connection naming its backend, a masqueraded SYN to the
# outside, a drop), a live trace of a ping, a capture read live by tcpdump, and a capture of
# dropped frames with their reasons read by tshark; removes everything on exit, Ctrl-C or
# failure. Needs root, tcpdump and tshark.
# Usage: examples/observe.sh [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
for t in tcpdump tshark; do
  command -v "$t" >/dev/null || { echo "this example uses $t"; exit 1; }
done

. examples/lib.sh
tag="obs$$"
web1="${tag}w1"; client="${tag}c"; outside="${tag}o"
sock=$(mktemp -u /tmp/tapswitch-"$tag"-XXXX.sock)
log=/tmp/tapswitch-"$tag".log
drops=/tmp/tapswitch-"$tag"-drops.pcapng
made=() # the namespaces this run created (and so removes)
cleanup() {
  ts_daemon_stop_all # stop --purge: its TAPs go first, then the namespaces
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "$log" "$drops"
}
ts_trap_cleanup cleanup
for ns in "$web1" "$client" "$outside"; do
  ip netns add "$ns"; made+=("$ns"); ip -n "$ns" link set lo up
done

ts_daemon_start --config examples/nat.toml "$bin" "$sock" "$log"
ts() { "$bin" --socket "$sock" "$@"; }
add_container() { # ns vlan addr/len [gateway]
  ts port add "$1" --netns "$1" --vlan "$2" >/dev/null
  ip -n "$1" addr add "$3" dev "$1"
  [ -n "${4:-}" ] && ip -n "$1" route add default via "$4"
  true
}
add_container "$web1" 10 10.42.0.2/24 10.42.0.1
add_container "$client" 10 10.42.0.3/24 10.42.0.1
add_container "$outside" 100 10.200.0.254/24
# Traffic first, so MACs are learned and the router has resolved its neighbours.
ip netns exec "$client" ping -c 1 -W 1 10.42.0.2 >/dev/null
ip netns exec "$client" ping -c 1 -W 1 10.200.0.254 >/dev/null
ip netns exec "$web1" ping -c 1 -W 1 10.200.0.254 >/dev/null

say() { printf '\n== %s\n' "$*"; }
say "dry run: a connection to the Service 10.96.0.10:80 (nothing is learned, tracked or sent)"
echo "\$ tapswitch trace --in-port $client 'tcp 10.42.0.3:40000 > 10.96.0.10:80 syn'"
ts trace --in-port "$client" 'tcp 10.42.0.3:40000 > 10.96.0.10:80 syn'

say "dry run: a SYN to the outside, routed and masqueraded"
echo "\$ tapswitch trace --in-port $client 'tcp 10.42.0.3:40000 > 10.200.0.254:443 syn'"
ts trace --in-port "$client" 'tcp 10.42.0.3:40000 > 10.200.0.254:443 syn'

say "dry run: a frame tagged for a VLAN the access port is not in"
echo "\$ tapswitch trace --in-port $client 'vlan 20 udp 10.42.0.3:5000 > 10.42.0.2:53'"
ts trace --in-port "$client" 'vlan 20 udp 10.42.0.3:5000 > 10.42.0.2:53'

say "live: the path of a ping's two packets as they pass"
echo "\$ tapswitch trace --live --filter icmp --count 2"
ts trace --live --filter icmp --count 2 &
live=$!
sleep 0.5
ip netns exec "$client" ping -c 1 -W 1 10.42.0.2 >/dev/null
wait "$live"

say "capture: the client's port, live to tcpdump"
echo "\$ tapswitch capture $client --filter icmp -c 4 -w - | tcpdump -n -r -"
ts capture "$client" --filter icmp -c 4 -w - | tcpdump -n -r - &
cap=$!
sleep 0.5
ip netns exec "$client" ping -c 2 -i 0.2 -W 1 10.42.0.2 >/dev/null
wait "$cap"

say "capture: dropped frames with their reasons (pings with a TTL of 1 to the outside)"
echo "\$ tapswitch capture --drops -c 2 -w drops.pcapng; tshark -r drops.pcapng ..."
ts capture --drops -c 2 -w "$drops" &
cap=$!
sleep 0.5
ip netns exec "$client" ping -c 2 -i 0.2 -W 1 -t 1 10.200.0.254 >/dev/null || true
wait "$cap"
tshark -r "$drops" -T fields -e frame.number -e ip.src -e ip.dst -e frame.comment 2>/dev/null
