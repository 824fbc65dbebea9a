//! Upgrade in place: `tapswitch run --takeover` replaces a running tapswitch without closing
//! what its workloads use, the way Envoy and HAProxy hand over their listeners.
//!
//! 1. The new process connects to the control socket and sends `{"cmd":"takeover"}`.
//! 2. The old one pauses its workers (they stop reading; frames wait in the TAP queues),
//!    saves a checkpoint, and answers with a header line (its state directory, each TAP
//!    port's name, queue count and offloads) followed by descriptors passed with
//!    `SCM_RIGHTS`: the state directory's lock, the control socket's listener, then every
//!    TAP's queues in header order.
//! 3. The new process starts from the state directory (the running configuration merged with
//!    its file, the checkpoint), taking the handed queues instead of opening new ones, and
//!    confirms with `{"ok":true}`; the old one then exits without touching any device or file.
//!    If the new one fails or goes away before confirming, the old one resumes as it was.
//!
//! Attached interfaces, VXLAN and IPIP sockets are opened anew by the new process (frames
//! they receive in the few milliseconds of the switch-over may be lost; TAP frames wait).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{Request, Response};
use crate::switch::Switch;

/// Most descriptors in one message (the kernel's `SCM_MAX_FD` is 253).
const FDS_PER_MESSAGE: usize = 250;
/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A TAP's queues as handed over.
#[derive(Debug)]
pub struct HandedTap {
    pub queues: Vec<OwnedFd>,
    /// The queues were opened with the virtio-net header and offloads.
    pub offload: bool,
    /// UDP segmentation offload is on.
    pub uso: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeaderPort {
    name: String,
    queues: usize,
    offload: bool,
    uso: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    state_dir: PathBuf,
    ports: Vec<HeaderPort>,
    /// Descriptors that follow: lock, listener, then the ports' queues.
    fds: usize,
}

/// What the new process received.
pub struct Handed {
    pub state_dir: PathBuf,
    pub lock: File,
    pub listener: UnixListener,
    pub taps: HashMap<String, HandedTap>,
    /// Where to confirm (or refuse).
    stream: UnixStream,
}

impl Handed {
    /// Tells the old process that the new one runs (it exits), or why it does not (it
    /// resumes).
    pub fn confirm(&mut self, result: Result<(), String>) {
        let response = match result {
            Ok(()) => Response::ok(()),
            Err(e) => Response::error(e),
        };
        let mut line = serde_json::to_vec(&response).unwrap_or_default();
        line.push(b'\n');
        let _ = self.stream.write_all(&line);
    }
}

/// The old side: hands the running switch over on `stream` (a client that asked for a
/// takeover). `Ok` once the new process confirmed (the caller exits without cleaning up);
/// `Err` with the reason after the switch resumed as it was.
pub fn hand_over(switch: &mut Switch, stream: UnixStream, listener: RawFd) -> Result<(), String> {
    let result = hand_over_paused(switch, &stream, listener);
    if result.is_err() {
        if let Err(e) = switch.resume() {
            log::error!("takeover: resuming: {e}");
        }
    }
    result
}

fn hand_over_paused(
    switch: &mut Switch,
    stream: &UnixStream,
    listener: RawFd,
) -> Result<(), String> {
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let Some(store) = switch.store() else {
        return Err("this switch keeps no state to hand over".into());
    };
    let state_dir = store.dir().to_path_buf();
    let lock = store.lock_file().as_raw_fd();
    switch.pause().map_err(|e| format!("pausing: {e}"))?;
    switch
        .checkpoint()
        .map_err(|e| format!("saving the checkpoint: {e}"))?;
    let taps = switch.tap_queues();
    let mut fds = vec![lock, listener];
    let mut ports = Vec::new();
    for (name, queues, offload, uso) in &taps {
        fds.extend(queues);
        ports.push(HeaderPort {
            name: name.clone(),
            queues: queues.len(),
            offload: *offload,
            uso: *uso,
        });
    }
    let header = Header {
        state_dir,
        ports,
        fds: fds.len(),
    };
    let mut line = serde_json::to_vec(&Response::ok(&header)).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let send = |e: io::Error| format!("sending to the new process: {e}");
    (&*stream).write_all(&line).map_err(send)?;
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        send_fds(stream, chunk).map_err(send)?;
    }
    // The new process starts, then confirms.
    let mut answer = Vec::new();
    let mut fds_back = Vec::new();
    read_line(stream, &mut answer, &mut fds_back)
        .map_err(|e| format!("the new process did not confirm: {e}"))?;
    let response: Response = serde_json::from_slice(&answer)
        .map_err(|e| format!("the new process answered garbage: {e}"))?;
    if response.ok {
        Ok(())
    } else {
        Err(format!(
            "the new process did not start: {}",
            response.error.unwrap_or_default()
        ))
    }
}

