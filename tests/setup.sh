#!/bin/sh
# Installs what the tests use that a fresh Debian machine may lack: iproute2 and procps
# (namespaces), tcpdump and tshark (the VXLAN wire checks), ethtool (checksum offload on a
# kernel VTEP's veth), and, for the end-to-end bench, iperf3, ping, nft (nftables: the kernel
# NAT baseline) and openvswitch-switch (Open vSwitch's userspace datapath as a peer; the bench
# starts an instance of its own with its own database, never the system service, which the
# package may start where systemd runs); traceroute and tracepath (through NAT); protoc
# (protobuf-compiler: the etcd client crate compiles etcd's API at build time) and a real etcd
# server and etcdctl (cluster mode), openssl (the cluster tests make a CA for etcd over TLS),
# the reference CNI plugins (host-local IPAM for the CNI plugin's tests), podman with runc and
# busybox-static (the CNI plugin driven by a real runtime, containers made from busybox),
# prometheus (promtool checks the metrics), libpcap-dev (the build links libpcap: capture and
# trace filters are compiled from tcpdump's filter language by it); qemu-system-x86 (the VM
# tests run QEMU under TCG, with a kernel that they fetch themselves with `apt-get download
# linux-image-*-cloud-amd64`, so the package lists must know it; busybox-static is the guest's
# userland). Does nothing when all are there. Needs root (apt-get).
set -eu
need=""
command -v ip >/dev/null || need="$need iproute2"
command -v sysctl >/dev/null || need="$need procps"
command -v tcpdump >/dev/null || need="$need tcpdump"
command -v tshark >/dev/null || need="$need tshark"
command -v ethtool >/dev/null || need="$need ethtool"
command -v iperf3 >/dev/null || need="$need iperf3"
command -v ping >/dev/null || need="$need iputils-ping"
command -v tracepath >/dev/null || need="$need iputils-tracepath"
command -v traceroute >/dev/null || need="$need traceroute"
command -v nft >/dev/null || need="$need nftables"
command -v ovs-vswitchd >/dev/null || need="$need openvswitch-switch"
command -v protoc >/dev/null || need="$need protobuf-compiler"
command -v etcd >/dev/null || need="$need etcd-server"
command -v etcdctl >/dev/null || need="$need etcd-client"
command -v openssl >/dev/null || need="$need openssl"
[ -x /usr/lib/cni/host-local ] || need="$need containernetworking-plugins"
command -v podman >/dev/null || need="$need podman"
command -v runc >/dev/null || need="$need runc"
dpkg -s busybox-static >/dev/null 2>&1 || need="$need busybox-static"
command -v promtool >/dev/null || need="$need prometheus"
dpkg -s libpcap-dev >/dev/null 2>&1 || need="$need libpcap-dev"
dpkg -s python3-scapy >/dev/null 2>&1 || need="$need python3-scapy"
command -v dpdk-testpmd >/dev/null || need="$need dpdk-dev"
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  echo "updating the package lists (the VM tests fetch linux-image-cloud-amd64's kernel)"
  apt-get update -qq
fi
if [ -n "$need" ]; then
  echo "installing:$need"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
