//! Checkpoints of what the switch learned and tracks (see [`crate::checkpoint`]): taking one
//! from the shared tables, naming ports and Services, and putting one back.

use std::time::{SystemTime, UNIX_EPOCH};

use tapswitch_dataplane::pipeline::{
    LearnedMac, LearnedNeighbour, LearnedRemote, LearnedState, SavedAffinity, SavedConnection,
};
use tapswitch_dataplane::tables::conntrack::{
    Entry, FlowKey, ProtoState, TcpSide, TcpState, TcpTrack,
};
use tapswitch_dataplane::tables::{FdbKey, NeighKey, PortId};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

use super::{Switch, SwitchError};
use crate::checkpoint::{
    self, AffinityRecord, Checkpoint, ConnRecord, MacRecord, NeighRecord, ProtoRecord,
    RemoteRecord, SideRecord, TupleRecord, CHECKPOINT_FILE,
};

/// What a restore put back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    pub entries: usize,
    /// Records naming a port or Service that is gone, or that did not fit.
    pub skipped: usize,
    /// How long the switch was down, by the wall clock.
    pub gap_ms: u64,
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn tuple(k: &FlowKey) -> TupleRecord {
    TupleRecord {
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
    }
}

fn flow(t: &TupleRecord) -> FlowKey {
    FlowKey {
        src: t.src,
        dst: t.dst,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
    }
}

fn side(s: &TcpSide) -> SideRecord {
    SideRecord {
        end: s.end,
        maxend: s.maxend,
        maxwin: s.maxwin,
        scale: s.scale,
        wscale: s.wscale,
    }
}

fn tcp_side(s: &SideRecord) -> TcpSide {
    TcpSide {
        end: s.end,
        maxend: s.maxend,
        maxwin: s.maxwin,
        scale: s.scale,
        wscale: s.wscale,
    }
}

impl Switch {
    /// Takes a checkpoint of the learned and connection state (in memory).
    pub fn take_checkpoint(&self) -> Checkpoint {
        let complete = self.quiesced;
        let aging_ms = self.config.switch.mac_aging_secs * 1000;
        let state = self.shared.export(self.now(), aging_ms);
        let services = self.nat.service_names();
        let port = |id: PortId| self.port_name(id);
        Checkpoint {
            saved_unix_ms: unix_ms(),
            complete,
            macs: state
                .macs
                .iter()
                .map(|m| MacRecord {
                    vlan: m.key.vlan().get(),
                    mac: *m.key.mac().as_bytes(),
                    port: port(m.port),
                    age_ms: m.age_ms,
                })
                .collect(),
            remotes: state
                .remotes
                .iter()
                .map(|r| RemoteRecord {
                    vlan: r.key.vlan().get(),
                    mac: *r.key.mac().as_bytes(),
                    remote: r.remote,
                    age_ms: r.age_ms,
                })
                .collect(),
            neighbours: state
                .neighbours
                .iter()
                .map(|n| NeighRecord {
                    vlan: n.key.vlan.get(),
                    ip: n.key.ip,
                    mac: *n.mac.as_bytes(),
                    age_ms: n.age_ms,
                })
                .collect(),
            connections: state
                .connections
                .iter()
                .filter_map(|c| {
                    let e = &c.entry;
                    let service = match e.backend {
                        Some((id, backend)) => Some((services.get(&id)?.clone(), backend)),
                        None => None,
                    };
                    Some(ConnRecord {
                        orig: tuple(&e.orig),
                        reply: tuple(&e.reply),
                        proto: match e.proto {
                            ProtoState::Tcp(t) => ProtoRecord::Tcp {
                                state: t.state.name().to_string(),
                                sides: t.sides().map(|s| side(&s)),
                                liberal: t.is_liberal(),
                            },
                            ProtoState::Udp => ProtoRecord::Udp,
                            ProtoState::Icmp => ProtoRecord::Icmp,
                            ProtoState::Other => ProtoRecord::Other,
                        },
                        replied: e.replied,
                        nat: e.nat,
                        service,
                        packets: e.packets,
                        bytes: e.bytes,
                        age_ms: c.age_ms,
                        expires_in_ms: c.expires_in_ms,
                    })
                })
                .collect(),
            affinities: state
                .affinities
                .iter()
                .filter_map(|a| {
                    Some(AffinityRecord {
                        service: services.get(&a.service)?.clone(),
                        client: a.client,
                        backend: a.backend,
                        expires_in_ms: a.expires_in_ms,
                    })
                })
                .collect(),
        }
    }

    /// Writes a checkpoint to the state directory (nothing when the switch keeps no state).
    /// Returns how many entries it holds.
    pub fn checkpoint(&mut self) -> Result<usize, SwitchError> {
        let Some(store) = self.store.as_ref().filter(|_| self.checkpoints) else {
            return Ok(0);
        };
        let checkpoint = self.take_checkpoint();
        let bytes = checkpoint::encode(&checkpoint);
        if let Err(e) = store.save(CHECKPOINT_FILE, &bytes) {
            self.checkpoint_stats.failed += 1;
            return Err(SwitchError::State(e));
        }
        self.checkpoint_stats.written += 1;
        self.checkpoint_stats.entries = checkpoint.len() as u64;
        self.checkpoint_stats.bytes = bytes.len() as u64;
        self.last_checkpoint = Some(std::time::Instant::now());
        Ok(checkpoint.len())
    }

