#!/usr/bin/env bash
# Runs tapswitch with examples/two-vlans.toml: web and db share VLAN 10, guest is alone on
# VLAN 20, all in one IP subnet so only the VLAN keeps guest out. Shows reachability, the MAC
# table and the counters, then removes everything (also on Ctrl-C or failure).
# Needs root. Usage: examples/two-vlans.sh [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
. examples/lib.sh
sock=$(mktemp -u /tmp/tapswitch-example-XXXX.sock)
log=${sock%.sock}.log
namespaces=(ex-web ex-db ex-guest ex-router)
made=() # the namespaces this run created (and so removes)
cleanup() {
  ts_daemon_stop_all # stop --purge: its TAPs go first, then the namespaces
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "$log"
}
ts_trap_cleanup cleanup
for ns in "${namespaces[@]}"; do ip netns add "$ns"; made+=("$ns"); done

ts_daemon_start --config examples/two-vlans.toml "$bin" "$sock" "$log"
ts() { "$bin" --socket "$sock" "$@"; }

ip -n ex-web addr add 10.70.0.1/24 dev ex-web
ip -n ex-db addr add 10.70.0.2/24 dev ex-db
ip -n ex-guest addr add 10.70.0.3/24 dev ex-guest
ts port list
echo
say_ping() {
  if ip netns exec "$1" ping -c 2 -W 1 -q "$2" >/dev/null 2>&1; then echo "$1 -> $2: reachable"
  else echo "$1 -> $2: unreachable"; fi
}
command -v ping >/dev/null || { echo "this example uses ping (apt-get install iputils-ping)"; exit 1; }
say_ping ex-web 10.70.0.2     # same VLAN: reachable
say_ping ex-web 10.70.0.3     # other VLAN: unreachable
echo
ts fdb show
echo
ts stats
