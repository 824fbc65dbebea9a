//! The VXLAN receive path fed arbitrary UDP payloads from arbitrary outer sources: decap, then
//! the switch. The first byte picks the source address and endpoint, the second advances the
//! clock; the rest is what the tunnel socket received. Every packet is either a counted drop
//! or a frame switched from the VNI's port, whose egress never loops back into the overlay.
#![no_main]

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Ipv4Prefix, Pipeline, PortMode, PortState, TunnelEndpoint,
    VxlanPort, WorkerCounters,
};
use tapswitch_dataplane::tables::{FdbKey, PortId, Timestamp};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

const LOCAL: TunnelEndpoint = TunnelEndpoint {
    local: Ipv4Addr::new(192, 168, 77, 1),
    port: 4789,
};

fn vlan(v: u16) -> VlanId {
    VlanId::new(v).expect("valid vlan")
}

fn state() -> ForwardingState {
    let port = |name: &str, v: u16| {
        Some(PortState {
            name: name.into(),
            mode: PortMode::Access(vlan(v)),
            mtu: 1450,
            max_macs: 8,
        })
    };
    let mut s = ForwardingState::with_ports(vec![
        port("c1", 10),
        port("vxlan42", 10),
        port("c2", 20),
        port("vxlan43", 20),
    ]);
    s.mac_table_max = 64;
    s.mac_aging_ms = 5_000;
    let vx = |vni, learning, allow: Vec<Ipv4Prefix>| VxlanPort {
        vni,
        endpoint: LOCAL,
        remotes: vec![
            Ipv4Addr::new(192, 168, 77, 2),
            Ipv4Addr::new(192, 168, 77, 3),
        ],
        learning,
        allow,
        ttl: 64,
    };
    s.vxlan = vec![
        None,
        Some(vx(42, true, vec![])),
        None,
        Some(vx(
            43,
            false,
            vec![Ipv4Prefix {
                addr: Ipv4Addr::new(192, 168, 77, 0),
                len: 24,
            }],
        )),
    ];
    s.vni_ports.insert((LOCAL, 42), PortId(1));
    s.vni_ports.insert((LOCAL, 43), PortId(3));
    let key = FdbKey::new(vlan(10), EthernetAddress([2, 0, 0, 0, 0, 9]));
    s.static_remotes.insert(key, Ipv4Addr::new(192, 168, 77, 2));
    s.static_fdb.insert(key, PortId(1));
    s
}

thread_local! {
    static SIM: RefCell<(ForwardingState, Pipeline, u64)> = RefCell::new({
        let s = state();
        let b = Pipeline::new(&s, Arc::new(WorkerCounters::default()));
        (s, b, 0)
    });
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let src = Ipv4Addr::new(192, 168, 77 + (data[0] & 1), data[0] >> 1);
    let endpoint = if data[0] & 0x80 != 0 {
        TunnelEndpoint {
            port: 8472,
            ..LOCAL
        }
    } else {
        LOCAL
    };
    // Decap and the pipeline take the buffer mutably (routed frames are rewritten in place).
    let mut payload = data[2..].to_vec();
    SIM.with(|sim| {
        let (state, pipeline, clock) = &mut *sim.borrow_mut();
        *clock += u64::from(data[1]) * 50;
        let now = Timestamp::from_millis(*clock);
        let Ok((port, inner)) = pipeline.decap(state, endpoint, src, &mut payload, now) else {
            return;
        };
        assert!(
            state.vxlan_port(port).is_some(),
            "decap lands on a VNI port"
        );
        let decision = pipeline.decide(state, port, inner, now);
        assert!(
            !matches!(decision, Decision::Local | Decision::Tunnel(_)),
            "no router interface in this switch"
        );
        let inner = &*inner;
        if let Decision::Forward(egress) = decision {
            for member in egress.ports() {
                assert_ne!(member.port, port, "never flooded back into the overlay");
                if state.vxlan_port(member.port).is_some() {
                    let out = egress.frame_for(member, inner);
                    pipeline.encapsulate(state, member.port, inner, out.len(), now, |_, h, _| {
                        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
                        assert_eq!(total, h.len() + out.len());
                    });
                }
            }
        }
        assert!(pipeline.remote_table().len() <= state.mac_table_max);
    });
});