    /// Puts `saved` back after `gap_ms` of downtime: records naming a port or Service that no
    /// longer exists are skipped.
    pub fn import_checkpoint(&mut self, saved: Checkpoint, gap_ms: u64) -> Restored {
        let aging_ms = self.config.switch.mac_aging_secs * 1000;
        let total = saved.len();
        let complete = saved.complete;
        let saved = saved.aged(gap_ms, aging_ms);
        let vlan = |v: u16| VlanId::new(v);
        let key = |v: u16, mac: &[u8; 6]| {
            vlan(v).map(|v| FdbKey::new(v, EthernetAddress::from_bytes(mac)))
        };
        let mut state = LearnedState::default();
        for m in &saved.macs {
            let (Some(key), Some(port)) = (key(m.vlan, &m.mac), self.port_id(&m.port)) else {
                continue;
            };
            state.macs.push(LearnedMac {
                key,
                port,
                age_ms: m.age_ms,
            });
        }
        for r in &saved.remotes {
            if let Some(key) = key(r.vlan, &r.mac) {
                state.remotes.push(LearnedRemote {
                    key,
                    remote: r.remote,
                    age_ms: r.age_ms,
                });
            }
        }
        for n in &saved.neighbours {
            if let Some(v) = vlan(n.vlan) {
                state.neighbours.push(LearnedNeighbour {
                    key: NeighKey::new(v, n.ip),
                    mac: EthernetAddress::from_bytes(&n.mac),
                    age_ms: n.age_ms,
                });
            }
        }
        for c in &saved.connections {
            let backend = match &c.service {
                Some((name, backend)) => match self.nat.service_id(name) {
                    Some(id) => Some((id, *backend)),
                    None => continue,
                },
                None => None,
            };
            let proto = match &c.proto {
                ProtoRecord::Tcp {
                    state,
                    sides,
                    liberal,
                } => {
                    let Some(state) = TcpState::from_name(state) else {
                        continue;
                    };
                    let mut t = TcpTrack::from_parts(state, sides.each_ref().map(tcp_side));
                    if *liberal || !complete {
                        t.be_liberal();
                    }
                    ProtoState::Tcp(t)
                }
                ProtoRecord::Udp => ProtoState::Udp,
                ProtoRecord::Icmp => ProtoState::Icmp,
                ProtoRecord::Other => ProtoState::Other,
            };
            let mut entry = Entry::new(flow(&c.orig), flow(&c.reply), proto, self.now());
            entry.replied = c.replied;
            entry.nat = c.nat;
            entry.backend = backend;
            entry.packets = c.packets;
            entry.bytes = c.bytes;
            state.connections.push(SavedConnection {
                entry,
                age_ms: c.age_ms,
                expires_in_ms: c.expires_in_ms,
            });
        }
        for a in &saved.affinities {
            if let Some(service) = self.nat.service_id(&a.service) {
                state.affinities.push(SavedAffinity {
                    service,
                    client: a.client,
                    backend: a.backend,
                    expires_in_ms: a.expires_in_ms,
                });
            }
        }
        let limits: Vec<u32> = self
            .ports
            .iter()
            .map(|p| p.as_ref().map_or(u32::MAX, |p| p.spec.max_macs))
            .collect();
        let counts = self.shared.import(state, self.now(), |id| {
            limits.get(id.index()).copied().unwrap_or(u32::MAX)
        });
        let entries = counts.macs
            + counts.remotes
            + counts.neighbours
            + counts.connections
            + counts.affinities;
        Restored {
            entries,
            skipped: total - entries,
            gap_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use tapswitch_dataplane::tables::conntrack::{Entry, FlowKey, ProtoState};

    use super::*;
    use crate::Config;

    /// A checkpoint of many connections round-trips through the file format and back into
    /// a switch; prints what it costs (`TAPSWITCH_CHECKPOINT_N` sets the number, default
    /// 50000; run with --release for figures).
    #[test]
    fn checkpoint_round_trip_and_cost() {
        let n: u32 = std::env::var("TAPSWITCH_CHECKPOINT_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000);
        let config = Config::from_toml(&format!(
            "[switch]\nworkers = 1\nconntrack_max = {}\n",
            n.max(1) as usize * 2
        ))
        .unwrap();
        let switch = Switch::start(config.clone()).unwrap();
        let now = switch.now();
        {
            let mut ct = switch.shared.conntrack();
            for i in 0..n {
                let orig = FlowKey {
                    src: Ipv4Addr::from(0x0a00_0000 | i),
                    dst: Ipv4Addr::new(192, 0, 2, 1),
                    sport: 40000,
                    dport: 443,
                    proto: 6,
                };
                let mut reply = orig.reversed();
                reply.dst = Ipv4Addr::from(0xc633_6400 + i / 60_000);
                reply.dport = (i % 60_000) as u16 + 1024;
                ct.insert(Entry::new(orig, reply, ProtoState::Other, now), now)
                    .unwrap();
            }
        }
        let t = Instant::now();
        let checkpoint = switch.take_checkpoint();
        let taken = t.elapsed();
        let t = Instant::now();
        let bytes = checkpoint::encode(&checkpoint);
        let encoded = t.elapsed();
        let t = Instant::now();
        let decoded = checkpoint::decode(&bytes).unwrap();
        let decode = t.elapsed();
        assert_eq!(decoded.connections.len(), n as usize);
        let mut fresh = Switch::start(config).unwrap();
        let t = Instant::now();
        let restored = fresh.import_checkpoint(decoded, 1000);
        let imported = t.elapsed();
        assert_eq!(restored.entries, n as usize);
        eprintln!(
            "checkpoint of {n} connections: take {taken:?}, encode {encoded:?}, {} bytes \
             ({} per connection), decode {decode:?}, import {imported:?}",
            bytes.len(),
            bytes.len() / n.max(1) as usize
        );
    }
}
