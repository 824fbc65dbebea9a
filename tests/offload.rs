//! TAP offloads with the kernel's own stacks: a TCP stream checked byte by byte between two
//! containers for every combination of offloads on and off at the two ports, switched and
//! routed (and masqueraded). With offloads on at both ends the kernel hands tapswitch 64 KiB
//! super-frames and takes them back whole (the egress port's bytes per frame show it); towards
//! a port with offloads off they arrive cut to the MTU, with correct checksums (the receiving
//! stack verifies them, the byte check proves the stream). Routed and masqueraded, super-frames
//! stay whole too (TTL, NAT and the partial checksum updated in place).

mod common;

use std::time::Duration;

use common::*;

const BYTES: u64 = 16 << 20;

fn port_flags(vlan: u16, offload: bool) -> Vec<String> {
    let mut f = vec!["--vlan".to_string(), vlan.to_string()];
    if !offload {
        f.push("--no-offload".into());
    }
    f
}

fn stat(sw: &Switch, port: &str, key: &str) -> u64 {
    sw.port_stats(port)[key].as_u64().unwrap_or(0)
}

/// A TCP transfer from a container on port `pa` to one on `pb`; returns the bytes per frame
/// that left through `pb`.
fn transfer(sw: &Switch, a: &Netns, b: &Netns, b_ip: &str, pb: &str, what: &str) -> u64 {
    let (p0, b0) = (stat(sw, pb, "tx_packets"), stat(sw, pb, "tx_bytes"));
    let t = probe::tcp_transfer(
        b,
        b_ip.parse::<std::net::IpAddr>().unwrap(),
        a,
        BYTES,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(t.bytes, BYTES, "{what}");
    let frames = stat(sw, pb, "tx_packets") - p0;
    let bytes = stat(sw, pb, "tx_bytes") - b0;
    let per_frame = bytes / frames.max(1);
    eprintln!(
        "{what}: {:.0} Mbit/s, {per_frame} bytes per frame out",
        t.mbit_per_sec()
    );
    per_frame
}

#[test]
fn tcp_between_taps_with_offloads_on_and_off() {
    if !have_root() {
        return;
    }
    for (a_on, b_on) in [(true, true), (true, false), (false, true), (false, false)] {
        let a = container("ofa", false);
        let b = container("ofb", false);
        let sw = Switch::start();
        let (pa, pb) = (unique("ofpa"), unique("ofpb"));
        let fa = port_flags(1, a_on);
        let fb = port_flags(1, b_on);
        let fa: Vec<&str> = fa.iter().map(String::as_str).collect();
        let fb: Vec<&str> = fb.iter().map(String::as_str).collect();
        sw.add_container_port(&a, &pa, &fa, &["10.9.0.1/24"]);
        sw.add_container_port(&b, &pb, &fb, &["10.9.0.2/24"]);
        let listed = sw.json(&["port", "list"]).to_string();
        assert!(listed.contains("\"offload\""), "{listed}");
        let what = format!("switched, offloads a={a_on} b={b_on}");
        let per_frame = transfer(&sw, &a, &b, "10.9.0.2", &pb, &what);
        if a_on && b_on {
            assert!(
                per_frame > 1514,
                "{what}: super-frames passed whole ({per_frame})"
            );
        }
        if !b_on {
            assert!(per_frame <= 1514, "{what}: cut to the MTU ({per_frame})");
        }
        for reason in ["bad_offload", "oversized"] {
            assert_eq!(drops(&sw, &pa, reason), 0, "{what}: {reason}");
        }
        assert_eq!(stat(&sw, &pb, "tx_oversized"), 0, "{what}");
        drop(sw);
    }
}

#[test]
fn tcp_routed_and_masqueraded_with_offloads_on_and_off() {
    if !have_root() {
        return;
    }
    for on in [true, false] {
        let a = container("ora", false);
        let b = container("orb", false);
        let sw = Switch::with_config(
            r#"
[[interface]]
vlan = 10
address = "10.42.0.1/24"
[[interface]]
vlan = 100
address = "10.200.0.1/24"
[[snat]]
source = "10.42.0.0/16"
out_vlan = 100
"#,
        );
        let (pa, pb) = (unique("orpa"), unique("orpb"));
        let fa = port_flags(10, on);
        let fb = port_flags(100, on);
        let fa: Vec<&str> = fa.iter().map(String::as_str).collect();
        let fb: Vec<&str> = fb.iter().map(String::as_str).collect();
        sw.add_container_port(&a, &pa, &fa, &["10.42.0.2/24"]);
        sw.add_container_port(&b, &pb, &fb, &["10.200.0.254/24"]);
        a.ip(&["route", "add", "default", "via", "10.42.0.1"])
            .unwrap();
        // b has no route back: only masqueraded traffic reaches it.
        let what = format!("routed + masquerade, offloads {on}");
        let per_frame = transfer(&sw, &a, &b, "10.200.0.254", &pb, &what);
        if on {
            assert!(
                per_frame > 1514,
                "{what}: super-frames routed whole ({per_frame})"
            );
        } else {
            assert!(per_frame <= 1514, "{what}: cut to the MTU ({per_frame})");
        }
        for reason in ["bad_offload", "oversized", "conntrack_invalid"] {
            assert_eq!(drops(&sw, &pa, reason), 0, "{what}: {reason}");
        }
        drop(sw);
    }
}

/// UDP segmentation offload: a container sends with `UDP_SEGMENT`, so its kernel hands the TAP
/// UDP super-frames (`VIRTIO_NET_HDR_GSO_UDP_L4`). Switched to a port with offloads on they
/// leave whole; to one with offloads off they are cut into datagrams here. Routed and
/// masqueraded, the super-frame is translated whole. Every datagram must arrive right.
#[test]
fn udp_segmentation_offload_switched_and_routed() {
    if !have_root() {
        return;
    }
    for (b_on, routed) in [(true, false), (false, false), (true, true), (false, true)] {
        let a = container("usa", false);
        let b = container("usb", false);
        let sw = Switch::with_config(if routed {
            r#"
[[interface]]
vlan = 10
address = "10.43.0.1/24"
[[interface]]
vlan = 100
address = "10.201.0.1/24"
[[snat]]
source = "10.43.0.0/16"
out_vlan = 100
"#
        } else {
            ""
        });
        let (pa, pb) = (unique("uspa"), unique("uspb"));
        let fa = port_flags(10, true);
        let fb = port_flags(if routed { 100 } else { 10 }, b_on);
        let fa: Vec<&str> = fa.iter().map(String::as_str).collect();
        let fb: Vec<&str> = fb.iter().map(String::as_str).collect();
        let b_ip = if routed { "10.201.0.254" } else { "10.43.0.2" };
        sw.add_container_port(&a, &pa, &fa, &["10.43.0.1/24"]);
        sw.add_container_port(&b, &pb, &fb, &[&format!("{b_ip}/24")]);
        if routed {
            a.ip(&["addr", "flush", "dev", &pa]).unwrap();
            a.add_addr(&pa, "10.43.0.2/24").unwrap();
            a.ip(&["route", "add", "default", "via", "10.43.0.1"])
                .unwrap();
        }
        let what = format!("UDP GSO, receiver offloads {b_on}, routed {routed}");
        assert_eq!(ping(&a, b_ip, 2), 2, "{what}: reachable");
        let (p0, b0) = (stat(&sw, &pb, "tx_packets"), stat(&sw, &pb, "tx_bytes"));
        let r = probe::udp_segmented(&b, b_ip.parse().unwrap(), &a, 1200, 16, 200)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let per_frame =
            (stat(&sw, &pb, "tx_bytes") - b0) / (stat(&sw, &pb, "tx_packets") - p0).max(1);
        eprintln!("{what}: {r:?}, {per_frame} bytes per frame out");
        assert_eq!(r.bad, 0, "{what}: datagrams arrived wrong: {r:?}");
        assert!(
            r.received * 100 >= r.sent * 99,
            "{what}: datagrams lost: {r:?}"
        );
        if b_on {
            assert!(
                per_frame > 1514,
                "{what}: super-frames left whole ({per_frame})"
            );
        } else {
            assert!(
                per_frame <= 1514,
                "{what}: cut into datagrams ({per_frame})"
            );
        }
        for reason in ["bad_offload", "oversized", "conntrack_invalid"] {
            assert_eq!(drops(&sw, &pa, reason), 0, "{what}: {reason}");
        }
        drop(sw);
    }
}

/// IPv6 routed between two VLANs, with the receiving port's offloads on and off: TCP
/// super-frames are routed whole (hop limit once, the egress MTU checked against their
/// segments) and cut only for a port that takes no offloads.
#[test]
fn tcp_routed_over_ipv6_with_offloads_on_and_off() {
    if !have_root() {
        return;
    }
    for on in [true, false] {
        let a = container("o6a", true);
        let b = container("o6b", true);
        let sw = Switch::with_config(
            r#"
[[interface]]
vlan = 10
address = "fd10::1/64"
[[interface]]
vlan = 20
address = "fd20::1/64"
"#,
        );
        let (pa, pb) = (unique("o6pa"), unique("o6pb"));
        let fa = port_flags(10, true);
        let fb = port_flags(20, on);
        let fa: Vec<&str> = fa.iter().map(String::as_str).collect();
        let fb: Vec<&str> = fb.iter().map(String::as_str).collect();
        sw.add_container_port(&a, &pa, &fa, &[]);
        sw.add_container_port(&b, &pb, &fb, &[]);
        for (ns, port, addr, gw) in [
            (&a, &pa, "fd10::2/64", "fd10::1"),
            (&b, &pb, "fd20::2/64", "fd20::1"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", port, "nodad"]).unwrap();
            ns.ip(&["-6", "route", "add", "default", "via", gw])
                .unwrap();
        }
        let what = format!("IPv6 routed, receiver offloads {on}");
        assert_eq!(ping(&a, "fd20::2", 3), 3, "{what}: reachable");
        let per_frame = transfer(&sw, &a, &b, "fd20::2", &pb, &what);
        if on {
            assert!(
                per_frame > 1514,
                "{what}: super-frames routed whole ({per_frame})"
            );
        } else {
            assert!(per_frame <= 1514, "{what}: cut to the MTU ({per_frame})");
        }
        for reason in ["bad_offload", "oversized", "frag_needed"] {
            assert_eq!(drops(&sw, &pa, reason), 0, "{what}: {reason}");
        }
        drop(sw);
    }
}
