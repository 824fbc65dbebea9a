//! NAT simulations: masquerade, port forwards, Services, hairpin, ICMP errors, expiry and
//! fragments, through the whole router.

use std::net::SocketAddrV4;

use super::*;
use crate::pipeline::nat::tests::{
    assert_checksums, echo, icmp_error, ipv4, set_df, set_ttl, tcp, udp,
};
use crate::pipeline::nat::{parse, L4};
use crate::pipeline::offload::Offload;
use crate::tables::conntrack::tcp::{ACK, FIN, RST, SYN};
use crate::tables::conntrack::{ProtoState, TcpState};
use crate::tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::tables::{Backend, CtFilter, FlowKey, Frontend, Scheduler, Service, SnatRule, Target};

/// The router's uplink address, the outside gateway, a host out there and a hop on the way.
const UP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 254);
const X: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const HOP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const GW10: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
/// Host C: VLAN 10 like A, on port 3 (see [`add_host_c`]).
const C: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xc]);
const C_IP: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// MSS, NOP, window scale 7.
const OPTS: &[u8] = &[2, 4, 5, 180, 1, 3, 3, 7];
const PSH: u8 = 0x08;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// A, B and the gateway resolved; no NAT rule yet.
fn nat_sim() -> Sim {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    sim.send(2, &arp(ArpOperation::Request, GW, GW_IP, UP));
    sim
}

/// Everything from 10.42.0.0/16 leaving through the uplink is masqueraded.
fn masquerade(sim: &mut Sim) {
    sim.state.nat.snat = Arc::from(vec![SnatRule {
        source: Ipv4Addr::new(10, 42, 0, 0),
        source_len: 16,
        out_vlan: vlan(100),
        to: None,
        except: None,
    }]);
}

fn add_host_c(sim: &mut Sim) {
    let mut state = sim.state.clone();
    state.ports.push(port("c", 10));
    state.rebuild_vlan_members();
    sim.state = state;
    sim.pipeline.adopt(&sim.state);
    sim.send(3, &arp(ArpOperation::Request, C, C_IP, GW10));
}

fn service(
    id: u32,
    proto: u8,
    node_port: Option<u16>,
    backends: &[(SocketAddrV4, u16)],
    scheduler: Scheduler,
    affinity_ms: Option<u64>,
) -> Arc<Service> {
    let port = if proto == PROTO_TCP { 80 } else { 53 };
    Arc::new(Service::new(
        id,
        format!("svc{id}"),
        proto,
        VIP,
        port,
        node_port,
        backends
            .iter()
            .map(|&(addr, weight)| Backend { addr, weight })
            .collect(),
        scheduler,
        affinity_ms,
    ))
}

/// Puts a Service's frontends (its VIP, and its NodePort if any) into the rules.
fn install(sim: &mut Sim, svc: &Arc<Service>) {
    let f = &mut sim.state.nat.frontends;
    f.insert(svc.frontend(), Target::Service(Arc::clone(svc)));
    if let Some(np) = svc.node_port {
        f.insert(
            Frontend::node_port(svc.proto, np),
            Target::Service(Arc::clone(svc)),
        );
    }
}

fn from_a(sim: &mut Sim, packet: &[u8]) -> Out {
    sim.send(0, &to_router(R10, A, packet))
}

fn from_b(sim: &mut Sim, packet: &[u8]) -> Out {
    sim.send(1, &to_router(R20, B, packet))
}

fn from_c(sim: &mut Sim, packet: &[u8]) -> Out {
    sim.send(3, &to_router(R10, C, packet))
}

fn from_outside(sim: &mut Sim, packet: &[u8]) -> Out {
    sim.send(2, &to_router(R100, GW, packet))
}

/// The IP packet of a frame.
fn ip(frame: &[u8]) -> Vec<u8> {
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    frame[14..14 + total].to_vec()
}

/// The one packet a frame caused, which must have left through `port`.
#[track_caller]
fn only(out: &Out, port: u16) -> Vec<u8> {
    let data = out.data();
    assert_eq!(data.len(), 1, "{:?} {:?}", out.drop, data);
    assert_eq!(data[0].0, port, "{:?}", out.drop);
    let p = ip(&data[0].1);
    assert_checksums(&p);
    p
}

#[track_caller]
fn nothing(out: &Out, reason: DropReason) {
    assert_eq!(out.drop, Some(reason));
    assert!(out.data().is_empty(), "{:?}", out.data());
}

/// Source and destination of an IPv4 packet.
fn addrs(p: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::from([p[12], p[13], p[14], p[15]]),
        Ipv4Addr::from([p[16], p[17], p[18], p[19]]),
    )
}

fn key_of(p: &[u8]) -> FlowKey {
    parse(p).unwrap().key
}

