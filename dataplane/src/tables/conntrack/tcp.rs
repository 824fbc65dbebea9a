//! TCP connection tracking: the state machine and the window check of Linux's
//! `nf_conntrack_proto_tcp.c` (after Guido van Rooij's "Real Stateful TCP Packet Filtering in
//! IP Filter"), with its default timeouts.
//!
//! Each direction remembers the highest sequence number it sent (`end`), the highest its peer
//! allowed it to send (`maxend`: the peer's ack plus window), its largest window (`maxwin`)
//! and its window scale. A segment is in window when its sequence number is not beyond what
//! the receiver allowed, its end is not older than one receiver window, and its
//! acknowledgement neither acknowledges unsent data nor lies more than one window back.

use super::Dir;

/// TCP connection states (the conntrack states, not the endpoints').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    /// Simultaneous open: SYN seen both ways.
    SynSent2,
}

impl TcpState {
    pub const ALL: [TcpState; 10] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];

    /// The state [`name`](Self::name) names.
    pub fn from_name(name: &str) -> Option<TcpState> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }

    /// The kernel's default timeout for the state (`net.netfilter.nf_conntrack_tcp_timeout_*`).
    pub const fn timeout_ms(self) -> u64 {
        const S: u64 = 1000;
        match self {
            TcpState::None => 10 * S,
            TcpState::SynSent => 120 * S,
            TcpState::SynRecv => 60 * S,
            TcpState::Established => 432_000 * S,
            TcpState::FinWait => 120 * S,
            TcpState::CloseWait => 60 * S,
            TcpState::LastAck => 30 * S,
            TcpState::TimeWait => 120 * S,
            TcpState::Close => 10 * S,
            TcpState::SynSent2 => 120 * S,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the state table says about a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    To(TcpState),
    /// Accepted without a state change.
    Ignore,
    Invalid,
}

use Next::{Ignore as IG, Invalid as IV};
use TcpState::{
    Close as CL, CloseWait as CW, Established as ES, FinWait as FW, LastAck as LA, SynRecv as SR,
    SynSent as SS, SynSent2 as S2, TimeWait as TW,
};

const fn t(s: TcpState) -> Next {
    Next::To(s)
}

/// `TABLE[dir][flag][state]`, flags in the order syn, synack, fin, ack, rst, none; states in
/// the order of [`TcpState`] (as in Linux).
#[rustfmt::skip]
const TABLE: [[[Next; 10]; 6]; 2] = [
    [
        // sNO    sSS    sSR    sES    sFW    sCW    sLA    sTW    sCL    sS2
        [t(SS), t(SS), IG,    IG,    IG,    IG,    IG,    t(SS), t(SS), t(S2)], // syn
        [IV,    IV,    t(SR), IV,    IV,    IV,    IV,    IV,    IV,    t(SR)], // synack
        [IV,    IV,    t(FW), t(FW), t(LA), t(LA), t(LA), t(TW), t(CL), IV   ], // fin
        [t(ES), IV,    t(ES), t(ES), t(CW), t(CW), t(TW), t(TW), t(CL), IV   ], // ack
        [IV,    t(CL), t(CL), t(CL), t(CL), t(CL), t(CL), t(CL), t(CL), t(CL)], // rst
        [IV,    IV,    IV,    IV,    IV,    IV,    IV,    IV,    IV,    IV   ], // none
    ],
    [
        [IV,    t(S2), IV,    IV,    IV,    IV,    IV,    t(SS), IV,    t(S2)], // syn
        [IV,    t(SR), IG,    IG,    IG,    IG,    IG,    IG,    IG,    t(SR)], // synack
        [IV,    IV,    t(FW), t(FW), t(LA), t(LA), t(LA), t(TW), t(CL), IV   ], // fin
        [IV,    IG,    t(SR), t(ES), t(CW), t(CW), t(TW), t(TW), t(CL), IG   ], // ack
        [IV,    t(CL), t(CL), t(CL), t(CL), t(CL), t(CL), t(CL), t(CL), t(CL)], // rst
        [IV,    IV,    IV,    IV,    IV,    IV,    IV,    IV,    IV,    IV   ], // none
    ],
];

/// The least window an acknowledgement is checked against (Linux's `MAXACKWINCONST`).
const MAX_ACK_WINDOW_MIN: u32 = 66000;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// The fields of a TCP segment conntrack looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes.
    pub len: u32,
    pub window: u16,
    /// The window scale option of a SYN.
    pub wscale: Option<u8>,
}

