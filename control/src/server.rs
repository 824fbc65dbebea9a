//! The control socket's server side: many clients at once on the control thread's poll loop.
//!
//! Every connection has its own state (bytes read so far, the response still to write, a
//! deadline) and is served without blocking, so a client that is idle, slow or sends half a
//! request costs the others nothing, and the loop acts on signals at once whatever clients do.
//! Bounds: [`MAX_CONNECTIONS`] open at once (more are answered with an error and closed), a
//! request of at most [`MAX_REQUEST`] bytes that must arrive whole within
//! [`REQUEST_TIMEOUT`], and a response that the client must keep reading (no
//! [`REQUEST_TIMEOUT`] without progress). Requests are carried out one at a time, in the order
//! they complete, by the caller ([`Server::poll_requests`]): changes are serialized and each
//! is atomic, and a read-only request never waits behind a client's I/O.
//!
//! Access: root, or a member of `[switch] socket_group` (the peer's primary or supplementary
//! groups, from `SO_PEERCRED` and `SO_PEERGROUPS`), checked on every connection, besides the
//! socket file's mode (0600 root's, or 0660 with the group).
//!
//! Threads: the control thread owns the [`Server`].

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::api::{Response, MAX_REQUEST};

/// Most control connections open at once.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a client has to send its whole request, and to read on while its response is
/// written.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The first token of a connection (lower ones are the daemon's).
pub const FIRST_TOKEN: usize = 16;
const SO_PEERGROUPS: libc::c_int = 59;

/// Who may use the socket besides root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    /// Members of this group.
    pub group: Option<libc::gid_t>,
}

/// The peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (empty where the kernel cannot say).
    pub groups: Vec<u32>,
}

impl Peer {
    fn of(stream: &UnixStream) -> io::Result<Peer> {
        let fd = stream.as_raw_fd();
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: cred is a live ucred and len its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
        // SAFETY: groups is a live buffer of len bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc < 0 {
            groups.clear();
        } else {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
        }
        Ok(Peer {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            groups,
        })
    }

    /// Whether this peer may use the socket.
    pub fn allowed(&self, access: Access) -> bool {
        self.uid == 0
            || access
                .group
                .is_some_and(|g| self.gid == g || self.groups.contains(&g))
    }
}