fn k(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> FlowKey {
    FlowKey {
        src: *src.ip(),
        dst: *dst.ip(),
        sport: src.port(),
        dport: dst.port(),
        proto,
    }
}

/// The TCP fields (flags, seq, ack) and payload of a packet.
fn tcp_of(p: &[u8]) -> (u8, u32, u32, Vec<u8>) {
    match parse(p).unwrap().l4 {
        L4::Tcp(s) => {
            let doff = usize::from(p[32] >> 4) * 4;
            (s.flags, s.seq, s.ack, p[20 + doff..].to_vec())
        }
        other => panic!("{other:?}"),
    }
}

fn tcp_state(sim: &Sim) -> TcpState {
    let ct = sim.pipeline.conntrack();
    let mut it = ct.iter();
    let e = it.next().expect("an entry");
    assert!(it.next().is_none(), "one entry");
    match e.proto {
        ProtoState::Tcp(t) => t.state,
        other => panic!("{other:?}"),
    }
}

fn nat(sim: &Sim) -> &crate::pipeline::NatCounters {
    &sim.pipeline.counters().nat
}

#[test]
fn masquerades_a_tcp_connection_from_handshake_to_time_wait() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let a = sa(A_IP, 40000);
    let x = sa(X, 443);
    let p = only(
        &from_a(&mut sim, &tcp(a, x, SYN, 1000, 0, 64240, OPTS, b"")),
        2,
    );
    let out_key = key_of(&p);
    assert_eq!((out_key.src, out_key.dst, out_key.dport), (UP, X, 443));
    assert!(out_key.sport >= 1024, "{}", out_key.sport);
    assert_eq!(p[8], 63, "TTL");
    assert_eq!(tcp_of(&p).0, SYN);
    assert_eq!(tcp_state(&sim), TcpState::SynSent);
    let m = sa(UP, out_key.sport);

    let p = only(
        &from_outside(
            &mut sim,
            &tcp(x, m, SYN | ACK, 9000, 1001, 65535, OPTS, b""),
        ),
        0,
    );
    assert_eq!(key_of(&p), k(x, a, PROTO_TCP));
    assert_eq!(tcp_state(&sim), TcpState::SynRecv);
    let p = only(
        &from_a(&mut sim, &tcp(a, x, ACK, 1001, 9001, 502, &[], b"")),
        2,
    );
    assert_eq!(key_of(&p), k(m, x, PROTO_TCP));
    assert_eq!(tcp_state(&sim), TcpState::Established);

    // Data both ways, untouched.
    let p = only(
        &from_a(
            &mut sim,
            &tcp(a, x, ACK | PSH, 1001, 9001, 502, &[], b"GET /"),
        ),
        2,
    );
    assert_eq!(tcp_of(&p), (ACK | PSH, 1001, 9001, b"GET /".to_vec()));
    let p = only(
        &from_outside(
            &mut sim,
            &tcp(x, m, ACK | PSH, 9001, 1006, 509, &[], b"200 OK"),
        ),
        0,
    );
    assert_eq!(key_of(&p), k(x, a, PROTO_TCP));
    assert_eq!(tcp_of(&p), (ACK | PSH, 9001, 1006, b"200 OK".to_vec()));

    // A closes, then X.
    only(
        &from_a(&mut sim, &tcp(a, x, FIN | ACK, 1006, 9007, 502, &[], b"")),
        2,
    );
    assert_eq!(tcp_state(&sim), TcpState::FinWait);
    only(
        &from_outside(&mut sim, &tcp(x, m, ACK, 9007, 1007, 509, &[], b"")),
        0,
    );
    assert_eq!(tcp_state(&sim), TcpState::CloseWait);
    only(
        &from_outside(&mut sim, &tcp(x, m, FIN | ACK, 9007, 1007, 509, &[], b"")),
        0,
    );
    assert_eq!(tcp_state(&sim), TcpState::LastAck);
    only(
        &from_a(&mut sim, &tcp(a, x, ACK, 1007, 9008, 502, &[], b"")),
        2,
    );
    assert_eq!(tcp_state(&sim), TcpState::TimeWait);

    let e = sim.pipeline.conntrack().iter().next().unwrap().clone();
    assert_eq!(e.orig, k(a, x, PROTO_TCP));
    assert_eq!(e.reply, k(x, m, PROTO_TCP));
    assert_eq!(e.packets, [5, 4]);
    assert_eq!(nat(&sim).connections.get(), 1);
    assert_eq!(nat(&sim).translated.get(), 9);
    // TIME_WAIT lasts two minutes.
    sim.tick(119);
    assert_eq!(sim.pipeline.conntrack().len(), 1);
    sim.tick(2);
    assert!(sim.pipeline.conntrack().is_empty());
}

#[test]
fn masquerades_udp_and_icmp_echo() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let a = sa(A_IP, 5353);
    let x = sa(X, 53);
    let p = only(&from_a(&mut sim, &udp(a, x, b"query", true)), 2);
    let m = key_of(&p);
    assert_eq!((m.src, m.dst, m.dport), (UP, X, 53));
    assert!(m.sport >= 1024);
    let m = sa(UP, m.sport);
    let p = only(&from_outside(&mut sim, &udp(x, m, b"answer", true)), 0);
    assert_eq!(key_of(&p), k(x, a, PROTO_UDP));
    assert_eq!(&p[28..], b"answer");
    // Without checksum too.
    let p = only(&from_a(&mut sim, &udp(a, x, b"again", false)), 2);
    assert_eq!(key_of(&p), k(m, x, PROTO_UDP));
    assert_eq!(&p[26..28], [0, 0]);

    // Ping: the identifier is the port.
    let p = only(
        &from_a(&mut sim, &echo(A_IP, X, true, 0x1234, 1, b"abcdefgh")),
        2,
    );
    let e = key_of(&p);
    assert_eq!((e.src, e.dst, e.proto), (UP, X, PROTO_ICMP));
    let p = only(
        &from_outside(&mut sim, &echo(X, UP, false, e.sport, 1, b"abcdefgh")),
        0,
    );
    assert_eq!(
        key_of(&p),
        FlowKey {
            src: X,
            dst: A_IP,
            sport: 0x1234,
            dport: 0,
            proto: PROTO_ICMP
        }
    );
    assert_eq!(p[20], 0, "echo reply");
    assert_eq!(sim.pipeline.conntrack().len(), 2);
    assert!(sim.pipeline.conntrack().iter().all(|e| e.replied));
}

#[test]
fn two_hosts_with_one_source_port_get_two_mappings() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let x = sa(X, 53);
    let pa = only(&from_a(&mut sim, &udp(sa(A_IP, 5000), x, b"a", true)), 2);
    let pb = only(&from_b(&mut sim, &udp(sa(B_IP, 5000), x, b"b", true)), 2);
    let (ka, kb) = (key_of(&pa), key_of(&pb));
    assert_eq!((ka.src, kb.src), (UP, UP));
    assert_ne!(ka.sport, kb.sport);
    // Each answer finds its host.
    let p = only(
        &from_outside(&mut sim, &udp(x, sa(UP, kb.sport), b"to b", true)),
        1,
    );
    assert_eq!(key_of(&p), k(x, sa(B_IP, 5000), PROTO_UDP));
    let p = only(
        &from_outside(&mut sim, &udp(x, sa(UP, ka.sport), b"to a", true)),
        0,
    );
    assert_eq!(key_of(&p), k(x, sa(A_IP, 5000), PROTO_UDP));
}