impl Segment {
    fn flag_index(&self) -> usize {
        if self.flags & RST != 0 {
            4
        } else if self.flags & SYN != 0 {
            if self.flags & ACK != 0 {
                1
            } else {
                0
            }
        } else if self.flags & FIN != 0 {
            2
        } else if self.flags & ACK != 0 {
            3
        } else {
            5
        }
    }

    /// A SYN without ACK: the only segment that starts tracking.
    pub fn is_initial_syn(&self) -> bool {
        self.flags & (SYN | ACK | RST) == SYN
    }
}

/// Reads the window scale option from a SYN's options.
pub fn window_scale(options: &[u8]) -> Option<u8> {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*options.get(i + 1)?);
                if len < 2 || i + len > options.len() {
                    return None;
                }
                if kind == 3 && len == 3 {
                    return Some(options[i + 2].min(14));
                }
                i += len;
            }
        }
    }
    None
}

/// What is known of one side of a connection (Linux's `ip_ct_tcp_state`): the sequence space
/// it sent up to (`end`), the most the other side allows it (`maxend`), its largest window
/// and its window scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side {
    pub end: u32,
    pub maxend: u32,
    pub maxwin: u32,
    pub scale: u8,
    /// The SYN carried a window scale option.
    pub wscale: bool,
}

/// Why a segment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpInvalid {
    /// Not allowed in the connection's state (a SYN-ACK from the client, data before the
    /// handshake, ...).
    State,
    /// Outside the window.
    Window,
}

/// One tracked TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTrack {
    pub state: TcpState,
    sides: [Side; 2],
    /// Window checks are off (the tracking still follows the segments), as Linux does for a
    /// connection whose windows it cannot know (`IP_CT_TCP_FLAG_BE_LIBERAL`): one restored
    /// from a checkpoint taken while traffic flowed, whose windows may lag behind.
    liberal: bool,
}

fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

impl TcpTrack {
    /// A connection's tracking from its parts (a restored checkpoint).
    pub fn from_parts(state: TcpState, sides: [Side; 2]) -> TcpTrack {
        TcpTrack {
            state,
            sides,
            liberal: false,
        }
    }

    /// Turns window checks off for this connection (see the field's docs).
    pub fn be_liberal(&mut self) {
        self.liberal = true;
    }

    /// Whether window checks are off.
    pub fn is_liberal(&self) -> bool {
        self.liberal
    }

    /// The original and the reply side, for checkpoints.
    pub fn sides(&self) -> [Side; 2] {
        self.sides
    }

    /// Starts tracking at a client's SYN; `None` for any other segment.
    pub fn new(seg: &Segment) -> Option<TcpTrack> {
        if !seg.is_initial_syn() {
            return None;
        }
        let mut t = TcpTrack {
            state: TcpState::SynSent,
            sides: [Side::default(); 2],
            liberal: false,
        };
        t.init_side(Dir::Original, seg);
        Some(t)
    }

    fn init_side(&mut self, dir: Dir, seg: &Segment) {
        let end = seg
            .seq
            .wrapping_add(seg.len)
            .wrapping_add(u32::from(seg.flags & SYN != 0))
            .wrapping_add(u32::from(seg.flags & FIN != 0));
        let win = u32::from(seg.window).max(1);
        let s = &mut self.sides[dir as usize];
        *s = Side {
            end,
            maxend: end,
            maxwin: win,
            scale: seg.wscale.unwrap_or(0),
            wscale: seg.wscale.is_some(),
        };
        if seg.flags & SYN == 0 {
            s.maxend = end.wrapping_add(win);
        }
    }

    /// Checks a segment in direction `dir` and moves the state; an invalid segment changes
    /// nothing.
    ///
    /// A segment the state table ignores (a SYN-ACK retransmitted into an established
    /// connection, an ACK from the server's side before its SYN-ACK) is let through without
    /// a window check and without changing anything, as Linux does: such a segment, perhaps
    /// injected, must not become what later segments are checked against.
    pub fn update(&mut self, dir: Dir, seg: &Segment) -> Result<TcpState, TcpInvalid> {
        let next = match TABLE[dir as usize][seg.flag_index()][self.state.index()] {
            Next::Invalid => return Err(TcpInvalid::State),
            Next::Ignore => return Ok(self.state),
            Next::To(s) => s,
        };
        // A new SYN on a closed connection starts it again.
        if dir == Dir::Original
            && seg.is_initial_syn()
            && matches!(self.state, TcpState::TimeWait | TcpState::Close)
        {
            if let Some(t) = TcpTrack::new(seg) {
                *self = t;
            }
            return Ok(self.state);
        }
        // Before the server answered, a RST counts only if it acknowledges the SYN (RFC 793
        // 3.4: the client would not accept another): a blind one does not close the entry.
        if self.state == TcpState::SynSent
            && dir == Dir::Reply
            && seg.flags & RST != 0
            && (seg.flags & ACK == 0 || seg.ack != self.sides[Dir::Original as usize].end)
        {
            return Err(TcpInvalid::Window);
        }
        // The window check updates the sides as it goes: on refusal they are put back.
        let saved = *self;
        if !self.in_window(dir, seg) {
            *self = saved;
            return Err(TcpInvalid::Window);
        }
        self.state = next;
        Ok(self.state)
    }

