#!/usr/bin/env bash
# A two-host VXLAN overlay: "host1" runs tapswitch, "host2" runs tapswitch too (or, with
# --kernel-peer, the Linux kernel's vxlan device and bridge instead). The hosts share an
# underlay (a veth pair, 192.168.77.0/24); a container behind each host sits in VLAN 10,
# extended as VNI 42. Shows reachability across the overlay, the MAC table with the remote
# VTEP each MAC sits behind, and the counters; removes everything, also on Ctrl-C or failure.
# Needs root and ping. Usage: examples/two-hosts-vxlan.sh [--kernel-peer] [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
kernel_peer=false
if [ "${1:-}" = "--kernel-peer" ]; then kernel_peer=true; shift; fi
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
command -v ping >/dev/null || { echo "this example uses ping (apt-get install iputils-ping)"; exit 1; }

. examples/lib.sh
tag="vx$$"
h1="${tag}h1"; h2="${tag}h2"; c1="${tag}c1"; c2="${tag}c2"
s1=$(mktemp -u /tmp/tapswitch-"$tag"-1-XXXX.sock); s2=$(mktemp -u /tmp/tapswitch-"$tag"-2-XXXX.sock)
made=() # the namespaces this run created (and so removes)
cleanup() {
  ts_daemon_stop_all # stop --purge: their TAPs go first, then the namespaces
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f /tmp/"$tag"-1.log /tmp/"$tag"-2.log
}
ts_trap_cleanup cleanup
for ns in "$h1" "$h2" "$c1" "$c2"; do ip netns add "$ns"; made+=("$ns"); ip -n "$ns" link set lo up; done
ip -n "$h1" link add ul type veth peer name ul netns "$h2"
ip -n "$h1" addr add 192.168.77.1/24 dev ul; ip -n "$h1" link set ul up
ip -n "$h2" addr add 192.168.77.2/24 dev ul; ip -n "$h2" link set ul up

# host1: tapswitch, running inside the host's namespace so its VTEP socket lives there.
ts_daemon_start --netns "$h1" "$bin" "$s1" /tmp/"$tag"-1.log
"$bin" --socket "$s1" port add "${tag}p1" --netns "$c1" --vlan 10
"$bin" --socket "$s1" vxlan add 42 --vlan 10 --local 192.168.77.1 --remote 192.168.77.2
ip -n "$c1" addr add 10.42.0.1/24 dev "${tag}p1"; ip -n "$c1" link set "${tag}p1" mtu 1450

if $kernel_peer; then
  # host2: the kernel's vxlan device and a bridge, as flannel's vxlan backend builds them.
  ip -n "$h2" link add vx42 type vxlan id 42 dstport 4789 local 192.168.77.2 nolearning
  ip -n "$h2" link add br0 type bridge
  ip -n "$h2" link set vx42 master br0; ip -n "$h2" link set vx42 up; ip -n "$h2" link set br0 up
  ip -n "$h2" link add c2h type veth peer name eth0 netns "$c2"
  ip -n "$h2" link set c2h master br0; ip -n "$h2" link set c2h up
  ip netns exec "$h2" bridge fdb append 00:00:00:00:00:00 dev vx42 dst 192.168.77.1
  ip -n "$c2" addr add 10.42.0.2/24 dev eth0; ip -n "$c2" link set eth0 mtu 1450 up
else
  ts_daemon_start --netns "$h2" "$bin" "$s2" /tmp/"$tag"-2.log
  "$bin" --socket "$s2" port add "${tag}p2" --netns "$c2" --vlan 10
  "$bin" --socket "$s2" vxlan add 42 --vlan 10 --local 192.168.77.2 --remote 192.168.77.1
  ip -n "$c2" addr add 10.42.0.2/24 dev "${tag}p2"; ip -n "$c2" link set "${tag}p2" mtu 1450
fi

if ip netns exec "$c1" ping -c 3 -W 1 -q 10.42.0.2 >/dev/null; then
  echo "container on host1 -> container on host2 over VNI 42: reachable"
else
  echo "container on host1 -> container on host2 over VNI 42: UNREACHABLE"; exit 1
fi
echo
"$bin" --socket "$s1" vxlan list
echo
"$bin" --socket "$s1" fdb show
echo
"$bin" --socket "$s1" stats