#[test]
fn back_to_back_queries_from_one_socket_share_their_entry() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let (a, x) = (sa(A_IP, 41000), sa(X, 53));
    let p1 = only(&from_a(&mut sim, &udp(a, x, b"A? example.org", true)), 2);
    let p2 = only(&from_a(&mut sim, &udp(a, x, b"AAAA? example.org", true)), 2);
    assert_eq!(key_of(&p1), key_of(&p2));
    assert_eq!(sim.pipeline.conntrack().len(), 1);
    let m = sa(UP, key_of(&p1).sport);
    for answer in [&b"AAAA"[..], b"A"] {
        let p = only(&from_outside(&mut sim, &udp(x, m, answer, true)), 0);
        assert_eq!(key_of(&p), k(x, a, PROTO_UDP));
        assert_eq!(&p[28..], answer);
    }
    assert_eq!(nat(&sim).connections.get(), 1);
}

#[test]
fn port_forward_from_outside_to_a() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    sim.state.nat.frontends.insert(
        Frontend {
            proto: PROTO_TCP,
            addr: UP,
            port: 8080,
        },
        Target::Dnat(sa(A_IP, 80)),
    );
    let (x, fwd, a) = (sa(X, 50000), sa(UP, 8080), sa(A_IP, 80));
    let p = only(
        &from_outside(&mut sim, &tcp(x, fwd, SYN, 1, 0, 1000, OPTS, b"")),
        0,
    );
    assert_eq!(key_of(&p), k(x, a, PROTO_TCP), "destination only");
    // A's answer leaves from the forwarded address, not masqueraded anew.
    let p = only(
        &from_a(&mut sim, &tcp(a, x, SYN | ACK, 500, 2, 1000, OPTS, b"")),
        2,
    );
    assert_eq!(key_of(&p), k(fwd, x, PROTO_TCP));
    only(
        &from_outside(&mut sim, &tcp(x, fwd, ACK, 2, 501, 1000, &[], b"")),
        0,
    );
    assert_eq!(tcp_state(&sim), TcpState::Established);
    // Mid-stream without an entry: never forwarded untranslated.
    nothing(
        &from_outside(
            &mut sim,
            &tcp(sa(X, 50001), fwd, ACK, 2, 501, 1000, &[], b""),
        ),
        DropReason::ConntrackInvalid,
    );
}

/// Sends `n` SYNs from `client` (ports from 20000) to `dst`; how many reached A and B.
fn spread(sim: &mut Sim, client: Ipv4Addr, dst: SocketAddrV4, n: u16) -> (u32, u32) {
    let (mut to_a, mut to_b) = (0, 0);
    for i in 0..n {
        let p = tcp(
            sa(client, 20000 + i),
            dst,
            SYN,
            u32::from(i),
            0,
            1000,
            OPTS,
            b"",
        );
        let out = from_outside(sim, &p);
        let data = out.data();
        assert_eq!(data.len(), 1, "{out:?}");
        let q = ip(&data[0].1);
        assert_checksums(&q);
        let key = key_of(&q);
        assert_eq!((key.dport, key.src), (8080, client));
        match data[0].0 {
            0 => {
                assert_eq!(key.dst, A_IP);
                to_a += 1
            }
            1 => {
                assert_eq!(key.dst, B_IP);
                to_b += 1
            }
            p => panic!("port {p}"),
        }
    }
    (to_a, to_b)
}

fn two_backends() -> [(SocketAddrV4, u16); 2] {
    [(sa(A_IP, 8080), 1), (sa(B_IP, 8080), 1)]
}

#[test]
fn services_spread_new_connections_by_their_scheduler() {
    let vip = sa(VIP, 80);
    for scheduler in [
        Scheduler::Maglev,
        Scheduler::Random,
        Scheduler::RoundRobin,
        Scheduler::LeastConn,
    ] {
        let mut sim = nat_sim();
        install(
            &mut sim,
            &service(1, PROTO_TCP, None, &two_backends(), scheduler, None),
        );
        let (a, b) = spread(&mut sim, X, vip, 400);
        match scheduler {
            Scheduler::RoundRobin | Scheduler::LeastConn => {
                assert_eq!((a, b), (200, 200), "{scheduler:?}")
            }
            _ => assert!((140..=260).contains(&a), "{scheduler:?}: {a} / {b}"),
        }
        assert_eq!(
            sim.pipeline
                .conntrack()
                .backend_connections(1, sa(A_IP, 8080)),
            a
        );
        assert_eq!(
            sim.pipeline
                .conntrack()
                .backend_connections(1, sa(B_IP, 8080)),
            b
        );
    }
    // Weights: 3 to 1.
    let mut sim = nat_sim();
    let weighted = [(sa(A_IP, 8080), 3), (sa(B_IP, 8080), 1)];
    install(
        &mut sim,
        &service(1, PROTO_TCP, None, &weighted, Scheduler::RoundRobin, None),
    );
    assert_eq!(spread(&mut sim, X, vip, 400), (300, 100));
}

#[test]
fn source_hash_and_affinity_keep_a_client_on_one_backend() {
    let vip = sa(VIP, 80);
    for (scheduler, affinity) in [
        (Scheduler::SourceHash, None),
        (Scheduler::Random, Some(10_800_000)),
    ] {
        let mut sim = nat_sim();
        install(
            &mut sim,
            &service(1, PROTO_TCP, None, &two_backends(), scheduler, affinity),
        );
        let mut clients = (0, 0);
        for c in 1..=40 {
            let (a, b) = spread(&mut sim, Ipv4Addr::new(198, 51, 100, c), vip, 10);
            assert!(
                a == 0 || b == 0,
                "{scheduler:?}: client {c} split {a} / {b}"
            );
            if a > 0 {
                clients.0 += 1
            } else {
                clients.1 += 1
            }
        }
        assert!(
            clients.0 >= 5 && clients.1 >= 5,
            "{scheduler:?}: {clients:?}"
        );
    }
}

