//! The vhost-user protocol side of a port: its thread, and what each message does.
//!
//! The thread ([`run`]) waits for a frontend (accepts on the listening socket, or connects and
//! retries every [`RETRY`] while nobody listens), serves its messages one at a time with the
//! `vhost` crate's `BackendReqHandler` (which reads, checks and answers them and passes the
//! eventfds and memory fds) until the connection closes, then resets the port
//! ([`Device::disconnect`]) and waits for the next one: a VM restarted, or tapswitch's
//! client reconnecting to a restarted QEMU. Each connection gets a fresh [`Connection`], so
//! nothing negotiated with one frontend leaks into the next. The thread polls its stop eventfd
//! beside the socket and leaves when it is written.
//!
//! This runs on its own thread, not on the control thread: a message is read whole with a
//! blocking read, so a slow frontend would stall whatever else the thread did.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};

use super::features::{self, F_PROTOCOL_FEATURES, RING_F_EVENT_IDX};
use super::vring::MAX_QUEUE_SIZE;
use super::Device;

/// How long a client-mode port waits before connecting again.
pub const RETRY: Duration = Duration::from_millis(500);

/// Where the frontend comes from.
pub enum Endpoint {
    /// Server mode: accept on it.
    Listen(UnixListener),
    /// Client mode: connect to it.
    Connect(PathBuf),
}

/// The protocol thread of a port: until `stop` is written, wait for a frontend, serve it,
/// reset the port when it goes.
pub fn run(device: Arc<Device>, endpoint: Endpoint, stop: OwnedFd) {
    let stop = stop.as_raw_fd();
    loop {
        let stream = match &endpoint {
            Endpoint::Listen(listener) => {
                match wait_readable(listener.as_raw_fd(), stop, None) {
                    Wait::Stop => return,
                    Wait::Timeout => continue,
                    Wait::Ready => {}
                }
                match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) => {
                        log::warn!("port {}: accept failed: {e}", device.name);
                        std::thread::sleep(RETRY);
                        continue;
                    }
                }
            }
            Endpoint::Connect(path) => match UnixStream::connect(path) {
                Ok(s) => s,
                Err(_) => match wait_readable(stop, stop, Some(RETRY)) {
                    Wait::Timeout => continue,
                    _ => return,
                },
            },
        };
        device.counters.connections.fetch_add(1, Ordering::Relaxed);
        log::info!("port {}: vhost-user frontend connected", device.name);
        let stopped = serve(&device, stream, stop);
        device.disconnect();
        *device
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        if stopped {
            return;
        }
    }
}

/// Serves one frontend until it goes (false) or the port is stopped (true).
fn serve(device: &Arc<Device>, stream: UnixStream, stop: RawFd) -> bool {
    if let Ok(clone) = stream.try_clone() {
        *device
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(clone);
    }
    let connection = Arc::new(Mutex::new(Connection::new(Arc::clone(device))));
    let mut handler = BackendReqHandler::from_stream(stream, connection);
    loop {
        match wait_readable(handler.as_raw_fd(), stop, None) {
            Wait::Stop => return true,
            Wait::Timeout => continue,
            Wait::Ready => {}
        }
        match handler.handle_request() {
            Ok(()) => {}
            Err(
                e @ (VuError::Disconnected
                | VuError::PartialMessage
                | VuError::SocketBroken(_)
                | VuError::SocketError(_)),
            ) => {
                log::info!(
                    "port {}: vhost-user frontend gone ({e}); waiting for the next",
                    device.name
                );
                return false;
            }
            // The handler answered it (a failed request, with REPLY_ACK); go on.
            Err(e) => log::warn!("port {}: vhost-user request failed: {e}", device.name),
        }
    }
}

enum Wait {
    Ready,
    Stop,
    Timeout,
}

