//! Multiqueue devices, against the kernel: a TAP with two queues (`IFF_MULTI_QUEUE`), an
//! attached veth with two packet sockets in one fanout group, and a VXLAN endpoint with two
//! `SO_REUSEPORT` sockets. Each gets 32 UDP flows of 3 datagrams from a network namespace
//! (the VXLAN endpoint: VXLAN packets from one outer socket carrying 32 inner UDP flows);
//! every datagram must be read exactly once, all of a flow's on one queue, and both queues
//! must get some flows (all 32 on one queue by chance: probability 2^-31).

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tapswitch_dataplane::io::batch::RxBatch;
use tapswitch_dataplane::io::port::{HEADROOM, MAX_FRAME};
use tapswitch_dataplane::io::vhost_user::Held;
use tapswitch_dataplane::io::{PortDevice, TapSpec, TunnelSocket};
use tapswitch_dataplane::pipeline::EgressFrame;
use tapswitch_dataplane::pipeline::TunnelEndpoint;

const FLOWS: usize = 32;
const PER_FLOW: usize = 3;
const DST_PORT: u16 = 9999;
const PEER_MAC: &str = "02:00:00:00:7a:02";

/// Sends `PER_FLOW` datagrams on each of `FLOWS` UDP sockets bound to `src` (one source port
/// each) to `dst`, from inside `ns`. Returns the sockets (kept open, so their ports stay
/// theirs) with their source ports.
fn send_flows(ns: &Netns, src: Ipv4Addr, dst: (Ipv4Addr, u16)) -> Vec<(UdpSocket, u16)> {
    ns.run(|| {
        let mut flows = Vec::new();
        for _ in 0..FLOWS {
            let s = UdpSocket::bind((src, 0))?;
            let port = s.local_addr()?.port();
            flows.push((s, port));
        }
        for round in 0..PER_FLOW {
            for (s, port) in &flows {
                s.send_to(&[round as u8, (*port >> 8) as u8, *port as u8], dst)?;
            }
        }
        Ok(flows)
    })
    .expect("send UDP flows")
}

/// The UDP ports of an Ethernet + IPv4 + UDP frame.
fn udp_ports(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
        return None;
    }
    let udp = 14 + (frame[14] & 0x0f) as usize * 4;
    let port = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    Some((port(udp)?, port(udp + 2)?))
}