#[test]
fn node_port_on_the_uplink_address() {
    let mut sim = nat_sim();
    let svc = service(
        3,
        PROTO_TCP,
        Some(30080),
        &[(sa(B_IP, 8080), 1)],
        Scheduler::Maglev,
        None,
    );
    install(&mut sim, &svc);
    let (x, np, b) = (sa(X, 45000), sa(UP, 30080), sa(B_IP, 8080));
    let p = only(
        &from_outside(&mut sim, &tcp(x, np, SYN, 7, 0, 1000, OPTS, b"")),
        1,
    );
    assert_eq!(key_of(&p), k(x, b, PROTO_TCP));
    let p = only(
        &from_b(&mut sim, &tcp(b, x, SYN | ACK, 70, 8, 1000, OPTS, b"")),
        2,
    );
    assert_eq!(key_of(&p), k(np, x, PROTO_TCP));
    // Another port of the router's address is no NodePort.
    let out = from_outside(&mut sim, &tcp(x, sa(UP, 30081), SYN, 7, 0, 1000, OPTS, b""));
    assert_eq!(out.drop, Some(DropReason::LocalUnsupported));
}

#[test]
fn hairpin_to_a_service_backed_by_the_client_itself() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    install(
        &mut sim,
        &service(
            1,
            PROTO_TCP,
            None,
            &[(sa(A_IP, 8080), 1)],
            Scheduler::Maglev,
            None,
        ),
    );
    let (a, vip, backend) = (sa(A_IP, 40000), sa(VIP, 80), sa(A_IP, 8080));
    // A's SYN comes back to A, from the router's address on VLAN 10.
    let p = only(
        &from_a(&mut sim, &tcp(a, vip, SYN, 100, 0, 1000, OPTS, b"")),
        0,
    );
    let hk = key_of(&p);
    assert_eq!((hk.src, hk.dst, hk.dport), (GW10, A_IP, 8080));
    let via = sa(GW10, hk.sport);
    // A answers the router; the answer reaches A from the VIP.
    let p = only(
        &from_a(
            &mut sim,
            &tcp(backend, via, SYN | ACK, 900, 101, 1000, OPTS, b""),
        ),
        0,
    );
    assert_eq!(key_of(&p), k(vip, a, PROTO_TCP));
    let p = only(
        &from_a(&mut sim, &tcp(a, vip, ACK, 101, 901, 1000, &[], b"")),
        0,
    );
    assert_eq!(key_of(&p), k(via, backend, PROTO_TCP));
    assert_eq!(tcp_state(&sim), TcpState::Established);
}

#[test]
fn hairpin_to_a_backend_on_the_same_vlan() {
    let mut sim = nat_sim();
    add_host_c(&mut sim);
    install(
        &mut sim,
        &service(
            1,
            PROTO_UDP,
            None,
            &[(sa(C_IP, 5353), 1)],
            Scheduler::Maglev,
            None,
        ),
    );
    let (a, vip, backend) = (sa(A_IP, 7000), sa(VIP, 53), sa(C_IP, 5353));
    let p = only(&from_a(&mut sim, &udp(a, vip, b"q", true)), 3);
    let hk = key_of(&p);
    assert_eq!((hk.src, hk.dst, hk.dport), (GW10, C_IP, 5353));
    let p = only(
        &from_c(&mut sim, &udp(backend, sa(GW10, hk.sport), b"r", true)),
        0,
    );
    assert_eq!(key_of(&p), k(vip, a, PROTO_UDP));
    assert_eq!(&p[28..], b"r");
}

#[test]
fn a_service_without_backends_rejects() {
    let mut sim = nat_sim();
    install(
        &mut sim,
        &service(1, PROTO_TCP, None, &[], Scheduler::Maglev, None),
    );
    install(
        &mut sim,
        &service(
            2,
            PROTO_UDP,
            None,
            &[(sa(B_IP, 53), 0)],
            Scheduler::Maglev,
            None,
        ),
    );
    let (a, vip) = (sa(A_IP, 40000), sa(VIP, 80));
    let out = from_a(&mut sim, &tcp(a, vip, SYN, 777, 0, 1000, OPTS, b""));
    assert_eq!(out.drop, Some(DropReason::ServiceNoBackend));
    let rst = only(&out, 0);
    assert_eq!(key_of(&rst), k(vip, a, PROTO_TCP));
    let (flags, seq, ack, _) = tcp_of(&rst);
    assert_eq!((flags, seq, ack), (RST | ACK, 0, 778));

    let query = udp(sa(A_IP, 7000), sa(VIP, 53), b"q", true);
    let out = from_a(&mut sim, &query);
    assert_eq!(out.drop, Some(DropReason::ServiceNoBackend));
    let icmp = only(&out, 0);
    assert_eq!(addrs(&icmp), (VIP, A_IP));
    assert_eq!(icmp[20..22], [3, 3], "port unreachable");
    assert_eq!(&icmp[28..], &query[..]);

    // Mid-stream: dropped silently.
    nothing(
        &from_a(&mut sim, &tcp(a, vip, ACK, 778, 1, 1000, &[], b"")),
        DropReason::ConntrackInvalid,
    );
    assert_eq!(nat(&sim).rejected.get(), 2);
    assert_eq!(sim.iface_drops(10, DropReason::ServiceNoBackend), 2);
    assert!(sim.pipeline.conntrack().is_empty());
}

