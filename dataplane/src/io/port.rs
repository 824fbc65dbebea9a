//! A port's device: where its frames are read from and written to.
//!
//! - [`PortKind::Tap`]: a TAP device that tapswitch creates (optionally inside a named network
//!   namespace) and owns. The device is persistent (`TUNSETPERSIST`): closing its descriptors
//!   (a stop, a crash) detaches tapswitch but leaves the device, with the workload's MAC,
//!   addresses and routes, in place; a later start adopts it again ([`TapSpec::adopt`]) by
//!   attaching new queues to it. Only [`PortDevice::delete_on_close`] (a `port del`, a purge)
//!   makes it go, when its last descriptor closes.
//! - [`PortKind::Packet`]: an existing interface (a veth end, an uplink NIC) attached over an
//!   AF_PACKET socket. tapswitch puts it up and promiscuous and takes every frame it receives;
//!   outgoing frames of the host's own stack on it are ignored. VLAN tags that the driver moved
//!   out of the frame (auxdata) are put back. The socket reads a virtio-net header with every
//!   frame, so checksums and TCP segmentation that the sender left to offload are known (see
//!   [`Offload`]) and finished in software before the frame goes anywhere.
//! - [`PortKind::VhostUser`]: a VM's virtio-net device, its rings in the VM's memory, the
//!   VM's QEMU (or another vhost-user frontend) on a Unix socket; see
//!   [`vhost_user`](super::vhost_user). Its queues are its virtqueue pairs.
//!
//! # Queues
//!
//! A device has one or more queues, each its own descriptor, so that several worker threads
//! can read and write one device without sharing a descriptor's receive queue:
//!
//! - a TAP with `queues` > 1 is created with `IFF_MULTI_QUEUE`: `/dev/net/tun` is opened once
//!   per queue. The queue a frame is read from is picked by tapswitch's steering program
//!   ([`steering`](super::steering)): a symmetric hash of the frame's addresses and ports, so a
//!   flow is always read by one worker, and both directions of a switched flow by the same.
//! - an attached interface with `queues` > 1 gets one packet socket per queue, joined into one
//!   `PACKET_FANOUT_HASH` group: the kernel hands each received frame to one socket of the
//!   group, chosen by the symmetric flow hash, so both directions of a flow reach one socket.
//!
//! Worker `i` reads and writes queue `i` ([`recv`](PortDevice::recv), [`send`](PortDevice::send)
//! take the queue index modulo [`queues`](PortDevice::queues), so any worker index is valid on
//! any device). A device with one queue (every device made with `queues` 0 or 1) is shared by
//! all workers: each of them may write to it (writes of whole frames to one descriptor from
//! several threads are safe), and its frames are read by whichever worker reads that one
//! descriptor. Frames of one flow stay on one queue, except that IPv4 fragments are hashed by
//! addresses alone, so the fragments of a datagram may be read on another queue than the
//! flow's unfragmented packets.
//!
//! Devices are created by the control thread and then only read and written by workers; both
//! operations are non-blocking.

use std::fs::OpenOptions;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::netdev::{self, IfReq};
use super::netns;
use super::raw;
use super::steering;
use super::vhost_user::{Held, VhostUserError, VhostUserPort, VhostUserSpec, VhostUserStatus};
use crate::pipeline::offload::{Offload, VNET_HDR_LEN};
use crate::pipeline::EgressFrame;
use crate::wire::EthernetAddress;