/// Waits until `fd` is readable or `stop` is written (or `timeout`).
fn wait_readable(fd: RawFd, stop: RawFd, timeout: Option<Duration>) -> Wait {
    let mut fds = [
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| t.as_millis() as libc::c_int);
    // SAFETY: fds is a live array of two pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if n <= 0 {
        return Wait::Timeout;
    }
    if fds[0].revents != 0 {
        Wait::Stop
    } else {
        Wait::Ready
    }
}

/// Where the frontend's memory regions are in its own address space (vring addresses come as
/// frontend addresses).
struct Mapping {
    user_addr: u64,
    size: u64,
    gpa: u64,
}

/// The protocol state of one connection.
struct Connection {
    device: Arc<Device>,
    owned: bool,
    mappings: Vec<Mapping>,
    /// Vrings that got a `SET_VRING_ENABLE` that reached us.
    enable_seen: Vec<bool>,
}

impl Connection {
    fn new(device: Arc<Device>) -> Connection {
        Connection {
            owned: false,
            enable_seen: vec![false; device.vrings.len()],
            mappings: Vec::new(),
            device,
        }
    }

    fn index(&self, index: u32) -> VuResult<usize> {
        let index = index as usize;
        if index < self.device.vrings.len() {
            Ok(index)
        } else {
            Err(VuError::InvalidParam)
        }
    }

    fn to_gpa(&self, addr: u64) -> VuResult<u64> {
        self.mappings
            .iter()
            .find(|m| addr >= m.user_addr && addr - m.user_addr < m.size)
            .map(|m| (addr - m.user_addr).wrapping_add(m.gpa))
            .ok_or(VuError::InvalidParam)
    }

    /// Starts a ring that has its kick (addresses come before it), and polls it if enabled.
    fn start(&self, index: usize) {
        let mut vring = self.device.vring(index);
        if !vring.started && vring.kick.is_some() {
            vring.started = true;
            vring.queue.set_ready(true);
            if index % 2 == 0 {
                // An RX ring: buffers are taken when a frame comes; no kicks wanted.
                let mem = self.device.mem.memory();
                let _ = vring.queue.disable_notification(&*mem);
            }
        }
        self.device.update_polling(index, &mut vring);
    }
}

fn unsupported<T>() -> VuResult<T> {
    Err(VuError::InvalidOperation("not supported"))
}