/// A masqueraded connection from A:40000 to X:443 through its handshake; returns the mapped
/// address.
fn established(sim: &mut Sim) -> SocketAddrV4 {
    let (a, x) = (sa(A_IP, 40000), sa(X, 443));
    let m = key_of(&only(
        &from_a(sim, &tcp(a, x, SYN, 1000, 0, 64240, OPTS, b"")),
        2,
    ));
    let m = sa(UP, m.sport);
    only(
        &from_outside(sim, &tcp(x, m, SYN | ACK, 9000, 1001, 65535, OPTS, b"")),
        0,
    );
    only(&from_a(sim, &tcp(a, x, ACK, 1001, 9001, 502, &[], b"")), 2);
    m
}

#[test]
fn out_of_window_segments_are_dropped_not_forwarded() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let m = established(&mut sim);
    let (a, x) = (sa(A_IP, 40000), sa(X, 443));
    // Far beyond the window X allowed.
    let far = tcp(
        a,
        x,
        ACK,
        1001u32.wrapping_add(200_000_000),
        9001,
        502,
        &[],
        b"x",
    );
    nothing(&from_a(&mut sim, &far), DropReason::ConntrackInvalid);
    // A blind RST from outside, far from the sequence.
    let rst = tcp(x, m, RST, 9001u32.wrapping_add(300_000_000), 0, 0, &[], b"");
    nothing(&from_outside(&mut sim, &rst), DropReason::ConntrackInvalid);
    assert_eq!(tcp_state(&sim), TcpState::Established);
    assert_eq!(nat(&sim).invalid.get(), 2);
    assert_eq!(sim.iface_drops(10, DropReason::ConntrackInvalid), 1);
    assert_eq!(sim.iface_drops(100, DropReason::ConntrackInvalid), 1);
    // In-window traffic still flows.
    only(
        &from_a(&mut sim, &tcp(a, x, ACK | PSH, 1001, 9001, 502, &[], b"ok")),
        2,
    );
}

#[test]
fn mid_stream_tcp_without_an_entry_is_not_masqueraded() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let ack = tcp(sa(A_IP, 40000), sa(X, 443), ACK, 1, 1, 1000, &[], b"late");
    nothing(&from_a(&mut sim, &ack), DropReason::ConntrackInvalid);
    assert!(sim.pipeline.conntrack().is_empty());
    // Between inside VLANs there is nothing to translate: it is routed.
    let ack = tcp(
        sa(A_IP, 40000),
        sa(B_IP, 443),
        ACK,
        1,
        1,
        1000,
        &[],
        b"late",
    );
    only(&from_a(&mut sim, &ack), 1);
}

#[test]
fn time_exceeded_through_masquerade_quotes_what_a_sent() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let mut probe = udp(sa(A_IP, 33434), sa(X, 33435), &[0; 12], true);
    set_ttl(&mut probe, 1);
    let out = from_a(&mut sim, &probe);
    assert_eq!(out.drop, Some(DropReason::TtlExceeded));
    let err = only(&out, 0);
    assert_eq!(err[16..20], A_IP.octets());
    assert_eq!(err[20], 11, "time exceeded");
    // From the router's address on A's side, as if nothing had been translated.
    let from = Ipv4Addr::from([err[12], err[13], err[14], err[15]]);
    assert_eq!(from, GW10);
    assert_checksums(&err);
    assert_eq!(&err[28..], &probe[..], "the quoted packet as A sent it");
    assert_eq!(nat(&sim).icmp_translated.get(), 1);
}

#[test]
fn frag_needed_from_outside_reaches_the_masqueraded_sender() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let mut big = udp(sa(A_IP, 5000), sa(X, 4789), &[7; 1400], true);
    set_df(&mut big);
    let sent = only(&from_a(&mut sim, &big), 2);
    // A hop with a smaller MTU beyond the gateway answers, quoting what it got.
    let error = icmp_error(HOP, UP, 3, 4, 1280, &sent[..548]);
    let p = only(&from_outside(&mut sim, &error), 0);
    assert_eq!(addrs(&p), (HOP, A_IP));
    assert_eq!(p[20..22], [3, 4]);
    assert_eq!(u16::from_be_bytes([p[26], p[27]]), 1280, "the MTU");
    let mut expect = big[..548].to_vec();
    set_ttl(&mut expect, 63);
    assert_eq!(&p[28..], &expect[..]);
    assert_eq!(nat(&sim).icmp_translated.get(), 1);
}

#[test]
fn udp_entries_expire_after_30_s_unreplied_and_120_s_replied() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let x = sa(X, 53);
    only(&from_a(&mut sim, &udp(sa(A_IP, 1111), x, b"1", true)), 2);
    let p = only(&from_a(&mut sim, &udp(sa(A_IP, 2222), x, b"2", true)), 2);
    only(
        &from_outside(&mut sim, &udp(x, sa(UP, key_of(&p).sport), b"r", true)),
        0,
    );
    assert_eq!(sim.pipeline.conntrack().len(), 2);
    sim.tick(29);
    assert_eq!(sim.pipeline.conntrack().len(), 2);
    sim.tick(2);
    let left: Vec<_> = sim
        .pipeline
        .conntrack()
        .iter()
        .map(|e| e.orig.sport)
        .collect();
    assert_eq!(left, [2222]);
    sim.tick(88);
    assert_eq!(sim.pipeline.conntrack().len(), 1);
    sim.tick(2);
    assert!(sim.pipeline.conntrack().is_empty());
    // The answer to a forgotten mapping is the router's, not A's.
    let out = from_outside(&mut sim, &udp(x, sa(UP, key_of(&p).sport), b"late", true));
    assert_eq!(out.drop, Some(DropReason::LocalUnsupported));
    assert!(out.data().iter().all(|(port, _)| *port == 2));
}

#[test]
fn a_full_table_refuses_new_connections() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    sim.state.nat.conntrack_max = 2;
    sim.pipeline.adopt(&sim.state);
    let x = sa(X, 53);
    for port in [1000, 1001] {
        let p = only(&from_a(&mut sim, &udp(sa(A_IP, port), x, b"q", true)), 2);
        only(
            &from_outside(&mut sim, &udp(x, sa(UP, key_of(&p).sport), b"r", true)),
            0,
        );
    }
    let out = from_a(&mut sim, &udp(sa(A_IP, 1002), x, b"q", true));
    nothing(&out, DropReason::ConntrackFull);
    assert_eq!(nat(&sim).insert_failed.get(), 1);
    assert_eq!(sim.iface_drops(10, DropReason::ConntrackFull), 1);
    assert_eq!(sim.pipeline.conntrack().stats.insert_failed, 1);
}