/// Per queue, the frames read from it: what `read` returned, until `want` frames in all or
/// two seconds.
fn read_queues(
    queues: usize,
    want: usize,
    mut read: impl FnMut(usize) -> Option<Vec<u8>>,
) -> Vec<Vec<Vec<u8>>> {
    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); queues];
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.iter().map(Vec::len).sum::<usize>() < want && Instant::now() < deadline {
        let mut any = false;
        for (q, frames) in got.iter_mut().enumerate() {
            while let Some(f) = read(q) {
                frames.push(f);
                any = true;
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Anything late would be a duplicate: give it a moment to show.
    std::thread::sleep(Duration::from_millis(100));
    for (q, frames) in got.iter_mut().enumerate() {
        while let Some(f) = read(q) {
            frames.push(f);
        }
    }
    got
}

/// Checks that every flow (by key) was read `PER_FLOW` times, all on one queue, and that
/// every queue read some flow; returns the queue of each flow.
fn check_spread(what: &str, keys: &[u16], per_queue: &[Vec<u16>]) -> HashMap<u16, usize> {
    let mut seen: HashMap<u16, (usize, Vec<usize>)> = HashMap::new();
    for (q, ks) in per_queue.iter().enumerate() {
        for k in ks {
            let e = seen.entry(*k).or_default();
            e.0 += 1;
            if !e.1.contains(&q) {
                e.1.push(q);
            }
        }
    }
    let counts: Vec<usize> = per_queue.iter().map(Vec::len).collect();
    eprintln!("{what}: frames per queue {counts:?}");
    let mut queue_of = HashMap::new();
    for k in keys {
        let (n, queues) = seen.remove(k).unwrap_or_default();
        assert_eq!(
            n, PER_FLOW,
            "{what}: flow {k} read {n} times, not {PER_FLOW}"
        );
        assert_eq!(
            queues.len(),
            1,
            "{what}: flow {k} read on queues {queues:?}"
        );
        queue_of.insert(*k, queues[0]);
    }
    assert!(seen.is_empty(), "{what}: unknown flows {seen:?}");
    for (q, n) in counts.iter().enumerate() {
        assert!(*n > 0, "{what}: queue {q} read nothing ({counts:?})");
    }
    queue_of
}

/// An Ethernet + IPv4 + UDP frame with a correct IPv4 header checksum (UDP checksum 0).
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
) -> Vec<u8> {
    let payload = b"back";
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut b = [0u8; 6];
    for (i, part) in mac.split(':').enumerate() {
        b[i] = u8::from_str_radix(part, 16).unwrap();
    }
    b
}

/// Reads one frame from `queue` of `device`, if any.
fn read_frame(device: &PortDevice, queue: usize, buf: &mut [u8]) -> Option<Vec<u8>> {
    let rx = device
        .recv(queue, buf, &mut Held::default())
        .expect("read")?;
    Some(buf[rx.start..rx.start + rx.len].to_vec())
}

/// Source ports of our flows' frames (UDP to `DST_PORT`), per queue.
fn flow_keys(per_queue: &[Vec<Vec<u8>>]) -> Vec<Vec<u16>> {
    per_queue
        .iter()
        .map(|frames| {
            frames
                .iter()
                .filter_map(|f| udp_ports(f))
                .filter(|&(_, dst)| dst == DST_PORT)
                .map(|(src, _)| src)
                .collect()
        })
        .collect()
}

#[test]
fn tap_with_two_queues_spreads_flows_and_keeps_them() {
    if !have_root() {
        return;
    }
    let ns = container("mqt", false);
    let name = unique("mqtap");
    let tap = PortDevice::create_tap(&TapSpec {
        name: name.clone(),
        netns: Some(ns.name().to_string()),
        offload: true,
        queues: 2,
        ..TapSpec::default()
    })
    .expect("create a TAP with two queues");
    assert_eq!(tap.queues(), 2);
    let (q0, q1) = (tap.queue_fd(0).unwrap(), tap.queue_fd(1).unwrap());
    assert_ne!(q0, q1);
    assert_eq!(tap.queue_fd(2), None);

    // The kernel sees one multiqueue device with two queues each way.
    let details = ns.ip(&["-d", "link", "show", &name]).unwrap();
    assert!(details.contains("multi_queue"), "{details}");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "ls"])
        .arg(format!("/sys/class/net/{name}/queues"))
        .output()
        .expect("ls queues");
    let listed = String::from_utf8_lossy(&out.stdout);
    let mut queues: Vec<&str> = listed.split_whitespace().collect();
    queues.sort();
    assert_eq!(queues, ["rx-0", "rx-1", "tx-0", "tx-1"], "{listed}");

    // Frames the namespace sends: spread over both queues by flow.
    ns.add_addr(&name, "10.71.0.1/24").unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "10.71.0.2",
        "lladdr",
        PEER_MAC,
        "dev",
        &name,
        "nud",
        "permanent",
    ])
    .unwrap();
    let peer = Ipv4Addr::new(10, 71, 0, 2);
    let flows = send_flows(&ns, Ipv4Addr::new(10, 71, 0, 1), (peer, DST_PORT));
    let keys: Vec<u16> = flows.iter().map(|(_, p)| *p).collect();
    let mut buf = vec![0u8; HEADROOM + MAX_FRAME];
    let got = read_queues(2, FLOWS * PER_FLOW, |q| read_frame(&tap, q, &mut buf));
    let queue_of = check_spread("tap", &keys, &flow_keys(&got));

    // The steering program keeps a flow on its queue even when a frame of it is written on the
    // other queue (the TAP's own steering would move the flow to the writer's queue).
    let our_mac = tap.mac();
    for (s, port) in &flows {
        let other = 1 - queue_of[port];
        let back = udp_frame(
            our_mac.0,
            mac_bytes(PEER_MAC),
            (peer, DST_PORT),
            (Ipv4Addr::new(10, 71, 0, 1), *port),
        );
        let (addresses, rest) = back.split_at(12);
        tap.send(
            other,
            &EgressFrame {
                addresses,
                tag: None,
                rest,
            },
        )
        .expect("write a frame");
        s.send_to(b"again", (peer, DST_PORT)).unwrap();
    }
    let got = read_queues(2, FLOWS, |q| read_frame(&tap, q, &mut buf));
    for (q, keys) in flow_keys(&got).iter().enumerate() {
        for k in keys {
            assert_eq!(
                q, queue_of[k],
                "flow {k} moved from queue {} after a write on the other",
                queue_of[k]
            );
        }
    }
    assert_eq!(flow_keys(&got).iter().map(Vec::len).sum::<usize>(), FLOWS);

    // Closing the device's descriptors leaves it (persistent, for the next start to adopt)
    // until it is marked to go.
    tap.delete_on_close().unwrap();
    assert!(ns.ip(&["link", "show", &name]).is_ok(), "device still open");
    drop(tap);
    assert!(ns.ip(&["link", "show", &name]).is_err(), "device deleted");
}

