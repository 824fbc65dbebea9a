//! Containers for demos and tests: named network namespaces that remove themselves, and
//! traffic probes that run inside them.
//!
//! The probes open their sockets inside a namespace (via
//! [`netns::run_in`](tapswitch_dataplane::io::netns::run_in)) and then use them from ordinary
//! threads, so they need nothing but the kernel: no ping, iperf or netcat binaries. The peer is
//! always the kernel's own stack (it answers ARP, ICMP echo, TCP).

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tapswitch_dataplane::io::vhost_user::Held;
use tapswitch_dataplane::io::{netns, raw};
use tapswitch_dataplane::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, Ipv4Packet};

/// Runs `ip ARGS`; the error carries what `ip` printed.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e} (is iproute2 installed?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A named network namespace (as `ip netns add` makes it), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn create(name: &str) -> Result<Netns, String> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds an address (`10.0.0.1/24`, `fd00::1/64`) to `dev`. IPv6 addresses skip duplicate
    /// address detection so they are usable at once.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<(), String> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])?;
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])?;
        }
        Ok(())
    }

    /// Runs `f` inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        netns::run_in(Some(&self.name), f)
    }

    /// The MAC the kernel resolved for `addr` in this namespace (ARP/ND), if any.
    pub fn neighbour(&self, addr: &str) -> Option<String> {
        let out = self.ip(&["neigh", "show", addr]).ok()?;
        let mut words = out.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// The outcome of [`ping`].
#[derive(Debug, Clone, Default)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    pub rtts: Vec<Duration>,
}

impl PingResult {
    pub fn avg_rtt(&self) -> Option<Duration> {
        let n = self.rtts.len() as u32;
        (n > 0).then(|| self.rtts.iter().sum::<Duration>() / n)
    }
}

/// Sends `count` ICMP (or ICMPv6) echo requests from namespace `from` to `dst`, one every
/// `interval`, waiting up to `timeout` for each reply. Resolving `dst` first (ARP or ND) is
/// the kernel's job, as with any ping.
pub fn ping(
    from: &Netns,
    dst: IpAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> io::Result<PingResult> {
    let (domain, protocol) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let sock = from.run(|| Socket::new(domain, Type::RAW, Some(protocol)))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let ident = (std::process::id() as u16) ^ 0x5a5a;
    let target: SocketAddr = (dst, 0).into();
    let mut result = PingResult::default();
    let mut rx = [MaybeUninit::<u8>::uninit(); 2048];
    for seq in 0..count as u16 {
        let request = echo_request(dst, ident, seq);
        let sent_at = Instant::now();
        sock.send_to(&request, &target.into())?;
        result.sent += 1;
        let deadline = sent_at + timeout;
        while Instant::now() < deadline {
            let (n, from_addr) = match sock.recv_from(&mut rx) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            // SAFETY: recv_from initialised the first n bytes.
            let bytes: &[u8] = unsafe { std::slice::from_raw_parts(rx.as_ptr().cast(), n) };
            let from_ip = from_addr.as_socket().map(|a| a.ip());
            if from_ip == Some(dst) && is_echo_reply(bytes, dst, ident, seq) {
                result.received += 1;
                result.rtts.push(sent_at.elapsed());
                break;
            }
        }
        if seq as u32 + 1 < count {
            std::thread::sleep(interval.saturating_sub(sent_at.elapsed()));
        }
    }
    Ok(result)
}

const PING_DATA: usize = 56;

fn echo_request(dst: IpAddr, ident: u16, seq_no: u16) -> Vec<u8> {
    match dst {
        IpAddr::V4(_) => {
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data_len: PING_DATA,
            };
            let mut buf = vec![0x42u8; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
            buf
        }
        IpAddr::V6(dst) => {
            // The kernel fills in the ICMPv6 checksum of a raw socket with the real source.
            let repr = Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data_len: PING_DATA,
            };
            let mut buf = vec![0x42u8; repr.buffer_len()];
            repr.emit(
                &Ipv6Addr::UNSPECIFIED,
                &dst,
                &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
            );
            buf
        }
    }
}

/// Whether `bytes` (an IPv4 packet, or an ICMPv6 message: raw ICMPv6 sockets strip the IP
/// header) is the echo reply for (`ident`, `seq`).
fn is_echo_reply(bytes: &[u8], from: IpAddr, ident: u16, seq: u16) -> bool {
    match from {
        IpAddr::V4(from) => {
            let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
                return false;
            };
            if ip.src_addr() != from {
                return false;
            }
            let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
                return false;
            };
            matches!(
                Icmpv4Repr::parse(&icmp),
                Ok(Icmpv4Repr::EchoReply { ident: i, seq_no: s, .. }) if i == ident && s == seq
            )
        }
        IpAddr::V6(_) => {
            let Ok(icmp) = Icmpv6Packet::new_checked(bytes) else {
                return false;
            };
            matches!(
                Icmpv6Repr::parse(&icmp),
                Ok(Icmpv6Repr::EchoReply { ident: i, seq_no: s, .. }) if i == ident && s == seq
            )
        }
    }
}