#[test]
fn purging_a_backend_forgets_only_its_connections() {
    let mut sim = nat_sim();
    let svc = service(
        9,
        PROTO_TCP,
        None,
        &two_backends(),
        Scheduler::RoundRobin,
        None,
    );
    install(&mut sim, &svc);
    let (to_a, to_b) = spread(&mut sim, X, sa(VIP, 80), 10);
    assert_eq!((to_a, to_b), (5, 5));
    let filter = CtFilter {
        service: Some(9),
        backend: Some(sa(A_IP, 8080)),
        ..CtFilter::default()
    };
    assert_eq!(
        sim.pipeline.conntrack().remove_where(|e| filter.matches(e)),
        5
    );
    assert_eq!(sim.pipeline.conntrack().len(), 5);
    assert!(sim
        .pipeline
        .conntrack()
        .iter()
        .all(|e| e.backend == Some((9, sa(B_IP, 8080)))));
    assert_eq!(
        sim.pipeline
            .conntrack()
            .backend_connections(9, sa(A_IP, 8080)),
        0
    );
}

#[test]
fn a_drained_backend_keeps_its_connection_but_gets_no_new_ones() {
    let mut sim = nat_sim();
    install(
        &mut sim,
        &service(4, PROTO_TCP, None, &two_backends(), Scheduler::Maglev, None),
    );
    let (x, vip) = (sa(X, 33333), sa(VIP, 80));
    let out = from_outside(&mut sim, &tcp(x, vip, SYN, 1, 0, 1000, OPTS, b""));
    let data = out.data();
    assert_eq!(data.len(), 1, "{out:?}");
    let (port, backend) = match data[0].0 {
        0 => (0, sa(A_IP, 8080)),
        _ => (1, sa(B_IP, 8080)),
    };
    // Drain that backend.
    let drained: Vec<_> = two_backends()
        .iter()
        .map(|&(a, w)| (a, if a == backend { 0 } else { w }))
        .collect();
    install(
        &mut sim,
        &service(4, PROTO_TCP, None, &drained, Scheduler::Maglev, None),
    );
    let reply = tcp(backend, x, SYN | ACK, 50, 2, 1000, OPTS, b"");
    let p = if port == 0 {
        from_a(&mut sim, &reply)
    } else {
        from_b(&mut sim, &reply)
    };
    assert_eq!(key_of(&only(&p, 2)), k(vip, x, PROTO_TCP));
    let p = only(
        &from_outside(&mut sim, &tcp(x, vip, ACK, 2, 51, 1000, &[], b"")),
        port,
    );
    assert_eq!(key_of(&p), k(x, backend, PROTO_TCP));
    // Every new connection goes to the other one.
    let (a, b) = spread(&mut sim, Ipv4Addr::new(192, 0, 2, 1), vip, 50);
    assert_eq!(if port == 0 { (a, b) } else { (b, a) }, (0, 50));
}

/// `datagram` (an unfragmented IPv4 packet) cut into fragments of at most `mtu` bytes.
fn fragment(datagram: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let (src, dst) = (
        Ipv4Addr::from([datagram[12], datagram[13], datagram[14], datagram[15]]),
        Ipv4Addr::from([datagram[16], datagram[17], datagram[18], datagram[19]]),
    );
    let ident = u16::from_be_bytes([datagram[4], datagram[5]]);
    let data = &datagram[20..];
    let step = (mtu - 20) / 8 * 8;
    data.chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let more = (i + 1) * step < data.len();
            let frag = (i * step / 8) as u16 | if more { 0x2000 } else { 0 };
            ipv4(src, dst, datagram[9], ident, frag, chunk)
        })
        .collect()
}

/// The payload of fragments put back together, checked to be one datagram from `src`.
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Vec::new();
    for f in frags {
        let off = usize::from(u16::from_be_bytes([f[6], f[7]]) & 0x1fff) * 8;
        assert_eq!(off, data.len(), "in order");
        data.extend_from_slice(&f[20..]);
    }
    let first = &frags[0];
    let src = Ipv4Addr::from([first[12], first[13], first[14], first[15]]);
    let dst = Ipv4Addr::from([first[16], first[17], first[18], first[19]]);
    for f in frags {
        assert_eq!(addrs(f), (src, dst));
        assert_checksums(f);
    }
    let whole = ipv4(src, dst, first[9], 1, 0, &data);
    assert_checksums(&whole);
    whole
}

#[test]
fn fragments_of_a_masqueraded_datagram_follow_the_first() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let (a, x) = (sa(A_IP, 6000), sa(X, 4500));
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let big = udp(a, x, &payload, true);
    let frags = fragment(&big, 1500);
    assert_eq!(frags.len(), 3);
    let mut out = Vec::new();
    for f in &frags {
        out.push(only(&from_a(&mut sim, f), 2));
    }
    let whole = reassemble(&out);
    let m = key_of(&whole);
    assert_eq!((m.src, m.dst, m.dport), (UP, X, 4500));
    assert_eq!(&whole[28..], &payload[..]);
    assert_eq!(sim.pipeline.conntrack().len(), 1);

    // The answer, fragmented by X, comes back to A whole.
    let answer = udp(x, sa(UP, m.sport), &payload[..3000], true);
    let mut back = Vec::new();
    for f in fragment(&answer, 1500) {
        back.push(only(&from_outside(&mut sim, &f), 0));
    }
    let whole = reassemble(&back);
    assert_eq!(key_of(&whole), k(x, a, PROTO_UDP));
    assert_eq!(&whole[28..], &payload[..3000]);
}

