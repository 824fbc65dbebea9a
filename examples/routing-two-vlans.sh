#!/usr/bin/env bash
# Routing between two VLANs with examples/routing.toml: "web" on VLAN 10 (10.42.0.2, fd42::2)
# and "db" on VLAN 20 (10.42.1.2, fd42:1::2), each with tapswitch's interface address as its
# default gateway. Shows reachability across the router (IPv4 and IPv6), what a router does
# with TTL 1, an unreachable route and a prefix with no route, then the FIB, the interfaces,
# the resolved neighbours and the counters; removes everything, also on Ctrl-C or failure.
# Needs root and ping. Usage: examples/routing-two-vlans.sh [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
command -v ping >/dev/null || { echo "this example uses ping (apt-get install iputils-ping)"; exit 1; }

. examples/lib.sh
tag="rt$$"
web="${tag}web"; db="${tag}db"
sock=$(mktemp -u /tmp/tapswitch-"$tag"-XXXX.sock)
log=/tmp/tapswitch-"$tag".log
made=() # the namespaces this run created (and so removes)
# shellcheck disable=SC2317 # run by the exit trap
cleanup() {
  ts_daemon_stop_all # stop --purge: its TAPs go first, then the namespaces
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "$log"
}
ts_trap_cleanup cleanup
for ns in "$web" "$db"; do
  ip netns add "$ns"; made+=("$ns"); ip -n "$ns" link set lo up
done

ts_daemon_start --config examples/routing.toml "$bin" "$sock" "$log"
ts() { "$bin" --socket "$sock" "$@"; }

# A container: a TAP port on a VLAN, its addresses, default routes via the gateway.
add_container() { # ns vlan v4/len v6/len gw4 gw6
  ts port add "$1" --netns "$1" --vlan "$2"
  ip -n "$1" addr add "$3" dev "$1"
  ip -n "$1" addr add "$4" dev "$1" nodad
  ip -n "$1" route add default via "$5"
  ip -n "$1" -6 route add default via "$6"
}
add_container "$web" 10 10.42.0.2/24 fd42::2/64 10.42.0.1 fd42::1
add_container "$db" 20 10.42.1.2/24 fd42:1::2/64 10.42.1.1 fd42:1::1

failed=0
reach() { # ns dst what
  if ip netns exec "$1" ping -c 2 -i 0.2 -W 1 -q "$2" >/dev/null 2>&1; then
    echo "$3 ($2): reachable"
  else
    echo "$3 ($2): UNREACHABLE"; failed=1
  fi
}
# What a ping gets back instead of a reply (the router's ICMP error), on one line.
answer() { # ns what ping-args...
  local ns=$1 what=$2; shift 2
  local got
  got=$(ip netns exec "$ns" ping -c 1 -W 2 "$@" 2>&1 | grep -E '^From |bytes from' | head -1 || true)
  echo "$what: ${got:-no answer}"
}
echo "== across the router"
reach "$web" 10.42.1.2 "web (VLAN 10) -> db (VLAN 20)"
reach "$db" 10.42.0.2 "db (VLAN 20) -> web (VLAN 10)"
reach "$web" fd42:1::2 "web -> db over IPv6"
reach "$web" 10.42.1.1 "web -> the gateway address of VLAN 20"
echo
echo "== what a router answers"
answer "$web" "TTL 1 to db" -t 1 10.42.1.2
answer "$web" "TTL 2 to db" -t 2 10.42.1.2
answer "$web" "hop limit 1 to db" -6 -t 1 fd42:1::2
answer "$web" "to 10.99.0.1 (route: unreachable)" 10.99.0.1
answer "$web" "to 10.77.0.1 (no route)" 10.77.0.1
echo
echo "== tapswitch route show"; ts route show
echo
echo "== tapswitch interface list"; ts interface list
echo
echo "== tapswitch neigh show"; ts neigh show
echo
echo "== tapswitch stats"; ts stats
exit "$failed"