    fn in_window(&mut self, dir: Dir, seg: &Segment) -> bool {
        let (si, ri) = (dir as usize, 1 - dir as usize);
        let syn = seg.flags & SYN != 0;
        let has_ack = seg.flags & ACK != 0;
        if self.sides[si].maxwin == 0 {
            // The first segment of this direction: the server's SYN-ACK (or SYN).
            self.init_side(dir, seg);
            if syn && has_ack {
                // Window scaling holds only when both SYNs offered it (RFC 7323 2.2).
                if !(self.sides[si].wscale && self.sides[ri].wscale) {
                    self.sides[si].scale = 0;
                    self.sides[ri].scale = 0;
                }
            }
        } else if syn && dir == Dir::Original && self.state == TcpState::SynSent {
            // A retransmitted SYN (perhaps with a new initial sequence number).
            self.init_side(dir, seg);
            return true;
        }
        let seq = seg.seq;
        let mut end = seq
            .wrapping_add(seg.len)
            .wrapping_add(u32::from(syn))
            .wrapping_add(u32::from(seg.flags & FIN != 0));
        let win = if syn {
            u32::from(seg.window)
        } else {
            u32::from(seg.window) << self.sides[si].scale
        };
        let ack = if has_ack { seg.ack } else { self.sides[ri].end };
        let mut seq = seq;
        if seq == end && seg.flags & RST == 0 {
            // Nothing sent: only the acknowledgement matters.
            seq = self.sides[si].end;
            end = seq;
        }
        let s = self.sides[si];
        let r = self.sides[ri];
        // How far back an acknowledgement may lie: the sender's largest window, but at least
        // 66000 bytes (Linux's MAXACKWINDOW), for delayed ACKs of small-window senders.
        let maxackwin = s.maxwin.max(MAX_ACK_WINDOW_MIN);
        let ok = !after(seq, s.maxend)
            && after(end, s.end.wrapping_sub(r.maxwin).wrapping_sub(1))
            && (r.maxwin == 0 || !after(ack, r.end))
            && (r.maxwin == 0 || after(ack, r.end.wrapping_sub(maxackwin).wrapping_sub(1)));
        if !ok && !self.liberal {
            return false;
        }
        let s = &mut self.sides[si];
        if s.maxwin < win {
            s.maxwin = win;
        }
        if after(end, s.end) {
            s.end = end;
        }
        if has_ack {
            let maxend = ack.wrapping_add(win.max(1));
            let r = &mut self.sides[ri];
            if after(maxend, r.maxend) || r.maxwin == 0 {
                r.maxend = maxend;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> Segment {
        Segment {
            flags,
            seq,
            ack,
            len,
            window: 64000,
            wscale: if flags & SYN != 0 { Some(7) } else { None },
        }
    }

    fn handshake() -> TcpTrack {
        let mut t = TcpTrack::new(&seg(SYN, 1000, 0, 0)).unwrap();
        assert_eq!(t.state, TcpState::SynSent);
        assert_eq!(
            t.update(Dir::Reply, &seg(SYN | ACK, 5000, 1001, 0)),
            Ok(TcpState::SynRecv)
        );
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 1001, 5001, 0)),
            Ok(TcpState::Established)
        );
        t
    }