/// The new side: asks the switch at `socket` to hand over, and takes what it hands.
pub fn take_over(socket: &Path) -> Result<Handed, String> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the running tapswitch at {}: {e}",
            socket.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let mut line = serde_json::to_vec(&Request::Takeover).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| format!("asking for a takeover: {e}"))?;
    let mut head = Vec::new();
    let mut fds = Vec::new();
    read_line(&stream, &mut head, &mut fds).map_err(|e| format!("reading the handover: {e}"))?;
    let response: Response =
        serde_json::from_slice(&head).map_err(|e| format!("a bad handover header: {e}"))?;
    if !response.ok {
        return Err(format!(
            "the running tapswitch refused: {}",
            response.error.unwrap_or_default()
        ));
    }
    let header: Header = serde_json::from_value(response.data.unwrap_or_default())
        .map_err(|e| format!("a bad handover header: {e}"))?;
    let mut byte = [0u8; 1];
    while fds.len() < header.fds {
        let (n, got) = recv_fds(&stream, &mut byte).map_err(|e| format!("receiving: {e}"))?;
        if n == 0 && got.is_empty() {
            return Err(format!(
                "the running tapswitch handed {} of {} descriptors",
                fds.len(),
                header.fds
            ));
        }
        fds.extend(got);
    }
    if fds.len() != header.fds {
        return Err("more descriptors than announced".into());
    }
    let mut fds = fds.into_iter();
    let (Some(lock), Some(listener)) = (fds.next(), fds.next()) else {
        return Err("no lock or listener handed over".into());
    };
    let mut taps = HashMap::new();
    for p in header.ports {
        let queues: Vec<OwnedFd> = fds.by_ref().take(p.queues).collect();
        taps.insert(
            p.name,
            HandedTap {
                queues,
                offload: p.offload,
                uso: p.uso,
            },
        );
    }
    Ok(Handed {
        state_dir: header.state_dir,
        lock: File::from(lock),
        listener: UnixListener::from(listener),
        taps,
        stream,
    })
}

/// Reads up to a newline, keeping any descriptors that come along.
fn read_line(stream: &UnixStream, line: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut byte = [0u8; 1];
    loop {
        let (n, got) = recv_fds(stream, &mut byte)?;
        fds.extend(got);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a whole line",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(());
        }
        line.push(byte[0]);
        if line.len() > crate::api::MAX_REQUEST {
            return Err(io::Error::other("line too long"));
        }
    }
}

/// Sends one byte with `fds` attached.
fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let byte = [b'F'];
    let iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut _,
        iov_len: 1,
    };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &iov as *const libc::iovec as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer has room for one header with `payload` bytes of data, so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA points inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
    }
    // SAFETY: msg points at live buffers for the whole call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives into `buf`, with any descriptors attached (close-on-exec).
fn recv_fds(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((253 * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at live buffers for the whole call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the control buffer was filled by recvmsg; the CMSG macros walk it within
    // msg_controllen, and an SCM_RIGHTS message carries descriptors now owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd: RawFd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off"));
    }
    Ok((n as usize, fds))
}
