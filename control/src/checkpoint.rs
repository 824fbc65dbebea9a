//! Checkpoints of learned and connection state: learned MACs and remote VTEPs, resolved
//! neighbours, tracked connections (NAT bindings, TCP windows, the Service and backend each
//! was balanced to) and ClientIP affinities, saved in `checkpoint.bin` of the state directory
//! on a planned stop and every `[switch] checkpoint_secs`, and put back on start.
//!
//! The records name ports and Services (ids are one process's), and carry ages, not times:
//! on restore every age grows by the time the switch was down (wall clock), and what expired
//! meanwhile is left out. So a connection open across a restart keeps its translation and its
//! window, and a MAC is forgotten when it would have been.
//!
//! File format (version 1): the 8 bytes `TSWCKPT\0`, the format version (u32, little endian),
//! the payload's length (u64 LE), its CRC-32 (u32 LE), then the payload: the [`Checkpoint`]
//! record in postcard encoding (compact; about 60 bytes a connection, so the file is bounded
//! by the tables' bounds: `conntrack_max` connections at most). A file with a bad magic,
//! length or CRC, or that does not decode, is refused as corrupt (the loader falls back to the
//! previous copy, see [`crate::state`]); a higher version is refused as written by a newer
//! tapswitch.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::state::ParseError;

