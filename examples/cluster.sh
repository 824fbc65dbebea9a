#!/usr/bin/env bash
# Cluster mode on etcd: a real etcd server and three hosts, each running tapswitch in cluster
# mode with two pods. The hosts share an underlay (a bridge, 192.168.77.0/24) on which etcd
# listens (192.168.77.10). Each node leases its pod subnet in etcd (flannel's records), and
# programs the others' from theirs; a Service written to etcd reaches a backend on another
# node. Shows the leases as etcd holds them, `cluster status`, reachability between every
# pair of pods, the Service, and what one node's tables hold; removes everything, also on
# Ctrl-C or failure.
# Needs root, ping, etcd and etcdctl (apt-get install etcd-server etcd-client).
# Usage: examples/cluster.sh [vxlan|host-gw|ipip] [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-vxlan}
case "$backend" in vxlan|host-gw|ipip) ;; *) echo "backend: vxlan, host-gw or ipip"; exit 1 ;; esac
bin=${2:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
for tool in ping etcd etcdctl; do
  command -v "$tool" >/dev/null || { echo "this example uses $tool (see the comment at the top)"; exit 1; }
done

. examples/lib.sh
tag="cl$$"
ul="${tag}ul"
made=()   # namespaces this run created
etcd_pid=""
data=$(mktemp -d /tmp/tapswitch-"$tag"-etcd-XXXX)
cleanup() {
  ts_daemon_stop_all # stop --purge: leases revoked, TAPs removed
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$data" /tmp/"$tag"-*.log /tmp/"$tag"-*.toml
}
ts_trap_cleanup cleanup

ip netns add "$ul"; made+=("$ul"); ip -n "$ul" link set lo up
ip -n "$ul" link add br0 type bridge; ip -n "$ul" addr add 192.168.77.10/24 dev br0
ip -n "$ul" link set br0 up
url=http://192.168.77.10:2379
ip netns exec "$ul" etcd --name "$tag" --data-dir "$data" \
  --listen-client-urls "$url" --advertise-client-urls "$url" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$tag=http://127.0.0.1:2380" >/tmp/"$tag"-etcd.log 2>&1 &
etcd_pid=$!
ctl() { ip netns exec "$ul" env ETCDCTL_API=3 etcdctl --endpoints "$url" "$@"; }
for _ in $(seq 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
prefix=/coreos.com/network
ctl put "$prefix/config" "{\"Network\":\"10.42.0.0/16\",\"SubnetLen\":24,\"Backend\":{\"Type\":\"$backend\"}}" >/dev/null
echo "etcd: $prefix/config = $(ctl get "$prefix/config" --print-value-only)"

declare -a socks pods pod_ips
for n in 1 2 3; do
  h="${tag}h$n"; ip netns add "$h"; made+=("$h"); ip -n "$h" link set lo up
  ip -n "$h" link add ul0 type veth peer name "${tag}v$n" netns "$ul"
  ip -n "$ul" link set "${tag}v$n" master br0 up
  ip -n "$h" addr add "192.168.77.$n/24" dev ul0; ip -n "$h" link set ul0 up
  cfg=/tmp/"$tag"-$n.toml
  if [ "$backend" = host-gw ]; then
    # host-gw: tapswitch is the node's router on the underlay; its interface holds PublicIP.
    printf '[[port]]\nname = "ul0"\nattach = true\nvlan = 100\n[[interface]]\nvlan = 100\naddress = "192.168.77.%s/24"\n' $((100 + n)) >"$cfg"
    printf '[cluster]\netcd_endpoints = ["%s"]\nunderlay_vlan = 100\npod_vlan = 10\n' "$url" >>"$cfg"
  else
    printf '[cluster]\netcd_endpoints = ["%s"]\npublic_ip = "192.168.77.%s"\npod_vlan = 10\n' "$url" "$n" >"$cfg"
  fi
  sock=$(mktemp -u /tmp/tapswitch-"$tag"-$n-XXXX.sock); socks[n]=$sock
  ts_daemon_start --netns "$h" --config "$cfg" "$bin" "$sock" /tmp/"$tag"-$n.log
  for _ in $(seq 100); do
    "$bin" --socket "$sock" -j cluster status | grep -q '"lease":' && break; sleep 0.1
  done
  lease=$("$bin" --socket "$sock" -j cluster status)
  subnet=$(printf '%s' "$lease" | sed -n 's/.*"lease":{[^}]*"subnet":"\([^"]*\)".*/\1/p')
  gw=$(printf '%s' "$lease" | sed -n 's/.*"lease":{[^}]*"gateway":"\([^"]*\)".*/\1/p')
  base=${subnet%.0/24}
  mtu=$(printf '%s' "$lease" | sed -n 's/.*"pod_mtu":\([0-9]*\).*/\1/p')
  echo "node $n: leased $subnet (gateway $gw, pod MTU $mtu)"
  for p in 2 3; do
    c="${tag}n${n}p$p"; ip netns add "$c"; made+=("$c"); ip -n "$c" link set lo up
    "$bin" --socket "$sock" port add "${tag}t$n$p" --netns "$c" --vlan 10
    ip -n "$c" addr add "$base.$p/24" dev "${tag}t$n$p"
    ip -n "$c" link set "${tag}t$n$p" mtu "$mtu"
    ip -n "$c" route add default via "$gw"
    pods+=("$c"); pod_ips+=("$base.$p")
  done
done
echo
echo "== the leases in etcd (flannel's records):"
ctl get --prefix "$prefix/subnets/" | paste - -
sleep 1
echo
echo "== node 1: tapswitch cluster status"
"$bin" --socket "${socks[1]}" cluster status
echo
echo "== every pod to every other pod:"
fail=0
for i in "${!pods[@]}"; do
  for j in "${!pods[@]}"; do
    [ "$i" = "$j" ] && continue
    if ip netns exec "${pods[$i]}" ping -c 1 -W 2 -q "${pod_ips[$j]}" >/dev/null; then r=ok; else r=UNREACHABLE; fail=1; fi
    printf '  %-13s -> %-13s %s\n' "${pod_ips[$i]}" "${pod_ips[$j]}" "$r"
  done
done
[ "$fail" = 0 ] || { echo "some pods cannot reach each other"; exit 1; }
echo
backend_ip=${pod_ips[5]}
ctl put "$prefix/services/echo" "{\"vip\":\"10.96.0.10\",\"port\":7,\"protocol\":\"udp\",\"backends\":[\"$backend_ip:7\"]}" >/dev/null
sleep 1
echo "== a Service written to etcd (backend $backend_ip on node 3), as node 1 has it:"
"$bin" --socket "${socks[1]}" service list
echo
echo "== node 1: routes, neighbours and the FDB the cluster programmed"
"$bin" --socket "${socks[1]}" route show
"$bin" --socket "${socks[1]}" neigh show
"$bin" --socket "${socks[1]}" fdb show