impl VhostUserBackendReqHandlerMut for Connection {
    fn set_owner(&mut self) -> VuResult<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.owned = false;
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.device.disconnect();
        self.device.connected.store(true, Ordering::Release);
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(features::OFFERED)
    }

    fn set_features(&mut self, acked: u64) -> VuResult<()> {
        if acked & !features::OFFERED != 0 {
            return Err(VuError::InvalidParam);
        }
        let event_idx = acked & RING_F_EVENT_IDX != 0;
        for index in 0..self.device.vrings.len() {
            let mut vring = self.device.vring(index);
            vring.queue.set_event_idx(event_idx);
            // Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled from the start. With
            // it they start disabled until SET_VRING_ENABLE; but QEMU 7.2 sends that before
            // SET_FEATURES, and the message layer refuses it then (the feature is not yet
            // acknowledged), so a ring whose enable never reached us is enabled here, as DPDK's
            // vhost library (which does not check) would have it.
            if acked & F_PROTOCOL_FEATURES == 0 || !self.enable_seen[index] {
                vring.enabled = true;
                self.device.update_polling(index, &mut vring);
            }
        }
        self.device.features.store(acked, Ordering::Release);
        self.device.connected.store(true, Ordering::Release);
        log::info!(
            "port {}: vhost-user features {acked:#x} ({})",
            self.device.name,
            features::names(acked).join(" ")
        );
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let mut mapped = Vec::with_capacity(regions.len());
        let mut mappings = Vec::with_capacity(regions.len());
        for (region, file) in regions.iter().zip(files) {
            let gpa = region.guest_phys_addr;
            let r = GuestRegionMmap::new(region.mmap_region(file)?, GuestAddress(gpa))
                .ok_or(VuError::InvalidParam)?;
            mapped.push(r);
            mappings.push(Mapping {
                user_addr: region.user_addr,
                size: region.memory_size,
                gpa,
            });
        }
        let mem = GuestMemoryMmap::from_regions(mapped)
            .map_err(|e| VuError::ReqHandlerError(io::Error::other(e)))?;
        // A worker inside a frame keeps the old table until it lets go of it.
        self.device
            .mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(mem);
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let index = self.index(index)?;
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        self.device.vring(index).queue.set_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let index = self.index(index)?;
        let (d, u, a) = (
            self.to_gpa(descriptor)?,
            self.to_gpa(used)?,
            self.to_gpa(available)?,
        );
        let mut vring = self.device.vring(index);
        let q = &mut vring.queue;
        q.try_set_desc_table_address(GuestAddress(d))
            .map_err(|_| VuError::InvalidParam)?;
        q.try_set_avail_ring_address(GuestAddress(a))
            .map_err(|_| VuError::InvalidParam)?;
        q.try_set_used_ring_address(GuestAddress(u))
            .map_err(|_| VuError::InvalidParam)?;
        // The used index as the driver has it (a restarted guest starts at 0).
        let mem = self.device.mem.memory();
        if let Ok(idx) = q.used_idx(&*mem, Ordering::Acquire) {
            q.set_next_used(idx.0);
        }
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let index = self.index(index)?;
        self.device.vring(index).queue.set_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let i = self.index(index)?;
        // Holding the lock: no worker is inside the ring.
        let mut vring = self.device.vring(i);
        // Nothing is left unpublished: a worker publishes what it wrote when it lets go of the
        // ring (`hold`), before this lock could be taken.
        vring.started = false;
        vring.queue.set_ready(false);
        self.device.update_polling(i, &mut vring);
        let next = vring.queue.next_avail();
        vring.kick = None;
        vring.call = None;
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let index = self.index(u32::from(index))?;
        {
            let mut vring = self.device.vring(index);
            // The old kick leaves the epoll set before it is closed.
            vring.started = false;
            self.device.update_polling(index, &mut vring);
            vring.kick = fd;
        }
        self.start(index);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let index = self.index(u32::from(index))?;
        self.device.vring(index).call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK)
    }

    fn set_protocol_features(&mut self, _features: u64) -> VuResult<()> {
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.device.pairs() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let index = self.index(index)?;
        self.enable_seen[index] = true;
        let mut vring = self.device.vring(index);
        vring.enabled = enable;
        self.device.update_polling(index, &mut vring);
        Ok(())
    }

    fn get_config(&mut self, _o: u32, _s: u32, _f: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        unsupported()
    }

    fn set_config(&mut self, _o: u32, _b: &[u8], _f: VhostUserConfigFlags) -> VuResult<()> {
        unsupported()
    }

    fn set_gpu_socket(&mut self, _g: GpuBackend) -> VuResult<()> {
        unsupported()
    }

    fn get_shared_object(&mut self, _u: VhostUserSharedMsg) -> VuResult<File> {
        unsupported()
    }

    fn get_inflight_fd(&mut self, _i: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        unsupported()
    }

    fn set_inflight_fd(&mut self, _i: &VhostUserInflight, _f: File) -> VuResult<()> {
        unsupported()
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        unsupported()
    }

    fn add_mem_region(
        &mut self,
        _r: &VhostUserSingleMemoryRegion,
        _f: File,
        _p: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        unsupported()
    }

    fn remove_mem_region(&mut self, _r: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        unsupported()
    }

    fn set_device_state_fd(
        &mut self,
        _d: VhostTransferStateDirection,
        _p: VhostTransferStatePhase,
        _f: File,
    ) -> VuResult<Option<File>> {
        unsupported()
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        unsupported()
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        unsupported()
    }

    fn set_log_base(&mut self, _l: &VhostUserLog, _f: File) -> VuResult<()> {
        unsupported()
    }
}