/// The checkpoint's file in the state directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";
const MAGIC: &[u8; 8] = b"TSWCKPT\0";
/// The format version this tapswitch writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Everything a checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Wall-clock time of the checkpoint, in milliseconds since the Unix epoch.
    pub saved_unix_ms: u64,
    /// Taken with the workers stopped (a planned stop, a takeover): TCP windows are exact.
    /// A periodic checkpoint's windows may lag behind the traffic: its TCP connections are
    /// restored with window checks off (liberal).
    pub complete: bool,
    pub macs: Vec<MacRecord>,
    pub remotes: Vec<RemoteRecord>,
    pub neighbours: Vec<NeighRecord>,
    pub connections: Vec<ConnRecord>,
    pub affinities: Vec<AffinityRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacRecord {
    pub vlan: u16,
    pub mac: [u8; 6],
    pub port: String,
    pub age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRecord {
    pub vlan: u16,
    pub mac: [u8; 6],
    pub remote: Ipv4Addr,
    pub age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighRecord {
    pub vlan: u16,
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub age_ms: u64,
}

/// A connection's tuple in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleRecord {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// One side of a TCP connection's window tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideRecord {
    pub end: u32,
    pub maxend: u32,
    pub maxwin: u32,
    pub scale: u8,
    pub wscale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtoRecord {
    /// The state by its conntrack name (`ESTABLISHED`, ...), and both sides.
    Tcp {
        state: String,
        sides: [SideRecord; 2],
        /// Window checks are off for it.
        liberal: bool,
    },
    Udp,
    Icmp,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    pub orig: TupleRecord,
    pub reply: TupleRecord,
    pub proto: ProtoRecord,
    pub replied: bool,
    /// `NAT_SNAT | NAT_DNAT`.
    pub nat: u8,
    /// The Service (by name) and backend it was balanced to.
    pub service: Option<(String, SocketAddrV4)>,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub age_ms: u64,
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityRecord {
    pub service: String,
    pub client: Ipv4Addr,
    pub backend: SocketAddrV4,
    pub expires_in_ms: u64,
}

impl Checkpoint {
    /// Entries in it.
    pub fn len(&self) -> usize {
        self.macs.len()
            + self.remotes.len()
            + self.neighbours.len()
            + self.connections.len()
            + self.affinities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ages every record by `gap_ms` (the time the switch was down) and leaves out what
    /// expired meanwhile. MACs, remotes and neighbours age out past `aging_ms`.
    pub fn aged(mut self, gap_ms: u64, aging_ms: u64) -> Checkpoint {
        let grow = |age: &mut u64| *age = age.saturating_add(gap_ms);
        self.macs.iter_mut().for_each(|m| grow(&mut m.age_ms));
        self.macs.retain(|m| m.age_ms < aging_ms);
        self.remotes.iter_mut().for_each(|m| grow(&mut m.age_ms));
        self.remotes.retain(|m| m.age_ms < aging_ms);
        self.neighbours.iter_mut().for_each(|m| grow(&mut m.age_ms));
        self.connections.retain(|c| c.expires_in_ms > gap_ms);
        for c in &mut self.connections {
            grow(&mut c.age_ms);
            c.expires_in_ms -= gap_ms;
        }
        self.affinities.retain(|a| a.expires_in_ms > gap_ms);
        for a in &mut self.affinities {
            a.expires_in_ms -= gap_ms;
        }
        self
    }
}

/// The file's bytes for `checkpoint`.
pub fn encode(checkpoint: &Checkpoint) -> Vec<u8> {
    let payload = postcard::to_stdvec(checkpoint).expect("a checkpoint serializes");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Parses a checkpoint file's bytes; the error says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, ParseError> {
    let bad = |why: &str| ParseError::Bad(why.to_string());
    if bytes.len() < HEADER_LEN {
        return Err(bad("truncated: shorter than its header"));
    }
    if &bytes[..8] != MAGIC {
        return Err(bad("not a tapswitch checkpoint (bad magic)"));
    }
    let field = |at: usize, n: usize| &bytes[at..at + n];
    let version = u32::from_le_bytes(field(8, 4).try_into().expect("4 bytes"));
    if version > CHECKPOINT_VERSION {
        return Err(ParseError::Future(u64::from(version)));
    }
    if version != CHECKPOINT_VERSION {
        return Err(bad("unknown format version 0"));
    }
    let len = u64::from_le_bytes(field(12, 8).try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(field(20, 4).try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(ParseError::Bad(format!(
            "truncated or padded: the header says {len} bytes of payload, the file has {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("corrupt: the CRC does not match"));
    }
    let (checkpoint, rest) = postcard::take_from_bytes::<Checkpoint>(payload)
        .map_err(|e| ParseError::Bad(format!("does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the checkpoint"));
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            saved_unix_ms: 1_700_000_000_000,
            complete: true,
            macs: vec![MacRecord {
                vlan: 10,
                mac: [2, 0, 0, 0, 0, 1],
                port: "tap-c1".into(),
                age_ms: 1000,
            }],
            remotes: vec![],
            neighbours: vec![NeighRecord {
                vlan: 10,
                ip: "10.0.0.2".parse().unwrap(),
                mac: [2, 0, 0, 0, 0, 2],
                age_ms: 5,
            }],
            connections: vec![ConnRecord {
                orig: TupleRecord {
                    src: "10.0.0.2".parse().unwrap(),
                    dst: "192.0.2.1".parse().unwrap(),
                    sport: 40000,
                    dport: 80,
                    proto: 6,
                },
                reply: TupleRecord {
                    src: "192.0.2.1".parse().unwrap(),
                    dst: "192.0.2.254".parse().unwrap(),
                    sport: 80,
                    dport: 61000,
                    proto: 6,
                },
                proto: ProtoRecord::Tcp {
                    state: "ESTABLISHED".into(),
                    liberal: false,
                    sides: [SideRecord {
                        end: 1,
                        maxend: 2,
                        maxwin: 3,
                        scale: 7,
                        wscale: true,
                    }; 2],
                },
                replied: true,
                nat: 1,
                service: Some(("web".into(), "10.0.0.3:80".parse().unwrap())),
                packets: [3, 4],
                bytes: [300, 400],
                age_ms: 2000,
                expires_in_ms: 10_000,
            }],
            affinities: vec![AffinityRecord {
                service: "web".into(),
                client: "10.0.0.2".parse().unwrap(),
                backend: "10.0.0.3:80".parse().unwrap(),
                expires_in_ms: 3000,
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let c = sample();
        let bytes = encode(&c);
        assert_eq!(decode(&bytes).unwrap(), c);
        for cut in [0, 5, HEADER_LEN, bytes.len() - 1] {
            assert!(
                matches!(decode(&bytes[..cut]), Err(ParseError::Bad(_))),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode(&flipped).unwrap_err(),
            ParseError::Bad("corrupt: the CRC does not match".into())
        );
        let mut future = bytes.clone();
        future[8] = 2;
        assert_eq!(decode(&future).unwrap_err(), ParseError::Future(2));
    }

    #[test]
    fn ageing_adds_the_downtime_and_drops_what_expired() {
        let c = sample().aged(4000, 300_000);
        assert_eq!(c.macs[0].age_ms, 5000);
        assert_eq!(c.connections[0].expires_in_ms, 6000);
        assert_eq!(c.connections[0].age_ms, 6000);
        assert!(c.affinities.is_empty(), "expired during the downtime");
        let c = sample().aged(20_000, 10_000);
        assert!(c.macs.is_empty() && c.connections.is_empty());
    }
}
