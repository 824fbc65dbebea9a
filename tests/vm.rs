//! Real VMs on tapswitch ports: QEMU under TCG booting a Debian cloud kernel (see
//! `common::vm`), its virtio-net NIC on a port, the kernel's own stacks at both ends.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
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

    // The container sends 4 MiB to the VM (busybox nc), checked by md5sum in the guest.
    let data = pattern(4 << 20);
    vm.ok("nc -l -p 5001 >/run/in 2>/run/nc.err </dev/null &");
    vm.ok("i=0; while ! netstat -ltn | grep -q ':5001 '; do \
         i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done");
    let to: SocketAddr = "10.93.0.2:5001".parse().unwrap();
    let mut conn = ns
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))
        .expect("connect to the VM");
    conn.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(&data).expect("send to the VM");
    conn.shutdown(Shutdown::Write).unwrap();
    // nc closes its side when it has read everything.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("the VM closes");
    drop(conn);
    let got = vm.ok(
        "i=0; while pidof nc >/dev/null; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done; \
         wc -c </run/in; md5sum </run/in; cat /run/nc.err",
    );
    let mut lines = got.lines();
    assert_eq!(lines.next().map(str::trim), Some("4194304"), "{got}");
    let guest_md5 = lines.next().unwrap_or("").split_whitespace().next();
    assert_eq!(guest_md5, Some(md5(&data).as_str()), "{got}");

    // And the VM sends it back to the container, compared byte by byte.
    let listener = ns
        .run(|| TcpListener::bind("10.93.0.1:5002"))
        .expect("listen in the container");
    let receiver = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        Ok(got)
    });
    vm.ok("nc 10.93.0.1 5002 </run/in");
    let back = receiver.join().unwrap().expect("receive from the VM");
    assert_eq!(back.len(), data.len(), "bytes back from the VM");
    assert!(back == data, "the stream from the VM is byte-exact");

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

/// `len` bytes of a fixed pseudo-random sequence.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The md5 of `data` in hex, by the host's `md5sum`.
fn md5(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("md5sum output");
    writer.join().unwrap().expect("feed md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
