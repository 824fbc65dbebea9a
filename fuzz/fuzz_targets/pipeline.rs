//! The L2 pipeline fed arbitrary frames on arbitrary ports of a switch with access, trunk and
//! native-VLAN ports. The first two bytes pick the ingress port (byte 0 modulo 6; bit 7 set:
//! the rest is an `arbitrary` frame description, built by `tapswitch_fuzz::frame`, else the
//! rest is the frame as it is) and advance the fake clock. Every decision must be a drop with a reason or a set of egress ports
//! that never includes the ingress port, and each egress frame must be a well-formed frame.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Pipeline, PortMode, PortState, VlanSet, WorkerCounters,
};
use tapswitch_dataplane::tables::{FdbKey, PortId, Timestamp};
use tapswitch_dataplane::wire::{EthernetAddress, EthernetFrame, VlanId};
use tapswitch_fuzz::frame::{build, FrameSpec};

fn vlan(v: u16) -> VlanId {
    VlanId::new(v).expect("valid vlan")
}

fn port(name: &str, mode: PortMode, max_macs: u32) -> Option<PortState> {
    Some(PortState {
        name: name.into(),
        mode,
        mtu: 1500,
        max_macs,
    })
}

fn state() -> ForwardingState {
    let mut s = ForwardingState::with_ports(vec![
        port("a", PortMode::Access(vlan(1)), 4),
        port("b", PortMode::Access(vlan(10)), u32::MAX),
        port(
            "t",
            PortMode::Trunk {
                allowed: [vlan(10), vlan(20)].into_iter().collect::<VlanSet>(),
                native: None,
            },
            u32::MAX,
        ),
        port(
            "n",
            PortMode::Trunk {
                allowed: [vlan(20)].into_iter().collect::<VlanSet>(),
                native: Some(vlan(1)),
            },
            u32::MAX,
        ),
        None,
    ]);
    s.mac_table_max = 64;
    s.mac_aging_ms = 5_000;
    s.neighbours.insert(
        (vlan(1), "10.0.0.9".parse().expect("ip")),
        EthernetAddress([2, 0, 0, 0, 0, 0x99]),
    );
    s.neighbours.insert(
        (vlan(1), "fd00::9".parse().expect("ip")),
        EthernetAddress([2, 0, 0, 0, 0, 0x99]),
    );
    s.static_fdb.insert(
        FdbKey::new(vlan(10), EthernetAddress([2, 0, 0, 0, 0, 9])),
        PortId(2),
    );
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
    let ingress = PortId(u16::from((data[0] & 0x7f) % 6));
    // The pipeline rewrites routed frames in place, so it takes them mutably.
    let mut frame = if data[0] & 0x80 != 0 {
        let Ok(spec) = FrameSpec::arbitrary(&mut Unstructured::new(&data[2..])) else {
            return;
        };
        build(&spec).frame
    } else {
        data[2..].to_vec()
    };
    SIM.with(|sim| {
        let (state, pipeline, clock) = &mut *sim.borrow_mut();
        *clock += u64::from(data[1]) * 50;
        let now = Timestamp::from_millis(*clock);
        if data[1] == 0xff {
            pipeline.age(state, now);
        }
        match pipeline.decide(state, ingress, &mut frame, now) {
            Decision::Drop(reason) => assert!(!reason.as_str().is_empty()),
            Decision::Reply(egress, reply) => {
                let back: Vec<_> = egress.ports().collect();
                assert_eq!(back.len(), 1);
                assert_eq!(
                    back[0].port, ingress,
                    "a suppression reply goes back where asked"
                );
                assert!(EthernetFrame::new_checked(reply.as_bytes()).is_ok());
            }
            Decision::Forward(egress) => {
                for member in egress.ports() {
                    assert_ne!(member.port, ingress, "never back out the ingress port");
                    let p = state.port(member.port).expect("egress to a real port");
                    assert!(p.mode.is_member(egress.vlan), "egress stays in the VLAN");
                    let out = egress.frame_for(member, &frame).to_vec();
                    assert!(EthernetFrame::new_checked(&out[..]).is_ok());
                    assert!(out.len() <= frame.len() + 4);
                }
            }
            Decision::Local | Decision::Tunnel(_) => panic!("no router interface in this switch"),
        }
        assert!(pipeline.mac_table().len() <= state.mac_table_max);
        assert!(pipeline.mac_table().port_count(PortId(0)) <= 4);
    });
});
