//! Real VMs on tapswitch ports: QEMU under TCG booting a Debian cloud kernel (see
//! `common::vm`), its virtio-net NIC on a port, the kernel's own stacks at both ends.

mod common;

use std::time::Duration;

use common::vm::{self, Net, Nic, Tap, Vm, VmConfig};
use common::*;

/// A VM host's way today: QEMU on a persistent TAP made for the VM, that TAP attached to
/// tapswitch with `port add NAME --attach --address ...`, and a container on a tapswitch TAP
/// port beside it. The VM gets its address, gateway, MTU and DNS by DHCP (busybox `udhcpc`)
/// from tapswitch's router interface; then the two ping each other and carry a 4 MiB TCP
/// stream each way, checked at both ends.
#[test]
fn a_vm_on_an_attached_tap_talks_to_a_container() {
    if !have_root() || !vm::available() {
        return;
    }
    // Declared in this order so they go in reverse: the VM, the container, the switch
    // (releasing the attached TAP), then the TAP.
    let tap = Tap::create(&unique("tsvmtap"));
    let switch = Switch::start();
    switch.cli(&[
        "interface",
        "add",
        "1",
        "--address",
        "10.93.0.254/24",
        "--mtu",
        "1450",
        "--dns",
        "10.93.0.53",
        "--domain",
        "vms.test",
    ]);
    switch.cli(&[
        "port",
        "add",
        tap.name(),
        "--attach",
        "--address",
        "10.93.0.2/24",
    ]);
    let ns = container("tsvmc", false);
    let port = unique("tsvmp");
    switch.add_container_port(&ns, &port, &[], &["10.93.0.1/24"]);
    let vm = Vm::boot(VmConfig::new(Nic::Tap(tap.name().to_string()), Net::Dhcp));
    eprintln!("the VM booted in {:.1?}", vm.boot_time());
    let lease = vm
        .wait_for_lease(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no DHCP lease from tapswitch: {e}\n{}", vm.logs()));
    assert_eq!(
        (lease.ip.as_str(), lease.prefix, lease.router.as_deref()),
        ("10.93.0.2", 24, Some("10.93.0.254")),
        "{lease:?}"
    );
    assert_eq!(lease.dns, ["10.93.0.53"], "{lease:?}");
    assert_eq!(lease.domain.as_deref(), Some("vms.test"), "{lease:?}");
    assert_eq!(lease.mtu, Some(1450), "{lease:?}");
    assert_eq!(lease.server.as_deref(), Some("10.93.0.254"), "{lease:?}");
    let out = vm.ok("ip -4 addr show eth0; ip route; cat /etc/resolv.conf");
    assert!(
        out.contains("inet 10.93.0.2/24")
            && out.contains("mtu 1450")
            && out.contains("default via 10.93.0.254")
            && out.contains("nameserver 10.93.0.53"),
        "{out}"
    );
    let out = vm.ok("ping -c 2 -W 5 10.93.0.254");
    assert!(
        out.contains("2 packets received"),
        "the VM pings its gateway: {out}"
    );

    // ARP and ICMP echo, each way.
    let out = vm.ok("ping -c 3 -W 5 10.93.0.1");
    assert!(out.contains("3 packets received"), "{out}");
    assert_eq!(ping(&ns, "10.93.0.2", 3), 3, "the container pings the VM");

    // 4 MiB each way over TCP, checked at both ends.
    vm::exchange_tcp(&vm, &ns, "10.93.0.2", "10.93.0.1");

    // The switch carried it: the VM's MAC learned on the attached TAP, bytes both ways.
    let learned = switch
        .fdb()
        .into_iter()
        .find(|e| e["mac"] == vm.mac())
        .unwrap_or_else(|| panic!("the VM's MAC {} is not learned", vm.mac()));
    assert_eq!(learned["port"], tap.name(), "{learned}");
    let stats = switch.port_stats(tap.name());
    assert!(stats["rx_bytes"].as_u64().unwrap() > 4 << 20, "{stats}");
    assert!(stats["tx_bytes"].as_u64().unwrap() > 4 << 20, "{stats}");
}

/// The harness's command encoding (RFC 4648 base64), checked without root or QEMU.
#[test]
fn commands_reach_the_guest_as_base64() {
    for (plain, coded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(vm::base64(plain.as_bytes()), coded);
    }
}