/// The bytes of a transfer: a deterministic pseudo-random stream (xorshift64), so the
/// receiver can check every byte without keeping a copy. `fill` continues the stream across
/// calls of any length.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// The outcome of [`tcp_transfer`].
#[derive(Debug, Clone)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    pub fn mbit_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Sends `bytes` over TCP from namespace `client` to a listener on `server_ip` in `server`,
/// and checks on the receiving side that every byte arrived intact and in order.
pub fn tcp_transfer(
    server: &Netns,
    server_ip: IpAddr,
    client: &Netns,
    bytes: u64,
    timeout: Duration,
) -> io::Result<Transfer> {
    let seed = 0x9e37_79b9_7f4a_7c15 ^ bytes;
    let listener = server.run(|| TcpListener::bind((server_ip, 0)))?;
    let port = listener.local_addr()?.port();
    let receiver = std::thread::spawn(move || -> io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(timeout))?;
        let mut expect = Pattern::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut want = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            expect.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TCP stream corrupted near byte {total}"),
                ));
            }
            total += n as u64;
        }
    });
    let start = Instant::now();
    let addr = SocketAddr::from((server_ip, port));
    let mut conn = client.run(|| TcpStream::connect_timeout(&addr, timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        conn.write_all(&buf[..n])?;
        left -= n as u64;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let received = receiver
        .join()
        .map_err(|_| io::Error::other("receiver thread panicked"))??;
    if received != bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sent {bytes} bytes, received {received}"),
        ));
    }
    Ok(Transfer {
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Sends `count` UDP datagrams of `size` bytes from `client` to an echo responder on
/// `server_ip` in `server`; returns how many came back intact.
pub fn udp_echo(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    count: u32,
    size: usize,
) -> io::Result<u32> {
    let srv = server.run(|| UdpSocket::bind((server_ip, 0)))?;
    let srv_addr = srv.local_addr()?;
    srv.set_read_timeout(Some(Duration::from_secs(2)))?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        for _ in 0..count {
            match srv.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = srv.send_to(&buf[..n], from);
                }
                Err(_) => break,
            }
        }
    });
    let cli = client.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    cli.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut ok = 0;
    let mut buf = vec![0u8; size.max(1)];
    let mut back = vec![0u8; 65536];
    for i in 0..count {
        buf.fill(i as u8);
        cli.send_to(&buf, srv_addr)?;
        if let Ok(n) = cli.recv(&mut back) {
            if back[..n] == buf[..] {
                ok += 1;
            }
        }
    }
    let _ = echo.join();
    Ok(ok)
}

/// The outcome of [`udp_order`], for each direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpOrder {
    pub sent: u64,
    /// Datagrams that reached the server.
    pub received: u64,
    /// Datagrams that reached the server after one of their flow with a higher number.
    pub reordered: u64,
    /// Echoes that came back to the client.
    pub echoed: u64,
    /// Echoes that came back after an echo of their flow with a higher number.
    pub echoes_reordered: u64,
}

