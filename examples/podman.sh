#!/usr/bin/env bash
# Containers on tapswitch through its CNI plugin, driven by podman (4.x, CNI backend): a
# network "tsnet" whose plugin is tapswitch, a busybox httpd container published with
# -p 8080:80, and a client container. Shows the addresses podman reports, the ports tapswitch
# made (with the containers' IDs), the port forward, the client fetching a page directly and
# through the port mapping, and `podman rm` leaving nothing behind. Containers are made from
# busybox-static (no image registry is needed). Everything podman keeps (storage, the CNI
# configuration, host-local's leases) lives in a temporary directory, removed at the end,
# also on Ctrl-C or failure.
# Needs root, podman, runc, busybox-static and containernetworking-plugins
# (apt-get install podman runc busybox-static containernetworking-plugins).
# Usage: examples/podman.sh [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
for tool in podman runc; do
  command -v "$tool" >/dev/null || { echo "this example uses $tool (see the comment at the top)"; exit 1; }
done
[ -x /usr/lib/cni/host-local ] || { echo "this example uses /usr/lib/cni/host-local (containernetworking-plugins)"; exit 1; }

. examples/lib.sh
dir=$(mktemp -d /tmp/tapswitch-podman-XXXX)
sock="$dir/tapswitch.sock"
pm() { CONTAINERS_CONF="$dir/containers.conf" podman --root "$dir/root" --runroot "$dir/runroot" --storage-driver vfs "$@"; }
cleanup() {
  pm rm -a -f -t 0 >/dev/null 2>&1 || true
  ts_daemon_stop_all
  rm -rf "$dir"
}
ts_trap_cleanup cleanup

# The plugin: the tapswitch binary, named for its CNI type, in a plugin directory.
mkdir -p "$dir/cni-bin" "$dir/cni-conf" "$dir/ipam" "$dir/rootfs/bin" "$dir/rootfs/etc" "$dir/rootfs/tmp" "$dir/www"
cp "$bin" "$dir/cni-bin/tapswitch"
# A root filesystem from busybox-static.
cp /usr/bin/busybox "$dir/rootfs/bin/"
for a in $(/usr/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$dir/rootfs/bin/$a"; done
echo "hello from a container on tapswitch" >"$dir/www/index.html"
cat >"$dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
cni_plugin_dirs = ["$dir/cni-bin", "/usr/lib/cni"]
network_config_dir = "$dir/cni-conf"
default_subnet = "10.199.0.0/24"
CONF
cat >"$dir/cni-conf/tsnet.conflist" <<CONF
{"cniVersion":"1.0.0","name":"tsnet","plugins":[
 {"type":"tapswitch","socket":"$sock","vlan":10,"mtu":1500,
  "ipam":{"type":"host-local","dataDir":"$dir/ipam","ranges":[[{"subnet":"10.42.0.0/24","gateway":"10.42.0.1"}]]},
  "capabilities":{"portMappings":true,"mac":true,"ips":true}}]}
CONF

ts_daemon_start "$bin" "$sock" "$dir/tapswitch.log"
echo "== podman network ls"
pm network ls
pm run -d --name web --network tsnet -p 8080:80 -v "$dir/www:/www" --rootfs "$dir/rootfs" httpd -f -p 80 -h /www >/dev/null
pm run -d --name client --network tsnet --rootfs "$dir/rootfs" sleep 3600 >/dev/null
web=$(pm inspect -f '{{.NetworkSettings.Networks.tsnet.IPAddress}}' web)
client=$(pm inspect -f '{{.NetworkSettings.Networks.tsnet.IPAddress}}' client)
echo
echo "== podman: web is $web, client is $client"
echo
echo "== tapswitch port list (each port owned by its container)"
"$bin" --socket "$sock" port list
echo
echo "== tapswitch dnat list (-p 8080:80: on every router address)"
"$bin" --socket "$sock" dnat list
echo
echo "== client -> web directly:"
pm exec client wget -q -O - "http://$web/"
echo "== client -> the mapping on the gateway's address (10.42.0.1:8080):"
pm exec client wget -q -O - "http://10.42.0.1:8080/"
echo
pm rm -f -t 0 web client >/dev/null
echo "== after podman rm: ports, forwards"
"$bin" --socket "$sock" port list
"$bin" --socket "$sock" dnat list