/// Largest frame a port reads: a 64 KiB super-frame plus a reinserted VLAN tag.
pub const MAX_FRAME: usize = 65_536 + 4;
/// Room kept in front of a received frame for reinserting a VLAN tag.
pub const HEADROOM: usize = 4;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_PERSIST: i16 = 0x0800;
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_FANOUT_HASH: u32 = 0;
/// The kernel picks an unused fanout group id (Linux 4.3 and later); only with id 0, only for
/// the socket that creates the group.
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// Setup errors of a port device. Each message names the device.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The name is not a valid interface name.
    #[error("{0:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    BadName(String),
    /// A TAP port would take a name that an existing device has.
    #[error("a device named {name} already exists{}", in_netns(.netns))]
    Exists { name: String, netns: Option<String> },
    /// A TAP to adopt exists but is not a persistent TAP that tapswitch could have made.
    #[error("a device named {name} exists{} but is not a persistent multiqueue TAP; \
             remove it or rename the port", in_netns(.netns))]
    NotAdoptable { name: String, netns: Option<String> },
    /// An attached port names a device that does not exist.
    #[error("no device named {name}{}", in_netns(.netns))]
    NoSuchDevice { name: String, netns: Option<String> },
    /// A vhost-user port's socket could not be set up.
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
    /// A syscall failed while setting the device up.
    #[error("{what} {name}: {source}")]
    Os {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

fn in_netns(netns: &Option<String>) -> String {
    netns
        .as_ref()
        .map(|n| format!(" in network namespace {n}"))
        .unwrap_or_default()
}

/// Whether `name` can be an interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= netdev::IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// How to create a TAP port.
#[derive(Debug, Clone, Default)]
pub struct TapSpec {
    pub name: String,
    pub netns: Option<String>,
    pub mac: Option<EthernetAddress>,
    pub mtu: Option<u32>,
    /// Open with the virtio-net header and checksum / TCP segmentation offloads, so the
    /// kernel hands over and takes 64 KiB super-frames with their checksums left to do.
    pub offload: bool,
    /// Queues (descriptors) of the device; 0 or 1 is one queue (at most 256 queues). The TAP
    /// is always made with `IFF_MULTI_QUEUE`, so that a later start with another number of
    /// workers can adopt it.
    pub queues: usize,
    /// When a device of that name exists, attach to it (a persistent TAP left by an earlier
    /// run of tapswitch) instead of refusing the name.
    pub adopt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Tap,
    Packet,
    VhostUser,
}

impl PortKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::Packet => "attach",
            PortKind::VhostUser => "vhost-user",
        }
    }
}

/// An open port device.
#[derive(Debug)]
pub struct PortDevice {
    kind: PortKind,
    /// One descriptor per queue, queue 0 first; never empty. A vhost-user port's are epoll
    /// sets, one per queue pair, that hold the kicks of the guest's TX rings.
    queues: Vec<OwnedFd>,
    name: String,
    netns: Option<String>,
    /// MAC of the device (the workload's side of a TAP; the attached interface's).
    mac: EthernetAddress,
    mtu: u32,
    /// Every read and write carries a virtio-net header (a TAP with offloads, a packet
    /// socket).
    vnet: bool,
    /// Frames with a checksum or a segmentation still to do may be written to it.
    offload: bool,
    /// UDP super-frames (`VIRTIO_NET_HDR_GSO_UDP_L4`) may be written to it, and it hands them
    /// over: a TAP with UDP segmentation offload (Linux 6.2 and later).
    uso: bool,
    /// The shared rings and the protocol thread of a vhost-user port.
    vhost_user: Option<VhostUserPort>,
}

fn os<'a>(what: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> PortError + 'a {
    move |source| PortError::Os {
        what,
        name: name.to_string(),
        source,
    }
}

impl PortDevice {
    /// Creates a TAP device as `spec` says, up, inside `spec.netns` when given.
    pub fn create_tap(spec: &TapSpec) -> Result<PortDevice, PortError> {
        if !valid_ifname(&spec.name) {
            return Err(PortError::BadName(spec.name.clone()));
        }
        let name = spec.name.as_str();
        netns::run_in(spec.netns.as_deref(), || {
            let existing = netdev::exists(name);
            if existing && !spec.adopt {
                return Ok(Err(PortError::Exists {
                    name: name.to_string(),
                    netns: spec.netns.clone(),
                }));
            }
            Ok(Self::open_tap(spec, existing))
        })
        .map_err(os("entering network namespace for", name))?
    }