#[test]
fn attached_veth_with_two_queues_spreads_flows_symmetrically() {
    if !have_root() {
        return;
    }
    let ns = container("mqa", false);
    let (a, b) = (unique("mqva"), unique("mqvb"));
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
        .unwrap();
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    ns.add_addr(&a, "10.72.0.1/24").unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "10.72.0.2",
        "lladdr",
        PEER_MAC,
        "dev",
        &a,
        "nud",
        "permanent",
    ])
    .unwrap();
    let dev = PortDevice::attach_with(&b, Some(ns.name()), None, true, 2)
        .expect("attach with two queues");
    assert_eq!(dev.queues(), 2);
    assert_ne!(dev.queue_fd(0), dev.queue_fd(1));
    assert_eq!(dev.queue_fd(2), None);
    // Frames sent before the pair's carrier is up are dropped by the veth: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ns.ip(&["link", "show", &a]).unwrap().contains("LOWER_UP") {
        assert!(Instant::now() < deadline, "veth {a} never came up");
        std::thread::sleep(Duration::from_millis(10));
    }

    let peer = Ipv4Addr::new(10, 72, 0, 2);
    let flows = send_flows(&ns, Ipv4Addr::new(10, 72, 0, 1), (peer, DST_PORT));
    let keys: Vec<u16> = flows.iter().map(|(_, p)| *p).collect();
    let mut buf = vec![0u8; HEADROOM + MAX_FRAME];
    let got = read_queues(2, FLOWS * PER_FLOW, |q| read_frame(&dev, q, &mut buf));
    let queue_of = check_spread("attach", &keys, &flow_keys(&got));

    // The reverse direction of each flow, sent into the other end of the veth, reaches the
    // same socket: the fanout hash is symmetric.
    let raw = probe::RawPort::open(&ns, &a).unwrap();
    let a_mac = ns
        .run(|| tapswitch_dataplane::io::netdev::mac(&a))
        .unwrap()
        .0;
    for port in &keys {
        raw.send(&udp_frame(
            a_mac,
            mac_bytes(PEER_MAC),
            (peer, DST_PORT),
            (Ipv4Addr::new(10, 72, 0, 1), *port),
        ))
        .unwrap();
    }
    let got = read_queues(2, FLOWS, |q| read_frame(&dev, q, &mut buf));
    let mut back = 0;
    for (q, frames) in got.iter().enumerate() {
        for (src, dst) in frames.iter().filter_map(|f| udp_ports(f)) {
            if src == DST_PORT && queue_of.contains_key(&dst) {
                assert_eq!(q, queue_of[&dst], "reverse of flow {dst} on another socket");
                back += 1;
            }
        }
    }
    assert_eq!(back, FLOWS, "every reverse frame read once");
}

#[test]
fn tunnel_with_two_reuseport_sockets() {
    if !have_root() {
        return;
    }
    let ns = container("mqu", false);
    let endpoint = TunnelEndpoint {
        local: Ipv4Addr::new(127, 0, 0, 1),
        port: 14789,
    };
    let tunnel = ns
        .run(|| TunnelSocket::open(endpoint, 2))
        .expect("open a tunnel endpoint with two sockets");
    assert_eq!(tunnel.queues(), 2);
    assert_ne!(tunnel.rx_fd(0), tunnel.rx_fd(1));
    assert_eq!(tunnel.rx_fd(2), None);
    // The endpoint is taken: another one on it is refused, with or without queues.
    for queues in [1, 2] {
        let err = ns
            .run(|| TunnelSocket::open(endpoint, queues))
            .expect_err("second endpoint on the same address and port");
        assert!(
            err.to_string().contains("binding UDP 127.0.0.1:14789"),
            "{err}"
        );
    }

    // VXLAN packets from one outer socket (one outer 4-tuple) carrying many inner flows: the
    // inner frame's flow picks the socket (the TAP steering hash, run on the VXLAN payload),
    // as the TAP picks its queue, so the kernel's hash of the outer header would put them
    // all on one.
    let keys: Vec<u16> = (0..FLOWS as u16).map(|i| 20_000 + i).collect();
    let dst = (endpoint.local, endpoint.port);
    let flow_keys = keys.clone();
    ns.run(move || {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        for _ in 0..PER_FLOW {
            for k in &flow_keys {
                let mut packet = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
                packet.extend(udp_frame(
                    [2, 0, 0, 0, 0, 2],
                    [2, 0, 0, 0, 0, 1],
                    (Ipv4Addr::new(10, 0, 0, 1), *k),
                    (Ipv4Addr::new(10, 0, 0, 2), DST_PORT),
                ));
                s.send_to(&packet, dst)?;
            }
        }
        Ok(())
    })
    .expect("send VXLAN packets");
    // Each socket is read in batches (recvmmsg), handed out one datagram at a time.
    let mut batch = RxBatch::default();
    let mut pending: Vec<VecDeque<Vec<u8>>> = vec![VecDeque::new(); 2];
    let got = read_queues(2, FLOWS * PER_FLOW, |q| {
        if pending[q].is_empty() {
            let n = tunnel.recv(q, &mut batch).expect("recv");
            for k in 0..n {
                let (bytes, from, cut, segment) = batch.get(k);
                assert!(!cut);
                assert_eq!(*from.ip(), Ipv4Addr::LOCALHOST);
                for d in bytes.chunks(segment.unwrap_or(bytes.len()).max(1)) {
                    pending[q].push_back(d.to_vec());
                }
            }
        }
        pending[q].pop_front()
    });
    // The inner frame's UDP source port names the flow.
    let per_queue: Vec<Vec<u16>> = got
        .iter()
        .map(|ps| {
            ps.iter()
                .map(|p| udp_ports(&p[8..]).expect("the inner UDP frame").0)
                .collect()
        })
        .collect();
    check_spread("tunnel", &keys, &per_queue);
}