    #[test]
    fn handshake_data_and_close() {
        let mut t = handshake();
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 1001, 5001, 1000)),
            Ok(TcpState::Established)
        );
        assert_eq!(
            t.update(Dir::Reply, &seg(ACK, 5001, 2001, 500)),
            Ok(TcpState::Established)
        );
        assert_eq!(
            t.update(Dir::Original, &seg(FIN | ACK, 2001, 5501, 0)),
            Ok(TcpState::FinWait)
        );
        assert_eq!(
            t.update(Dir::Reply, &seg(ACK, 5501, 2002, 0)),
            Ok(TcpState::CloseWait)
        );
        assert_eq!(
            t.update(Dir::Reply, &seg(FIN | ACK, 5501, 2002, 0)),
            Ok(TcpState::LastAck)
        );
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 2002, 5502, 0)),
            Ok(TcpState::TimeWait)
        );
        assert_eq!(TcpState::TimeWait.timeout_ms(), 120_000);
        // A new SYN on the same tuple starts over.
        assert_eq!(
            t.update(Dir::Original, &seg(SYN, 90_000, 0, 0)),
            Ok(TcpState::SynSent)
        );
    }

    #[test]
    fn a_liberal_connection_catches_up_with_windows_it_missed() {
        // A checkpoint taken early in a connection, restored after megabytes went by.
        let saved = handshake();
        let far = 1001 + 8_000_000;
        let mut strict = TcpTrack::from_parts(saved.state, saved.sides());
        assert_eq!(
            strict.update(Dir::Original, &seg(ACK, far, 5001, 1000)),
            Err(TcpInvalid::Window)
        );
        let mut liberal = TcpTrack::from_parts(saved.state, saved.sides());
        liberal.be_liberal();
        assert_eq!(
            liberal.update(Dir::Original, &seg(ACK, far, 5001, 1000)),
            Ok(TcpState::Established)
        );
        assert_eq!(liberal.sides()[0].end, far + 1000, "the tracking followed");
        assert_eq!(
            liberal.update(Dir::Reply, &seg(ACK, 5001, far + 1000, 0)),
            Ok(TcpState::Established)
        );
    }

    #[test]
    fn only_a_syn_starts_tracking() {
        assert!(TcpTrack::new(&seg(ACK, 1, 1, 0)).is_none());
        assert!(TcpTrack::new(&seg(SYN | ACK, 1, 1, 0)).is_none());
        assert!(TcpTrack::new(&seg(RST, 1, 1, 0)).is_none());
    }

    #[test]
    fn invalid_state_transitions() {
        let mut t = TcpTrack::new(&seg(SYN, 1000, 0, 0)).unwrap();
        // Data from the client before the server answered.
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 1001, 5001, 10)),
            Err(TcpInvalid::State)
        );
        // A SYN-ACK from the client.
        assert_eq!(
            t.update(Dir::Original, &seg(SYN | ACK, 1000, 1, 0)),
            Err(TcpInvalid::State)
        );
        assert_eq!(t.state, TcpState::SynSent);
    }

    #[test]
    fn out_of_window_segments_are_refused() {
        let mut t = handshake();
        // Far beyond what the server allowed (window 64000 << 7).
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 1001 + 50_000_000, 5001, 100)),
            Err(TcpInvalid::Window)
        );
        // Acknowledges data the server never sent.
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 1001, 5001 + 1_000_000, 0)),
            Err(TcpInvalid::Window)
        );
        // Long before anything still in flight.
        assert_eq!(
            t.update(
                Dir::Original,
                &seg(ACK, 1001u32.wrapping_sub(40_000_000), 5001, 10)
            ),
            Err(TcpInvalid::Window)
        );
        // An out-of-window RST does not close.
        assert_eq!(
            t.update(Dir::Reply, &seg(RST, 5001 + 90_000_000, 0, 0)),
            Err(TcpInvalid::Window)
        );
        assert_eq!(t.state, TcpState::Established);
        assert_eq!(
            t.update(Dir::Reply, &seg(RST | ACK, 5001, 1001, 0)),
            Ok(TcpState::Close)
        );
    }

    #[test]
    fn scaled_windows_allow_large_flights() {
        let mut t = handshake();
        // The server's first scaled window: 64000 << 7 = 8 MB; a flight of 4 MB is fine.
        t.update(Dir::Reply, &seg(ACK, 5001, 1001, 0)).unwrap();
        let mut seq = 1001u32;
        for _ in 0..3000 {
            assert!(t.update(Dir::Original, &seg(ACK, seq, 5001, 1448)).is_ok());
            seq = seq.wrapping_add(1448);
        }
    }

    #[test]
    fn without_scaling_on_both_sides_no_scale() {
        let mut t = TcpTrack::new(&Segment {
            wscale: None,
            ..seg(SYN, 1000, 0, 0)
        })
        .unwrap();
        t.update(Dir::Reply, &seg(SYN | ACK, 5000, 1001, 0))
            .unwrap();
        t.update(Dir::Original, &seg(ACK, 1001, 5001, 0)).unwrap();
        // The server's window is 64000 unscaled: 100 kB ahead is out of window.
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 1001 + 100_000, 5001, 100)),
            Err(TcpInvalid::Window)
        );
    }

    #[test]
    fn an_ignored_segment_changes_nothing() {
        // A stray ACK from the server's side before its SYN-ACK (a blind injection, a late
        // segment of an older connection) is let through as Linux does, but must not become
        // what the real SYN-ACK is checked against.
        let mut t = TcpTrack::new(&seg(SYN, 1000, 0, 0)).unwrap();
        let before = t;
        assert_eq!(
            t.update(Dir::Reply, &seg(ACK, 3_000_000_000, 12345, 0)),
            Ok(TcpState::SynSent)
        );
        assert_eq!(t, before);
        assert_eq!(
            t.update(Dir::Reply, &seg(SYN | ACK, 5000, 1001, 0)),
            Ok(TcpState::SynRecv)
        );
        assert_eq!(
            t.update(Dir::Original, &seg(ACK, 1001, 5001, 0)),
            Ok(TcpState::Established)
        );
        // A retransmitted SYN-ACK once established: ignored, the state stays.
        let before = t;
        assert_eq!(
            t.update(Dir::Reply, &seg(SYN | ACK, 5000, 1001, 0)),
            Ok(TcpState::Established)
        );
        assert_eq!(t, before);
    }

    #[test]
    fn a_blind_rst_does_not_close_a_connection_being_opened() {
        let mut t = TcpTrack::new(&seg(SYN, 1000, 0, 0)).unwrap();
        assert_eq!(
            t.update(Dir::Reply, &seg(RST, 77, 0, 0)),
            Err(TcpInvalid::Window)
        );
        assert_eq!(
            t.update(Dir::Reply, &seg(RST | ACK, 0, 4242, 0)),
            Err(TcpInvalid::Window)
        );
        assert_eq!(t.state, TcpState::SynSent);
        // The server's own answer to the SYN acknowledges it.
        assert_eq!(
            t.update(Dir::Reply, &seg(RST | ACK, 0, 1001, 0)),
            Ok(TcpState::Close)
        );
    }

    #[test]
    fn a_refused_first_segment_leaves_the_direction_unset() {
        let mut t = TcpTrack::new(&seg(SYN, 1000, 0, 0)).unwrap();
        let before = t;
        // A SYN-ACK acknowledging something never sent.
        assert_eq!(
            t.update(Dir::Reply, &seg(SYN | ACK, 5000, 99_999, 0)),
            Err(TcpInvalid::Window)
        );
        assert_eq!(t, before);
        assert_eq!(
            t.update(Dir::Reply, &seg(SYN | ACK, 5000, 1001, 0)),
            Ok(TcpState::SynRecv)
        );
    }

    #[test]
    fn late_acks_are_accepted_within_the_minimum_ack_window() {
        // A client with a small window (no scaling) downloading: an ACK delayed behind
        // newer ones lies more than its window back, yet within 66000 bytes (Linux's
        // MAXACKWINCONST): it is in window.
        let small = |flags, seq, ack, len| Segment {
            window: 1000,
            wscale: None,
            ..seg(flags, seq, ack, len)
        };
        let mut t = TcpTrack::new(&small(SYN, 1000, 0, 0)).unwrap();
        t.update(Dir::Reply, &seg(SYN | ACK, 5000, 1001, 0))
            .unwrap();
        t.update(Dir::Original, &small(ACK, 1001, 5001, 0)).unwrap();
        let mut at = 5001u32;
        for _ in 0..5 {
            t.update(Dir::Reply, &seg(ACK, at, 1001, 1000)).unwrap();
            at += 1000;
            t.update(Dir::Original, &small(ACK, 1001, at, 0)).unwrap();
        }
        assert_eq!(
            t.update(Dir::Original, &small(ACK, 1001, 5001, 0)),
            Ok(TcpState::Established)
        );
        // But not one from 100 kB back.
        assert_eq!(
            t.update(
                Dir::Original,
                &small(ACK, 1001, at.wrapping_sub(100_000), 0)
            ),
            Err(TcpInvalid::Window)
        );
    }

    #[test]
    fn window_scale_option() {
        assert_eq!(window_scale(&[2, 4, 5, 180, 1, 3, 3, 7]), Some(7));
        assert_eq!(window_scale(&[2, 4, 5, 180, 0, 3, 3, 7]), None);
        assert_eq!(window_scale(&[3, 3, 20]), Some(14));
        assert_eq!(window_scale(&[3]), None);
        assert_eq!(window_scale(&[8, 0]), None);
    }
}