    fn open_tap(spec: &TapSpec, existing: bool) -> Result<PortDevice, PortError> {
        let name = spec.name.as_str();
        let count = spec.queues.max(1);
        // Always multiqueue, even with one queue: the flag cannot change on a persistent
        // device, and a later start may run more workers.
        let mut flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16 | IFF_MULTI_QUEUE;
        if spec.offload {
            flags |= IFF_VNET_HDR;
        }
        let not_adoptable = || PortError::NotAdoptable {
            name: name.to_string(),
            netns: spec.netns.clone(),
        };
        let mut queues = Vec::with_capacity(count);
        let mut uso = spec.offload;
        for queue in 0..count {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(os("opening /dev/net/tun for", name))?;
            let fd = OwnedFd::from(file);
            let mut req = IfReq::new(name).map_err(os("naming", name))?;
            req.data[..2].copy_from_slice(&flags.to_ne_bytes());
            // The first TUNSETIFF creates the device (or attaches to the existing one); with
            // IFF_MULTI_QUEUE each later one (same name, same flags) attaches another queue.
            let what = match (queue, existing) {
                (0, false) => "creating TAP device",
                (0, true) => "adopting TAP device",
                _ => "adding a queue to TAP device",
            };
            match netdev::ioctl(&fd, TUNSETIFF, &mut req) {
                Ok(()) => {}
                // Not a TAP, or a TAP made without IFF_MULTI_QUEUE.
                Err(e) if existing && e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(not_adoptable())
                }
                Err(e) => return Err(os(what, name)(e)),
            }
            if queue == 0 {
                if existing {
                    // Another program's TAP (not persistent) is left alone.
                    let mut got = IfReq::new(name).map_err(os("naming", name))?;
                    netdev::ioctl(&fd, TUNGETIFF, &mut got)
                        .map_err(os("reading the flags of", name))?;
                    let flags = i16::from_ne_bytes([got.data[0], got.data[1]]);
                    if flags & IFF_PERSIST == 0 || flags & libc::IFF_TAP as i16 == 0 {
                        return Err(not_adoptable());
                    }
                }
                // The device outlives this process; see the module docs.
                set_persist(&fd, true).map_err(os("making persistent", name))?;
            }
            if spec.offload {
                // What the kernel may leave to us: checksums, TCP segmentation and, where the
                // kernel has it, UDP segmentation (the header is the 10-byte
                // `virtio_net_hdr`, the default size).
                let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
                if uso && set_offload(&fd, tcp | TUN_F_USO4 | TUN_F_USO6).is_err() {
                    uso = false;
                }
                if !uso {
                    set_offload(&fd, tcp).map_err(os("enabling offloads on", name))?;
                }
            }
            queues.push(fd);
        }
        if count > 1 {
            // A flow always on one queue (see `steering`); without the program the TAP's own
            // steering still works, with flows moving between workers at times.
            if let Err(e) = steering::load().and_then(|p| steering::attach(&queues[0], &p)) {
                log::warn!("port {name}: queue steering by flow hash unavailable: {e}");
            }
        }
        if let Some(mac) = spec.mac {
            netdev::set_mac(name, mac).map_err(os("setting the MAC of", name))?;
        }
        if let Some(mtu) = spec.mtu {
            netdev::set_mtu(name, mtu).map_err(os("setting the MTU of", name))?;
        }
        netdev::set_up(name).map_err(os("bringing up", name))?;
        Ok(PortDevice {
            kind: PortKind::Tap,
            queues,
            name: name.to_string(),
            netns: spec.netns.clone(),
            mac: netdev::mac(name).map_err(os("reading the MAC of", name))?,
            mtu: netdev::mtu(name).map_err(os("reading the MTU of", name))?,
            vnet: spec.offload,
            offload: spec.offload,
            uso,
            vhost_user: None,
        })
    }

    /// A TAP from queue descriptors another process had open on it (a takeover hands them
    /// over, so frames queued in them meanwhile are not lost). `spec.queues` is ignored: the
    /// device has as many queues as descriptors; `spec.offload` must be what the descriptors
    /// were opened with, and `uso` whether UDP segmentation offload was enabled on them.
    pub fn from_tap_queues(
        spec: &TapSpec,
        queues: Vec<OwnedFd>,
        uso: bool,
    ) -> Result<PortDevice, PortError> {
        let name = spec.name.as_str();
        if !valid_ifname(name) {
            return Err(PortError::BadName(spec.name.clone()));
        }
        if queues.is_empty() {
            return Err(os("adopting the queues of", name)(io::Error::other(
                "no queue was handed over",
            )));
        }
        netns::run_in(spec.netns.as_deref(), || {
            // Each descriptor must be a queue of this very device.
            for fd in &queues {
                let mut got = IfReq::new(name).map_err(io::Error::other)?;
                got.name = [0; 16];
                netdev::ioctl(fd, TUNGETIFF, &mut got)?;
                let len = got.name.iter().position(|&b| b == 0).unwrap_or(16);
                if &got.name[..len] != name.as_bytes() {
                    return Err(io::Error::other(
                        "a handed-over queue belongs to another device",
                    ));
                }
            }
            if queues.len() > 1 {
                if let Err(e) = steering::load().and_then(|p| steering::attach(&queues[0], &p)) {
                    log::warn!("port {name}: queue steering by flow hash unavailable: {e}");
                }
            }
            if let Some(mac) = spec.mac {
                netdev::set_mac(name, mac)?;
            }
            if let Some(mtu) = spec.mtu {
                netdev::set_mtu(name, mtu)?;
            }
            netdev::set_up(name)?;
            Ok((netdev::mac(name)?, netdev::mtu(name)?))
        })
        .map_err(os("adopting the queues of", name))
        .map(|(mac, mtu)| PortDevice {
            kind: PortKind::Tap,
            queues,
            name: name.to_string(),
            netns: spec.netns.clone(),
            mac,
            mtu,
            vnet: spec.offload,
            offload: spec.offload,
            uso: uso && spec.offload,
            vhost_user: None,
        })
    }

    /// Deletes the persistent TAP `name` (in `netns`) that an earlier run left, if it is
    /// there: true when one was deleted. A device that is not such a TAP is left alone.
    pub fn delete_tap(name: &str, netns: Option<&str>) -> Result<bool, PortError> {
        let exists = netns::run_in(netns, || Ok(netdev::exists(name)))
            .map_err(os("entering network namespace for", name))?;
        if !exists {
            return Ok(false);
        }
        let spec = TapSpec {
            name: name.to_string(),
            netns: netns.map(str::to_string),
            queues: 1,
            adopt: true,
            ..TapSpec::default()
        };
        let tap = Self::create_tap(&spec)?;
        tap.delete_on_close()
            .map_err(os("deleting TAP device", name))?;
        Ok(true)
    }

    /// The descriptors of a TAP's queues, queue 0 first (to hand over to another process).
    pub fn tap_queue_fds(&self) -> Option<Vec<RawFd>> {
        (self.kind == PortKind::Tap).then(|| self.queues.iter().map(AsRawFd::as_raw_fd).collect())
    }

    /// Attaches to the existing interface `name` (inside `netns` when given) over AF_PACKET:
    /// up, promiscuous, every frame. `mtu` changes the interface's MTU when given.
    pub fn attach(
        name: &str,
        netns: Option<&str>,
        mtu: Option<u32>,
    ) -> Result<PortDevice, PortError> {
        Self::attach_with(name, netns, mtu, true, 1)
    }

    /// [`attach`](Self::attach), saying whether frames with offloads still to do may be
    /// written to the interface (the kernel finishes them) or must be finished first, with
    /// `queues` packet sockets (0 or 1: one). More than one are joined into one
    /// `PACKET_FANOUT_HASH` group: the kernel gives each received frame to one of them, chosen
    /// by its symmetric flow hash, so both directions of a flow reach the same socket.
    pub fn attach_with(
        name: &str,
        netns: Option<&str>,
        mtu: Option<u32>,
        offload: bool,
        queues: usize,
    ) -> Result<PortDevice, PortError> {
        if !valid_ifname(name) {
            return Err(PortError::BadName(name.to_string()));
        }
        netns::run_in(netns, || {
            let Ok(ifindex) = netdev::index(name) else {
                return Ok(Err(PortError::NoSuchDevice {
                    name: name.to_string(),
                    netns: netns.map(str::to_string),
                }));
            };
            Ok(Self::open_packet(
                name, netns, ifindex, mtu, offload, queues,
            ))
        })
        .map_err(os("entering network namespace for", name))?
    }

    fn open_packet(
        name: &str,
        netns: Option<&str>,
        ifindex: u32,
        mtu: Option<u32>,
        offload: bool,
        queues: usize,
    ) -> Result<PortDevice, PortError> {
        netdev::set_up(name).map_err(os("bringing up", name))?;
        let count = queues.max(1);
        let mut sockets = Vec::with_capacity(count);
        if count == 1 {
            sockets.push(packet_socket(name, ifindex, false)?);
        } else {
            // A socket bound but not yet in the group gets every frame, a copy of what the
            // group hands out: until all have joined, each drops everything (a filter), so no
            // frame is read twice.
            let mut group = None;
            for _ in 0..count {
                let fd = packet_socket(name, ifindex, true)?;
                group =
                    Some(join_fanout(&fd, group).map_err(os("joining the fanout group of", name))?);
                sockets.push(fd);
            }
            for fd in &sockets {
                // SO_DETACH_FILTER ignores its value.
                raw::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_DETACH_FILTER,
                    &(0 as libc::c_int),
                )
                .map_err(os("removing the setup filter of", name))?;
            }
        }
        if let Some(mtu) = mtu {
            netdev::set_mtu(name, mtu).map_err(os("setting the MTU of", name))?;
        }
        Ok(PortDevice {
            kind: PortKind::Packet,
            queues: sockets,
            name: name.to_string(),
            netns: netns.map(str::to_string),
            mac: netdev::mac(name).map_err(os("reading the MAC of", name))?,
            mtu: netdev::mtu(name).map_err(os("reading the MTU of", name))?,
            vnet: true,
            offload,
            // A packet socket's frames come segmented by the kernel's own rules; UDP
            // super-frames are not written to it.
            uso: false,
            vhost_user: None,
        })
    }

    /// Makes a vhost-user port as `spec` says: in server mode its socket listens when this
    /// returns; a frontend may connect (or be connected to) at any time after. `mac` is the
    /// VM's, as given to its frontend (for port security and `port list`), and `mtu` what the
    /// VM is configured with; neither is sent to the frontend.
    pub fn create_vhost_user(
        spec: &VhostUserSpec,
        mac: Option<EthernetAddress>,
        mtu: Option<u32>,
    ) -> Result<PortDevice, PortError> {
        let (port, queues) = VhostUserPort::create(spec)?;
        Ok(PortDevice {
            kind: PortKind::VhostUser,
            queues,
            name: spec.name.clone(),
            netns: None,
            mac: mac.unwrap_or(EthernetAddress([0; 6])),
            mtu: mtu.unwrap_or(1500),
            vnet: true,
            offload: true,
            uso: false,
            vhost_user: Some(port),
        })
    }

    /// The connection of a vhost-user port (`None` for other kinds).
    pub fn vhost_user_status(&self) -> Option<VhostUserStatus> {
        self.vhost_user.as_ref().map(VhostUserPort::status)
    }

    pub fn kind(&self) -> PortKind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Makes a TAP go when its last descriptor closes (when the last snapshot that holds this
    /// device is dropped), instead of outliving tapswitch. An attached interface is only
    /// released on close, never deleted.
    pub fn delete_on_close(&self) -> io::Result<()> {
        match self.kind {
            PortKind::Tap => set_persist(&self.queues[0], false),
            PortKind::Packet | PortKind::VhostUser => Ok(()),
        }
    }

    /// Whether frames with a checksum or segmentation still to do may be written to it (a
    /// vhost-user port: whether the guest now connected takes pending checksums).
    pub fn takes_offloads(&self) -> bool {
        match &self.vhost_user {
            Some(v) => v.device().takes_checksums(),
            None => self.offload,
        }
    }

    /// Whether a frame with `offload` still to do may be written to it as it is.
    pub fn takes(&self, offload: &Offload) -> bool {
        match &self.vhost_user {
            Some(v) => v.device().takes(offload),
            None => self.offload && (!offload.gso_udp || self.uso),
        }
    }

    /// Whether UDP super-frames (UDP segmentation offload) may be written to it.
    pub fn takes_udp_segmentation(&self) -> bool {
        self.uso
    }

    /// How many queues (descriptors) the device has; at least 1.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The descriptor of queue `queue` (to poll it), or `None` when `queue >= queues()`.
    pub fn queue_fd(&self, queue: usize) -> Option<RawFd> {
        self.queues.get(queue).map(AsRawFd::as_raw_fd)
    }

    /// The descriptor of queue `queue` modulo the number of queues.
    fn fd(&self, queue: usize) -> RawFd {
        self.queues[queue % self.queues.len()].as_raw_fd()
    }

    /// Reads one frame from queue `queue` (modulo [`queues`](Self::queues)) into
    /// `buf[HEADROOM..]` (a TAP) or with auxdata (a packet socket) and returns the frame's
    /// range in `buf`. `Ok(None)` means nothing more to read now on that queue.
    /// `buf` must be at least [`HEADROOM`] + [`MAX_FRAME`] long. A vhost-user port's ring stays
    /// locked in `held` until the batch ends (see [`Held`]).
    pub fn recv<'a>(
        &'a self,
        queue: usize,
        buf: &mut [u8],
        held: &mut Held<'a>,
    ) -> io::Result<Option<RxFrame>> {
        if let Some(v) = &self.vhost_user {
            return v.device().recv(queue, buf, held);
        }
        let fd = self.fd(queue);
        match self.kind {
            PortKind::Tap if self.vnet => {
                let room = &mut buf[HEADROOM..];
                let mut vnet = [0u8; VNET_HDR_LEN];
                let iov = [
                    libc::iovec {
                        iov_base: vnet.as_mut_ptr().cast(),
                        iov_len: vnet.len(),
                    },
                    libc::iovec {
                        iov_base: room.as_mut_ptr().cast(),
                        iov_len: room.len(),
                    },
                ];
                // SAFETY: both iovecs point at live buffers of their lengths.
                let n = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
                if n < 0 {
                    return would_block(io::Error::last_os_error());
                }
                Ok(Some(RxFrame {
                    start: HEADROOM,
                    len: (n as usize).saturating_sub(VNET_HDR_LEN),
                    truncated: false,
                    offload: Offload::from_vnet_hdr(&vnet),
                }))
            }
            PortKind::Tap => {
                let room = &mut buf[HEADROOM..];
                // SAFETY: room is valid for writes of room.len() bytes.
                let n = unsafe { libc::read(fd, room.as_mut_ptr().cast(), room.len()) };
                if n < 0 {
                    return would_block(io::Error::last_os_error());
                }
                Ok(Some(RxFrame {
                    start: HEADROOM,
                    len: n as usize,
                    truncated: false,
                    offload: Offload::default(),
                }))
            }
            PortKind::Packet => recv_packet(fd, buf),
            PortKind::VhostUser => Ok(None),
        }
    }

    /// Writes one finished frame, given in pieces, to queue `queue` (modulo
    /// [`queues`](Self::queues)); a vhost-user port's guest sees it at once.
    pub fn send(&self, queue: usize, frame: &EgressFrame<'_>) -> io::Result<()> {
        self.send_with(queue, frame, &[0u8; VNET_HDR_LEN], &mut Held::default())
    }

    /// Writes one frame with the virtio-net header `vnet` (checksum and segmentation left to
    /// the kernel) to queue `queue` (modulo [`queues`](Self::queues)); only for a device that
    /// [takes offloads](Self::takes_offloads) unless the header is all zero. A vhost-user
    /// port's ring stays locked in `held`, and its guest sees the frame, when the batch lets
    /// go of it (see [`Held`]).
    pub fn send_with<'a>(
        &'a self,
        queue: usize,
        frame: &EgressFrame<'_>,
        vnet: &[u8; VNET_HDR_LEN],
        held: &mut Held<'a>,
    ) -> io::Result<()> {
        if let Some(v) = &self.vhost_user {
            return v.device().send(queue, frame, vnet, held);
        }
        let prefix: &[u8] = if self.vnet { &vnet[..] } else { &[] };
        let iov = frame_iovecs(prefix, frame);
        // SAFETY: every iovec points at a live buffer of its length; writev only reads them.
        let n = unsafe { libc::writev(self.fd(queue), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn recv_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<RxFrame>> {
    loop {
        match recv_packet_once(fd, buf)? {
            Received::Frame(f) => return Ok(Some(f)),
            Received::Nothing => return Ok(None),
            Received::Outgoing => continue,
        }
    }
}

fn recv_packet_once(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let room = &mut buf[HEADROOM..];
    let mut vnet = [0u8; VNET_HDR_LEN];
    let mut iov = [
        libc::iovec {
            iov_base: vnet.as_mut_ptr().cast(),
            iov_len: vnet.len(),
        },
        libc::iovec {
            iov_base: room.as_mut_ptr().cast(),
            iov_len: room.len(),
        },
    ];
    let mut cmsg_buf = [0u64; 16];
    // SAFETY: sockaddr_ll and msghdr are plain old data; all-zero is valid.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&cmsg_buf);
    // SAFETY: msg points at live buffers of the stated sizes for the whole call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        return Ok(would_block(io::Error::last_os_error())?.unwrap_or(Received::Nothing));
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(Received::Outgoing);
    }
    let len = (n as usize).saturating_sub(VNET_HDR_LEN);
    let truncated = len > room.len();
    let len = len.min(room.len());
    let offload = Offload::from_vnet_hdr(&vnet);
    let mut frame = RxFrame {
        start: HEADROOM,
        len,
        truncated,
        offload,
    };
    // SAFETY: msg's control buffer was filled by recvmsg; the CMSG macros walk it within
    // msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and within the control buffer.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_PACKET && hdr.cmsg_type == PACKET_AUXDATA {
            // SAFETY: a PACKET_AUXDATA message carries a tpacket_auxdata.
            let aux: libc::tpacket_auxdata =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            if aux.tp_status & TP_STATUS_VLAN_VALID != 0 && len >= 12 {
                let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    aux.tp_vlan_tpid
                } else {
                    0x8100
                };
                // Move the MAC addresses into the headroom and put the tag after them.
                buf.copy_within(HEADROOM..HEADROOM + 12, 0);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                frame.start = 0;
                frame.len = len + 4;
                frame.offload.shift(4);
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received::Frame(frame))
}

/// Opens a packet socket on interface `ifindex` as a port reads it: auxdata, virtio-net
/// headers, no outgoing frames, bound to the interface, promiscuous. With `drop_all` it first
/// gets a filter that drops every frame (for joining a fanout group without duplicates).
fn packet_socket(name: &str, ifindex: u32, drop_all: bool) -> Result<OwnedFd, PortError> {
    // Protocol 0 until bound, so no frame of another interface slips in before bind.
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(os("opening a packet socket for", name)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if drop_all {
        // `ret #0`: accept nothing.
        let mut drop = [libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: drop.as_mut_ptr(),
        };
        // prog points at a live one-instruction program; the kernel copies it.
        raw::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
        )
        .map_err(os("filtering a packet socket for", name))?;
    }
    setsockopt_int(&fd, PACKET_AUXDATA, 1).map_err(os("enabling auxdata on", name))?;
    setsockopt_int(&fd, PACKET_VNET_HDR, 1).map_err(os("enabling offload headers on", name))?;
    // Frames the host itself sends on the interface are not ours to switch. Older kernels
    // lack the option; then such frames are filtered by packet type on receive.
    let _ = setsockopt_int(&fd, PACKET_IGNORE_OUTGOING, 1);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(os("binding a packet socket to", name)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: packet_mreq is plain old data; all-zero is a valid value.
    let mut mreq: libc::packet_mreq = unsafe { mem::zeroed() };
    mreq.mr_ifindex = ifindex as i32;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    raw::setsockopt(
        fd.as_raw_fd(),
        libc::SOL_PACKET,
        libc::PACKET_ADD_MEMBERSHIP,
        &mreq,
    )
    .map_err(os("making promiscuous", name))?;
    Ok(fd)
}

/// Joins the bound packet socket `fd` to the `PACKET_FANOUT_HASH` group `group`, or, with
/// `None`, creates a group under an id the kernel picks (unused in the network namespace, so
/// it cannot collide with the group of another process on any interface) and returns its id.
fn join_fanout(fd: &OwnedFd, group: Option<u16>) -> io::Result<u16> {
    let value = match group {
        Some(id) => u32::from(id) | (PACKET_FANOUT_HASH << 16),
        None => (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16,
    };
    setsockopt_int(fd, PACKET_FANOUT, value as libc::c_int)?;
    if let Some(id) = group {
        return Ok(id);
    }
    // The option reads back as id | type << 16 | flags << 24.
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value is a live c_int and len its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_FANOUT,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value as u32 as u16)
}

/// The iovecs of `prefix` followed by the pieces of `frame`, for `writev`/`sendmsg`. They point
/// into `prefix` and `frame`, which must stay alive while the iovecs are used.
pub(crate) fn frame_iovecs(prefix: &[u8], frame: &EgressFrame<'_>) -> [libc::iovec; 4] {
    let tag: &[u8] = frame.tag.as_ref().map_or(&[], |t| &t[..]);
    [prefix, frame.addresses, tag, frame.rest].map(|b| libc::iovec {
        iov_base: b.as_ptr() as *mut _,
        iov_len: b.len(),
    })
}

enum Received {
    Frame(RxFrame),
    Nothing,
    /// A frame the host sent on the interface: not switched.
    Outgoing,
}

/// Where a received frame sits in the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame {
    pub start: usize,
    pub len: usize,
    /// The frame was longer than the buffer and was cut.
    pub truncated: bool,
    /// Work the sender left to offload.
    pub offload: Offload,
}

fn would_block<T>(e: io::Error) -> io::Result<Option<T>> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(None),
        io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

fn setsockopt_int(fd: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    raw::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, &value)
}

/// `TUNSETPERSIST` on a TAP descriptor.
fn set_persist(fd: &OwnedFd, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; fd is a TAP descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(persist)) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `TUNSETOFFLOAD` with `flags` on a TAP descriptor.
fn set_offload(fd: &OwnedFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; fd is a TAP descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("tap-c1"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        for bad in ["", "a/b", "a b", "a:1", ".", ".."] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }
}