/// Resolves a group name or number.
pub fn group_id(name: &str) -> Option<libc::gid_t> {
    if let Ok(n) = name.parse::<libc::gid_t>() {
        return Some(n);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: group is plain old data; all-zero is a valid value.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to a live buffer of the stated size; getgrnam_r fills group
    // and points result at it (or leaves it null).
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}

enum Phase {
    /// Reading the request line.
    Reading,
    /// Carried out by the caller; the response is being written.
    Writing { out: Vec<u8>, written: usize },
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    phase: Phase,
    deadline: Instant,
}

/// A request line read whole from connection `token`.
pub struct Incoming {
    pub token: Token,
    pub line: Vec<u8>,
}

/// The control socket server (see the module docs).
pub struct Server {
    listener: UnixListener,
    conns: HashMap<Token, Conn>,
    next: usize,
    access: Access,
    /// Connections refused (permission, too many), closed for a timeout or an oversized
    /// request, since start.
    pub refused: u64,
    pub timed_out: u64,
}

impl Server {
    pub fn new(listener: UnixListener, access: Access) -> Server {
        Server {
            listener,
            conns: HashMap::new(),
            next: FIRST_TOKEN,
            access,
            refused: 0,
            timed_out: 0,
        }
    }

    pub fn listener(&mut self) -> &mut UnixListener {
        &mut self.listener
    }

    pub fn set_access(&mut self, access: Access) {
        self.access = access;
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts every pending connection.
    pub fn accept(&mut self, registry: &Registry) -> io::Result<()> {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors and the like: the client sees its connection closed; the
                // daemon goes on.
                Err(e) => {
                    log::warn!("control socket: accept: {e}");
                    return Ok(());
                }
            };
            let refusal = if self.conns.len() >= MAX_CONNECTIONS {
                Some(format!(
                    "too many control connections ({MAX_CONNECTIONS} open); try again"
                ))
            } else {
                match Peer::of(&stream) {
                    Ok(peer) if peer.allowed(self.access) => None,
                    Ok(peer) => Some(format!(
                        "permission denied: uid {} (pid {}) is not root{}",
                        peer.uid,
                        peer.pid,
                        match self.access.group {
                            Some(g) => format!(" and not in the socket group (gid {g})"),
                            None => " (no [switch] socket_group is set)".into(),
                        }
                    )),
                    Err(e) => Some(format!("cannot read the peer's credentials: {e}")),
                }
            };
            if let Some(msg) = refusal {
                self.refused += 1;
                // One try, never blocking: the socket buffer takes a short line.
                let _ = stream.write_all(&line_of(&Response::error(msg)));
                continue;
            }
            let token = Token(self.next);
            self.next = self.next.checked_add(1).unwrap_or(FIRST_TOKEN);
            registry.register(&mut stream, token, Interest::READABLE)?;
            self.conns.insert(
                token,
                Conn {
                    stream,
                    buf: Vec::new(),
                    phase: Phase::Reading,
                    deadline: Instant::now() + REQUEST_TIMEOUT,
                },
            );
        }
    }

    /// Handles readiness of connection `token`: reads what has come (returning a request
    /// line once it is whole), or writes on.
    pub fn ready(&mut self, registry: &Registry, token: Token) -> Option<Incoming> {
        let conn = self.conns.get_mut(&token)?;
        match &mut conn.phase {
            Phase::Reading => match read_line(conn) {
                ReadOutcome::Pending => None,
                ReadOutcome::Line(line) => Some(Incoming { token, line }),
                ReadOutcome::TooLong => {
                    let msg = format!("bad request: longer than {MAX_REQUEST} bytes");
                    self.respond(registry, token, &Response::error(msg));
                    None
                }
                ReadOutcome::Closed => {
                    self.close(registry, token);
                    None
                }
            },
            Phase::Writing { .. } => {
                self.write_on(registry, token);
                None
            }
        }
    }

    /// Queues `response` for connection `token` and starts writing it; the connection closes
    /// once it is written.
    pub fn respond(&mut self, registry: &Registry, token: Token, response: &Response) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.phase = Phase::Writing {
            out: line_of(response),
            written: 0,
        };
        conn.deadline = Instant::now() + REQUEST_TIMEOUT;
        if registry
            .reregister(&mut conn.stream, token, Interest::WRITABLE)
            .is_err()
        {
            self.close(registry, token);
            return;
        }
        self.write_on(registry, token);
    }

    /// Writes `response` to connection `token` now, waiting at most `timeout` (for the last
    /// words of a daemon that is about to exit), and closes it.
    pub fn respond_now(
        &mut self,
        registry: &Registry,
        token: Token,
        response: &Response,
        timeout: Duration,
    ) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = registry.deregister(&mut conn.stream);
        let out = line_of(response);
        let deadline = Instant::now() + timeout;
        let mut written = 0;
        while written < out.len() && Instant::now() < deadline {
            match conn.stream.write(&out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn write_on(&mut self, registry: &Registry, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Phase::Writing { out, written } = &mut conn.phase else {
            return;
        };
        loop {
            if *written == out.len() {
                self.close(registry, token);
                return;
            }
            match conn.stream.write(&out[*written..]) {
                Ok(0) => break,
                Ok(n) => {
                    *written += n;
                    conn.deadline = Instant::now() + REQUEST_TIMEOUT;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(registry, token);
    }

    /// Takes connection `token` out of the server (for a takeover, served apart): a
    /// blocking stream.
    pub fn take(
        &mut self,
        registry: &Registry,
        token: Token,
    ) -> Option<std::os::unix::net::UnixStream> {
        let mut conn = self.conns.remove(&token)?;
        let _ = registry.deregister(&mut conn.stream);
        let fd: std::os::fd::OwnedFd = conn.stream.into();
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(false).ok()?;
        Some(stream)
    }

    fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// Closes the connections whose deadline passed; returns when the next one falls due.
    pub fn expire(&mut self, registry: &Registry, now: Instant) -> Option<Instant> {
        let expired: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            let reading = self
                .conns
                .get(&token)
                .is_some_and(|c| matches!(c.phase, Phase::Reading));
            self.timed_out += 1;
            if reading {
                let secs = REQUEST_TIMEOUT.as_secs();
                let msg = format!("timed out: no whole request line within {secs} s");
                log::debug!("control connection: {msg}");
                // Tell the client why, if its socket takes it; never wait for it.
                if let Some(conn) = self.conns.get_mut(&token) {
                    let _ = conn.stream.write(&line_of(&Response::error(msg)));
                }
            }
            self.close(registry, token);
        }
        self.conns.values().map(|c| c.deadline).min()
    }
}

enum ReadOutcome {
    Pending,
    Line(Vec<u8>),
    TooLong,
    Closed,
}

fn read_line(conn: &mut Conn) -> ReadOutcome {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = conn.buf.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut conn.buf);
            line.truncate(end);
            return ReadOutcome::Line(line);
        }
        if conn.buf.len() > MAX_REQUEST {
            return ReadOutcome::TooLong;
        }
        match conn.stream.read(&mut chunk) {
            // The client closed its side: a last line without a newline is still a request.
            Ok(0) if !conn.buf.is_empty() => {
                return ReadOutcome::Line(std::mem::take(&mut conn.buf))
            }
            Ok(0) => return ReadOutcome::Closed,
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
}

fn line_of(response: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_is_root_or_the_group() {
        let peer = |uid, gid, groups: &[u32]| Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let none = Access::default();
        let g = Access { group: Some(1234) };
        assert!(peer(0, 0, &[]).allowed(none));
        assert!(!peer(1000, 1234, &[]).allowed(none));
        assert!(peer(1000, 1234, &[]).allowed(g));
        assert!(peer(1000, 100, &[5, 1234]).allowed(g));
        assert!(!peer(1000, 100, &[5]).allowed(g));
    }

    #[test]
    fn groups_resolve_by_name_and_number() {
        assert_eq!(group_id("0"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-here"), None);
    }
}