#[test]
fn fragments_between_inside_vlans_pass_while_masquerade_is_on() {
    // Masquerade applies on the uplink only: A's fragments to B are routed as they are.
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let big = udp(sa(A_IP, 6000), sa(B_IP, 4500), &[3; 3000], true);
    let mut out = Vec::new();
    for f in fragment(&big, 1500) {
        out.push(only(&from_a(&mut sim, &f), 1));
    }
    assert_eq!(key_of(&reassemble(&out)), key_of(&big));
    // A later fragment whose first one was never seen, to the uplink: it would leave with
    // A's address, so it does not leave.
    let lost = fragment(&udp(sa(A_IP, 6001), sa(X, 1), &[1; 3000], true), 1500);
    nothing(&from_a(&mut sim, &lost[1]), DropReason::NatFragment);
}

#[test]
fn without_rules_new_connections_are_not_tracked_but_old_ones_live_on() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let x = sa(X, 53);
    let p = only(&from_a(&mut sim, &udp(sa(A_IP, 1000), x, b"q", true)), 2);
    let m = sa(UP, key_of(&p).sport);
    sim.state.nat = crate::tables::NatRules::default();
    // The old mapping still translates both ways.
    only(&from_outside(&mut sim, &udp(x, m, b"r", true)), 0);
    assert_eq!(
        key_of(&only(
            &from_a(&mut sim, &udp(sa(A_IP, 1000), x, b"q", true)),
            2
        )),
        k(m, x, PROTO_UDP)
    );
    // New ones are routed as they are, and not tracked: the table drains.
    let p = only(&from_a(&mut sim, &udp(sa(A_IP, 1001), x, b"q", true)), 2);
    assert_eq!(key_of(&p).src, A_IP);
    let p = only(
        &from_a(
            &mut sim,
            &tcp(sa(A_IP, 1002), sa(X, 80), SYN, 1, 0, 1000, OPTS, b""),
        ),
        2,
    );
    assert_eq!(key_of(&p).src, A_IP);
    assert_eq!(sim.pipeline.conntrack().len(), 1);
    sim.tick(121);
    assert!(sim.pipeline.conntrack().is_empty());
}

#[test]
fn port_allocation_is_bounded_and_finds_free_ports() {
    use super::super::nat::allocate_port;
    use crate::pipeline::nat::tests::Rng;
    use crate::tables::{Conntrack, CtEntry};

    let now = Timestamp::from_secs(1);
    let mut ct = Conntrack::new(1 << 20);
    let reply_to = |port: u16| FlowKey {
        src: X,
        dst: UP,
        sport: 53,
        dport: port,
        proto: PROTO_UDP,
    };
    let mut rng = Rng::new(3);
    // Nine tenths of the range taken, at random.
    let mut taken = 0;
    for port in 1024..=u16::MAX {
        if rng.below(10) != 0 {
            let r = reply_to(port);
            let orig = FlowKey {
                src: A_IP,
                dst: X,
                sport: port,
                dport: 53,
                proto: PROTO_UDP,
            };
            ct.insert(CtEntry::new(orig, r, ProtoState::Udp, now), now)
                .unwrap();
            taken += 1;
        }
    }
    assert!(taken > 55_000);
    for _ in 0..100 {
        let mut r = reply_to(0);
        assert!(allocate_port(&ct, &mut r, || rng.next()));
        assert!(r.dport >= 1024 && !ct.contains(&r));
    }
    // All taken: it gives up after a few rounds, not after walking the range.
    for port in 1024..=u16::MAX {
        let r = reply_to(port);
        if !ct.contains(&r) {
            let orig = FlowKey {
                src: B_IP,
                dst: X,
                sport: port,
                dport: 53,
                proto: PROTO_UDP,
            };
            ct.insert(CtEntry::new(orig, r, ProtoState::Udp, now), now)
                .unwrap();
        }
    }
    let mut rounds = 0;
    let mut r = reply_to(0);
    assert!(!allocate_port(&ct, &mut r, || {
        rounds += 1;
        rng.next()
    }));
    assert_eq!(rounds, 4);
}

#[test]
fn a_ping_of_the_router_is_not_taken_for_an_echo_reply() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let p = only(
        &from_a(&mut sim, &echo(A_IP, X, true, 0x1234, 1, b"abcd")),
        2,
    );
    let id = key_of(&p).sport;
    // X pings the router's uplink address with the identifier A's ping got: the router
    // answers it itself.
    let p = only(
        &from_outside(&mut sim, &echo(X, UP, true, id, 9, b"xyz")),
        2,
    );
    assert_eq!(addrs(&p), (UP, X));
    assert_eq!(p[20], 0, "echo reply");
    // A's reply still finds A.
    let p = only(
        &from_outside(&mut sim, &echo(X, UP, false, id, 1, b"abcd")),
        0,
    );
    assert_eq!(key_of(&p).sport, 0x1234);
    assert_eq!(sim.pipeline.conntrack().len(), 1);
}

#[test]
fn blind_segments_do_not_break_a_connection_being_opened() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let (a, x) = (sa(A_IP, 40000), sa(X, 443));
    let m = key_of(&only(
        &from_a(&mut sim, &tcp(a, x, SYN, 1000, 0, 64240, OPTS, b"")),
        2,
    ));
    let m = sa(UP, m.sport);
    // A RST that does not acknowledge A's SYN: dropped, the entry stays open.
    nothing(
        &from_outside(&mut sim, &tcp(x, m, RST, 123_456, 0, 0, &[], b"")),
        DropReason::ConntrackInvalid,
    );
    // A stray ACK is ignored by the state machine (let through, as Linux does) and spoils
    // nothing.
    only(
        &from_outside(&mut sim, &tcp(x, m, ACK, 3_000_000_000, 77, 100, &[], b"")),
        0,
    );
    assert_eq!(tcp_state(&sim), TcpState::SynSent);
    only(
        &from_outside(
            &mut sim,
            &tcp(x, m, SYN | ACK, 9000, 1001, 65535, OPTS, b""),
        ),
        0,
    );
    only(
        &from_a(&mut sim, &tcp(a, x, ACK, 1001, 9001, 502, &[], b"")),
        2,
    );
    assert_eq!(tcp_state(&sim), TcpState::Established);
}

