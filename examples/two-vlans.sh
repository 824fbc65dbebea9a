#!/usr/bin/env bash
# Runs tapswitch with examples/two-vlans.toml: web and db share VLAN 10, guest is alone on
# VLAN 20, all in one IP subnet so only the VLAN keeps guest out. Shows reachability, the MAC
# table and the counters, then removes everything (also on Ctrl-C or failure).
# Needs root. Usage: examples/two-vlans.sh [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
sock=$(mktemp -u /tmp/tapswitch-example-XXXX.sock)
namespaces=(ex-web ex-db ex-guest ex-router)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
for ns in "${namespaces[@]}"; do ip netns add "$ns"; done

"$bin" --socket "$sock" run --config examples/two-vlans.toml 2>/tmp/tapswitch-example.log &
pid=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
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
