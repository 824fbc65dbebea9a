#!/usr/bin/env bash
# Two hosts routing their container subnets to each other over IPIP (IPv4-in-IPv4, as
# Calico's and flannel's IPIP modes do). "host1" and "host2" share an underlay (a veth pair,
# 192.168.205.2 and .5; the hosts' kernels route the outer packets); each runs tapswitch with
# a container behind it: 10.42.0.2 on host1, 10.42.1.2 on host2, each with its tapswitch's
# interface as gateway and a route `10.42.x.0/24 via <other host> encap ipip`. With
# --kernel-peer, host2 is plain Linux instead: an ipip device to host1 holding 10.42.1.1
# (on a kernel that cannot make ipip devices the example says so and exits 0).
# Shows reachability, a few outer packets on the underlay (if tcpdump is installed), the
# FIB and the IPIP counters; removes everything, also on Ctrl-C or failure.
# Needs root and ping. Usage: examples/two-hosts-ipip.sh [--kernel-peer] [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
kernel_peer=false
if [ "${1:-}" = "--kernel-peer" ]; then kernel_peer=true; shift; fi
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
command -v ping >/dev/null || { echo "this example uses ping (apt-get install iputils-ping)"; exit 1; }

. examples/lib.sh
tag="ip$$"
h1="${tag}h1"; h2="${tag}h2"; c1="${tag}c1"; c2="${tag}c2"
s1=$(mktemp -u /tmp/tapswitch-"$tag"-1-XXXX.sock); s2=$(mktemp -u /tmp/tapswitch-"$tag"-2-XXXX.sock)
pids=() # tcpdump
made=() # the namespaces this run created (and so removes)
cleanup() {
  for p in "${pids[@]}"; do if kill "$p" 2>/dev/null; then wait "$p" 2>/dev/null || true; fi; done
  ts_daemon_stop_all # stop --purge: their TAPs go first, then the namespaces
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f /tmp/"$tag"-1.log /tmp/"$tag"-2.log /tmp/"$tag".txt
}
ts_trap_cleanup cleanup
for ns in "$h1" "$h2" "$c1" "$c2"; do ip netns add "$ns"; made+=("$ns"); ip -n "$ns" link set lo up; done
ip -n "$h1" link add ul type veth peer name ul netns "$h2"
ip -n "$h1" addr add 192.168.205.2/24 dev ul; ip -n "$h1" link set ul up
ip -n "$h2" addr add 192.168.205.5/24 dev ul; ip -n "$h2" link set ul up
# --kernel-peer needs a kernel that makes ipip devices; minimal ones are built without
# CONFIG_NET_IPIP. Checked before anything starts (tests/routing.rs has a TUN-based
# fallback peer for such kernels; this example does not).
if $kernel_peer && ! err=$(ip -n "$h2" link add tun1 type ipip local 192.168.205.5 remote 192.168.205.2 2>&1); then
  echo "skipped: --kernel-peer needs the kernel's ipip device, and this kernel cannot make one"
  echo "  (ip link add ... type ipip: ${err:-failed}; no ipip module / CONFIG_NET_IPIP)."
  echo "  Without --kernel-peer, the two-tapswitch setup runs on any kernel."
  exit 0
fi

# host1: tapswitch inside the host's namespace, so its raw IPIP sockets live there.
ts_daemon_start --netns "$h1" "$bin" "$s1" /tmp/"$tag"-1.log
ts1() { "$bin" --socket "$s1" "$@"; }
ts1 interface add 10 --address 10.42.0.1/24
ts1 route add 10.42.1.0/24 --via 192.168.205.5 --encap ipip
ts1 port add "${tag}p1" --netns "$c1" --vlan 10
ip -n "$c1" addr add 10.42.0.2/24 dev "${tag}p1"
ip -n "$c1" route add default via 10.42.0.1

if $kernel_peer; then
  # host2: the kernel's ipip device towards host1 (made above), holding 10.42.1.1 itself.
  ip -n "$h2" link set tun1 up
  ip -n "$h2" addr add 10.42.1.1/32 dev tun1
  ip -n "$h2" route add 10.42.0.0/24 dev tun1
  # Finished checksums and single packets on the wire, as a NIC sends them (a veth would
  # hand host1's raw socket inner TCP checksums still left to offload).
  ip netns exec "$h2" ethtool -K ul tx off >/dev/null 2>&1 || true
  # host1's kernel would answer tapswitch's IPIP with ICMP port unreachable if its ipip
  # module is loaded: its fallback device tunl0 up takes the packets instead.
  ip -n "$h1" link set tunl0 up 2>/dev/null || true
  target=10.42.1.1; from_far="$h2"
else
  ts_daemon_start --netns "$h2" "$bin" "$s2" /tmp/"$tag"-2.log
  "$bin" --socket "$s2" interface add 10 --address 10.42.1.1/24
  "$bin" --socket "$s2" route add 10.42.0.0/24 --via 192.168.205.2 --encap ipip
  "$bin" --socket "$s2" port add "${tag}p2" --netns "$c2" --vlan 10
  ip -n "$c2" addr add 10.42.1.2/24 dev "${tag}p2"
  ip -n "$c2" route add default via 10.42.1.1
  target=10.42.1.2; from_far="$c2"
fi

capture=""
if command -v tcpdump >/dev/null; then
  ip netns exec "$h2" tcpdump -n -l -c 4 -i ul 'ip proto 4' >/tmp/"$tag".txt 2>/dev/null &
  capture=$!; pids+=("$capture")
  sleep 0.5
fi
if ip netns exec "$c1" ping -c 3 -W 1 -q "$target" >/dev/null; then
  echo "container on host1 -> $target on host2 over IPIP: reachable"
else
  echo "container on host1 -> $target on host2 over IPIP: UNREACHABLE"; exit 1
fi
if ip netns exec "$from_far" ping -c 3 -W 1 -q 10.42.0.2 >/dev/null; then
  echo "host2 side -> container on host1 (10.42.0.2) over IPIP: reachable"
else
  echo "host2 side -> container on host1 (10.42.0.2) over IPIP: UNREACHABLE"; exit 1
fi
if [ -n "$capture" ]; then
  sleep 0.5; kill "$capture" 2>/dev/null || true; wait "$capture" 2>/dev/null || true
  echo
  echo "== on the underlay (host2's end; outer 192.168.205.x, inner 10.42.x.x):"
  cat /tmp/"$tag".txt
fi
echo
echo "== host1: tapswitch route show"; ts1 route show
echo
echo "== host1: tapswitch neigh show"; ts1 neigh show
echo
echo "== host1: tapswitch stats"; ts1 stats