/// Sends `count` numbered datagrams on each of `flows` UDP flows (one socket, so one source
/// port, per flow), interleaved and as fast as the sockets take them, from `client` to a
/// server on `server_ip` in `server`, which echoes each back. Counts, per direction, what
/// arrived and what arrived out of order within its flow. Losses are counted, not errors.
pub fn udp_order(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    flows: u16,
    count: u32,
) -> io::Result<UdpOrder> {
    fn record(last: &mut [Option<u32>], buf: &[u8], got: &mut u64, late: &mut u64) {
        if buf.len() < 6 {
            return;
        }
        let flow = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
        let seq = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
        let Some(l) = last.get_mut(flow) else {
            return;
        };
        *got += 1;
        match *l {
            Some(prev) if seq <= prev => *late += 1,
            _ => *l = Some(seq),
        }
    }
    let srv = server.run(|| UdpSocket::bind((server_ip, 0)))?;
    let srv_addr = srv.local_addr()?;
    srv.set_read_timeout(Some(Duration::from_secs(1)))?;
    let echo = std::thread::spawn(move || {
        let mut last = vec![None; usize::from(flows)];
        let (mut got, mut late) = (0, 0);
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = srv.recv_from(&mut buf) {
            record(&mut last, &buf[..n], &mut got, &mut late);
            let _ = srv.send_to(&buf[..n], from);
        }
        (got, late)
    });
    let socks = (0..flows)
        .map(|_| {
            let s = client.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut out = UdpOrder::default();
    let mut last = vec![None; usize::from(flows)];
    let mut buf = [0u8; 64];
    let mut back = [0u8; 2048];
    let mut drain = |out: &mut UdpOrder, last: &mut Vec<Option<u32>>| {
        for s in &socks {
            while let Ok(n) = s.recv(&mut back) {
                record(last, &back[..n], &mut out.echoed, &mut out.echoes_reordered);
            }
        }
    };
    for seq in 0..count {
        for (flow, s) in socks.iter().enumerate() {
            buf[..2].copy_from_slice(&(flow as u16).to_be_bytes());
            buf[2..6].copy_from_slice(&seq.to_be_bytes());
            match s.send_to(&buf, srv_addr) {
                Ok(_) => out.sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        drain(&mut out, &mut last);
    }
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        drain(&mut out, &mut last);
        std::thread::sleep(Duration::from_millis(10));
    }
    let (got, late) = echo
        .join()
        .map_err(|_| io::Error::other("echo thread panicked"))?;
    out.received = got;
    out.reordered = late;
    Ok(out)
}

/// The outcome of [`udp_segmented`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpSegmented {
    /// Datagrams the client's sends carried.
    pub sent: u64,
    /// Datagrams that arrived whole and right (length and contents).
    pub received: u64,
    /// Datagrams that arrived wrong.
    pub bad: u64,
}

/// Sends `sends` messages of `per_send` datagrams of `size` bytes each from `client` to a
/// server on `server_ip` in `server`, with UDP segmentation offload (`UDP_SEGMENT`: the
/// client's kernel makes one super-packet of each message and cuts it only where it must).
/// The server checks every datagram: `size` bytes, numbered, filled with its number.
pub fn udp_segmented(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    size: u16,
    per_send: usize,
    sends: usize,
) -> io::Result<UdpSegmented> {
    let srv = server.run(|| UdpSocket::bind((server_ip, 0)))?;
    let srv_addr = srv.local_addr()?;
    raw::set_rcvbuf(std::os::fd::AsRawFd::as_raw_fd(&srv), 16 << 20);
    srv.set_read_timeout(Some(Duration::from_millis(500)))?;
    let want = (per_send * sends) as u64;
    let receiver = std::thread::spawn(move || {
        let mut out = UdpSegmented::default();
        let mut buf = vec![0u8; 65536];
        while out.received + out.bad < want {
            let Ok(n) = srv.recv(&mut buf) else {
                break;
            };
            let d = &buf[..n];
            let ok = n == usize::from(size) && n >= 4 && {
                let k = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                d[4..].iter().all(|&b| b == k as u8)
            };
            if ok {
                out.received += 1;
            } else {
                out.bad += 1;
            }
        }
        out
    });
    let cli = client.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    const UDP_SEGMENT: libc::c_int = 103;
    raw::setsockopt(
        std::os::fd::AsRawFd::as_raw_fd(&cli),
        libc::SOL_UDP,
        UDP_SEGMENT,
        &libc::c_int::from(size),
    )?;
    let mut msg = vec![0u8; usize::from(size) * per_send];
    let mut sent = 0u64;
    for s in 0..sends {
        for (i, d) in msg.chunks_mut(usize::from(size)).enumerate() {
            let k = (s * per_send + i) as u32;
            d.fill(k as u8);
            d[..4].copy_from_slice(&k.to_be_bytes());
        }
        cli.send_to(&msg, srv_addr)?;
        sent += per_send as u64;
        if s % 16 == 15 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut out = receiver
        .join()
        .map_err(|_| io::Error::other("receiver thread panicked"))?;
    out.sent = sent;
    Ok(out)
}

/// A raw view of one interface inside a namespace: send any frame out of it, see every frame
/// that arrives on it (VLAN tags included). Built on the dataplane's own AF_PACKET port.
pub struct RawPort {
    device: tapswitch_dataplane::io::PortDevice,
    buf: Vec<u8>,
}

impl RawPort {
    pub fn open(ns: &Netns, dev: &str) -> io::Result<RawPort> {
        let device = tapswitch_dataplane::io::PortDevice::attach(dev, Some(ns.name()), None)
            .map_err(io::Error::other)?;
        let buf = vec![
            0u8;
            tapswitch_dataplane::io::port::HEADROOM
                + tapswitch_dataplane::io::port::MAX_FRAME
        ];
        Ok(RawPort { device, buf })
    }

    /// Sends `frame` as it is, however malformed.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let (addresses, rest) = frame.split_at(frame.len().min(12));
        let frame = tapswitch_dataplane::pipeline::EgressFrame {
            addresses,
            tag: None,
            rest,
        };
        self.device.send(0, &frame)
    }

    /// Every frame that arrives within `wait`.
    pub fn recv_for(&mut self, wait: Duration) -> io::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        while Instant::now() < deadline {
            let mut held = Held::default();
            match self.device.recv(0, &mut self.buf, &mut held)? {
                Some(rx) => frames.push(self.buf[rx.start..rx.start + rx.len].to_vec()),
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        Ok(frames)
    }
}
