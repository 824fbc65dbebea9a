//! The whole packet path as the worker drives it, `Pipeline::trace` (which is
//! `Pipeline::receive` with every stage recording), on the switch and router of
//! `tapswitch_fuzz::router`: arbitrary frames, with arbitrary offload metadata, on arbitrary
//! ports, state and clock carrying over between inputs. The pipeline's output checks every
//! transmit; the trace must name one step per transmit, start where the frame came in, and
//! name the drop with a known reason and the stage that reason belongs to.
//!
//! Input: byte 0 picks the ingress port (one past the last is refused as unknown); byte 1
//! advances the clock (as `Sim::advance`); byte 2: bit 0 sets the destination MAC to the
//! router's for the port, bit 6 takes the next 10 bytes as a virtio-net header, bit 7 builds
//! the frame from an `arbitrary` description (`tapswitch_fuzz::frame`); the rest is the frame.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::pipeline::offload::{Offload, VNET_HDR_LEN};
use tapswitch_dataplane::pipeline::{
    DropReason, ForwardingState, Output, Pipeline, RxMeta, Sent, Stage, Transmit, WorkerCounters,
};
use tapswitch_dataplane::tables::{PortId, Timestamp};
use tapswitch_dataplane::wire::{EthernetFrame, Ipv4Packet};
use tapswitch_fuzz::frame::{build, FrameSpec};
use tapswitch_fuzz::router::{router_mac_of_port, state, PORTS};

/// Checks each transmit and counts them.
struct Check<'a> {
    state: &'a ForwardingState,
    ingress: PortId,
    sent: usize,
    /// Whether a device takes a frame with offloads left to do (varies with the input).
    offloads: bool,
}

impl Output for Check<'_> {
    fn takes_offloads(&self, _port: PortId, _offload: &Offload) -> bool {
        self.offloads
    }

    fn send(&mut self, t: Transmit<'_>) -> Sent {
        self.sent += 1;
        match t {
            Transmit::Device { port, frame, vnet } => {
                assert!(self.state.port(port).is_some(), "to a real port");
                let bytes = frame.to_vec();
                assert!(
                    EthernetFrame::new_checked(&bytes[..]).is_ok(),
                    "an Ethernet frame"
                );
                if vnet.is_none() {
                    assert!(bytes.len() <= 1500 + 18, "within the MTU: {}", bytes.len());
                }
                let _ = self.ingress;
            }
            Transmit::Ipip { outer, inner, .. } => {
                let mut packet = outer.to_vec();
                packet.extend_from_slice(inner);
                let ip = Ipv4Packet::new_checked(&packet[..]).expect("an outer IPv4 header");
                assert!(ip.verify_checksum());
                assert!(!inner.is_empty());
            }
            Transmit::Vxlan { .. } => panic!("no VXLAN port in this switch"),
        }
        Sent::one(t.len())
    }
}

thread_local! {
    static SIM: RefCell<(ForwardingState, Pipeline, u64)> = RefCell::new({
        let s = state();
        let p = Pipeline::new(&s, Arc::new(WorkerCounters::default()));
        (s, p, 1_000)
    });
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let port = PortId(u16::from(data[0]) % (PORTS + 1));
    let flags = data[2];
    let mut rest = &data[3..];
    let mut offload = Offload::default();
    if flags & 0x40 != 0 && rest.len() >= VNET_HDR_LEN {
        let mut h = [0u8; VNET_HDR_LEN];
        h.copy_from_slice(&rest[..VNET_HDR_LEN]);
        offload = Offload::from_vnet_hdr(&h);
        rest = &rest[VNET_HDR_LEN..];
    }
    let mut frame = if flags & 0x80 != 0 {
        let Ok(spec) = FrameSpec::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        build(&spec).frame
    } else {
        rest.to_vec()
    };
    if flags & 1 != 0 && frame.len() >= 6 {
        frame[..6].copy_from_slice(&router_mac_of_port(port.0).0);
    }
    SIM.with(|sim| {
        let (state, pipeline, clock) = &mut *sim.borrow_mut();
        *clock += u64::from(data[1]) * 20;
        let now = Timestamp::from_millis(*clock);
        let mut out = Check {
            state,
            ingress: port,
            sent: 0,
            offloads: data[1] & 1 != 0,
        };
        let meta = RxMeta {
            offload,
            truncated: false,
            len: frame.len(),
        };
        let trace = pipeline.trace(state, port, &mut frame, &meta, now, &mut out);
        let transmits = trace
            .steps
            .iter()
            .filter(|s| s.action == "transmit")
            .count();
        assert_eq!(transmits, out.sent, "one step per transmit: {trace:?}");
        assert_eq!(trace.steps.first().map(|s| s.stage), Some(Stage::Receive));
        for d in trace.steps.iter().filter(|s| s.action == "drop") {
            let reason = d.field("reason").expect("a drop names its reason");
            let r = DropReason::ALL
                .iter()
                .find(|r| r.as_str() == reason)
                .unwrap_or_else(|| panic!("unknown reason {reason}"));
            assert_eq!(r.stage(), d.stage, "{reason} at its own stage");
        }
        if data[1] & 0x80 != 0 {
            pipeline.tick(state, now, &mut out);
        }
    });
});