#[test]
fn host_unreachable_about_a_masqueraded_packet_reaches_its_sender() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    // 10.200.0.77 is on the uplink's subnet and never answers ARP.
    let silent = Ipv4Addr::new(10, 200, 0, 77);
    let probe = udp(sa(A_IP, 4000), sa(silent, 53), b"q", true);
    let out = from_a(&mut sim, &probe);
    assert!(out.data().is_empty(), "queued behind ARP: {out:?}");
    let mut errors = Vec::new();
    for _ in 0..6 {
        let out = sim.tick(1);
        errors.extend(out.data());
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (port, frame) = &errors[0];
    assert_eq!(*port, 0, "to A");
    let err = ip(frame);
    assert_eq!(addrs(&err), (GW10, A_IP));
    assert_eq!(err[20..22], [3, 1], "host unreachable");
    let mut expect = probe.clone();
    set_ttl(&mut expect, 63);
    assert_eq!(
        &err[28..],
        &expect[..],
        "the quoted packet as A sent it, one hop on"
    );
    assert_checksums(&err);
}

/// A TCP super-frame of 3000 payload bytes from A (mss 1000) with its checksum left to
/// offload, as a TAP with offloads hands it over: the TCP field holds the pseudo-header sum.
fn super_frame(a: SocketAddrV4, x: SocketAddrV4, seq: u32, ack: u32) -> (Vec<u8>, Offload) {
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut p = tcp(a, x, ACK, seq, ack, 502, &[], &payload);
    let l4 = 20;
    let pseudo = crate::wire::checksum::pseudo_header_v4(
        a.ip(),
        x.ip(),
        crate::wire::IpProtocol::Tcp,
        (p.len() - l4) as u32,
    );
    p[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
    let frame = to_router(R10, A, &p);
    let (start, mss) = (14u16 + 20, 1000u16);
    let mut h = [0u8; crate::pipeline::offload::VNET_HDR_LEN];
    h[0] = 1; // NEEDS_CSUM
    h[1] = 1; // GSO_TCPV4
    h[2..4].copy_from_slice(&(start + 20).to_le_bytes());
    h[4..6].copy_from_slice(&mss.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    (frame, Offload::from_vnet_hdr(&h))
}

#[test]
fn a_super_frame_is_masqueraded_whole_with_its_partial_checksum() {
    let mut sim = nat_sim();
    masquerade(&mut sim);
    let a = sa(A_IP, 40000);
    let x = sa(X, 443);
    let p = only(
        &from_a(&mut sim, &tcp(a, x, SYN, 1000, 0, 64240, OPTS, b"")),
        2,
    );
    let m = sa(UP, key_of(&p).sport);
    only(
        &from_outside(
            &mut sim,
            &tcp(x, m, SYN | ACK, 9000, 1001, 65535, OPTS, b""),
        ),
        0,
    );
    // The server's window, scaled by 2^7: room for the super-frame.
    only(
        &from_outside(&mut sim, &tcp(x, m, ACK, 9001, 1001, 65535, &[], b"")),
        0,
    );
    let (mut frame, offload) = super_frame(a, x, 1001, 9001);
    let wire = offload.wire_len(&frame);
    assert_eq!(wire, 14 + 20 + 20 + 1000);
    let d = sim
        .pipeline
        .decide_offloaded(&sim.state, PortId(0), &mut frame, &offload, sim.now)
        .expect("routed whole");
    let Decision::Forward(e) = d else {
        panic!("{d:?}");
    };
    let ports: Vec<u16> = e.ports().map(|m| m.port.0).collect();
    assert_eq!(ports, vec![2], "out of the uplink, whole");
    // What the uplink's kernel does with it: complete the checksum, then cut.
    let (start, off) = offload.csum.unwrap();
    crate::pipeline::offload::complete_checksum(&mut frame, start, off).unwrap();
    let whole = ip(&frame);
    assert_checksums(&whole);
    assert_eq!(key_of(&whole), k(m, x, PROTO_TCP));
    assert_eq!(whole[8], 63, "TTL");
    let mut n = 0;
    let mut scratch = Vec::new();
    crate::pipeline::offload::segment_tcp(&frame, 1000, &mut scratch, |seg| {
        assert_checksums(&ip(seg));
        n += 1;
    })
    .unwrap();
    assert_eq!(n, 3);
    assert_eq!(nat(&sim).invalid.get(), 0);
}

#[test]
fn a_super_frame_to_a_next_hop_still_resolving_is_queued_as_segments() {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    // B's address on VLAN 20 is known; 10.42.1.9 is not: the router asks and queues.
    let a = sa(A_IP, 40000);
    let unknown = sa(Ipv4Addr::new(10, 42, 1, 9), 80);
    let (mut frame, offload) = super_frame(a, unknown, 1, 1);
    assert!(offload.wire_len(&frame) <= 1500 + 14);
    let d = sim
        .pipeline
        .decide_offloaded(&sim.state, PortId(0), &mut frame, &offload, sim.now)
        .expect("routed");
    assert!(matches!(d, Decision::Local), "{d:?}");
    let mut out = Out::default();
    sim.drain(&mut out);
    assert!(
        out.frames.iter().all(|(_, f)| is_probe(f)),
        "only the ARP request"
    );
    // The answer releases the three segments, each finished.
    let reply = arp(
        ArpOperation::Reply,
        mac(9),
        *unknown.ip(),
        Ipv4Addr::new(10, 42, 1, 1),
    );
    let out = sim.send(1, &reply);
    let segs = out.data();
    assert_eq!(segs.len(), 3, "{segs:?}");
    for (port, f) in segs {
        assert_eq!(port, 1);
        assert!(f.len() <= 1514);
        assert_checksums(&ip(&f));
    }
}
