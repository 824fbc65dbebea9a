//! io-uring-hub: a 2-port L2 hub between two TAP devices (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|
//! IFF_MULTI_QUEUE, one queue each, TSO/CSUM offloads on), each moved into its own network
//! namespace, forwarding every frame (10-byte virtio-net header passed through) from one TAP
//! to the other, with selectable I/O modes:
//!   epoll   : nonblocking read() per frame until EAGAIN (<=32 per port per turn), write() per
//!             frame, epoll_wait (edge-triggered) to sleep - what tapswitch does.
//!   batch   : io_uring, 32 READ sqes kept queued per TAP, each completion turned into a WRITE
//!             to the other TAP, the WRITE's completion re-queues the READ; one io_uring_enter
//!             submits all new sqes and waits for >=1 completion.
//!   mshot   : io_uring IORING_OP_READ_MULTISHOT per TAP with a provided buffer ring
//!             (IORING_REGISTER_PBUF_RING), WRITE per frame batched in the next enter, buffer
//!             returned to the ring on the WRITE's completion.
//!   mshot-poll : mshot + busy-polling (no syscalls: IORING_SQ_TASKRUN flag) for --spin-us
//!             before sleeping in io_uring_enter.
//!   mshot-sqpoll: mshot with IORING_SETUP_SQPOLL (kernel submission thread) instead of
//!             DEFER_TASKRUN.
//! Usage: io-uring-hub MODE [--spin-us N] [--no-defer]
//! Namespaces usp<PID>a/usp<PID>b, TAPs ust<PID>a/ust<PID>b; 10.150.0.1/24 and .2/24.
//! Prints READY when set up; on SIGINT/SIGTERM stops, prints counters, removes everything.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);
extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
/// Largest read: 10-byte vnet header + 64 KiB super-frame, rounded up.
const BUFSZ: usize = 65536 + 4096;
const BATCH: usize = 32;

#[derive(Default, Debug)]
struct Stats {
    frames: [u64; 2],
    bytes: u64,
    sys_read: u64,
    sys_write: u64,
    sys_wait: u64,  // epoll_wait or io_uring_enter
    eagain: u64,
    write_err: u64,
    rearm: u64,     // multishot re-arms (ENOBUFS or terminated)
    enobufs: u64,
    spin_hits: u64, // busy-poll found work
    read_err: u64,
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().expect("spawn");
    if !st.success() {
        eprintln!("command failed: {:?}", args);
    }
}

fn open_tap(name: &str) -> OwnedFd {
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0, "open /dev/net/tun: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
        let r = libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr);
        assert!(r == 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        let r = libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        assert!(r == 0, "TUNSETOFFLOAD: {}", std::io::Error::last_os_error());
        fd
    }
}

fn set_nonblock(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

struct Env {
    ns: [String; 2],
}
impl Drop for Env {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_else(|| "epoll".into());
    let mut spin_us: u64 = 50;
    let mut defer = true;
    let mut i = 2;
    while i < args.len() {
        match args[i].as_str() {
            "--spin-us" => {
                spin_us = args[i + 1].parse().unwrap();
                i += 1;
            }
            "--no-defer" => defer = false,
            a => panic!("unknown arg {a}"),
        }
        i += 1;
    }
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as usize;
        // no SA_RESTART: blocking waits return EINTR
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    let pid = std::process::id();
    let ns = [format!("usp{pid}a"), format!("usp{pid}b")];
    let taps = [format!("ust{pid}a"), format!("ust{pid}b")];
    let fds = [open_tap(&taps[0]), open_tap(&taps[1])];
    let env = Env { ns: ns.clone() };
    let addrs = ["10.150.0.1/24", "10.150.0.2/24"];
    for p in 0..2 {
        sh(&["ip", "netns", "add", &ns[p]]);
        sh(&["ip", "link", "set", "dev", &taps[p], "netns", &ns[p]]);
        sh(&["ip", "-n", &ns[p], "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns[p], "addr", "add", addrs[p], "dev", &taps[p]]);
        sh(&["ip", "-n", &ns[p], "link", "set", &taps[p], "up"]);
    }
    println!("READY mode={mode} ns={} {}", ns[0], ns[1]);
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd()];
    let mut st = Stats::default();
    let t0 = Instant::now();
    match mode.as_str() {
        "epoll" => run_epoll(raw, &mut st),
        "batch" => run_batch(raw, &mut st, defer),
        "mshot" => run_mshot(raw, &mut st, Variant::Plain, defer, 0),
        "mshot-poll" => run_mshot(raw, &mut st, Variant::Poll, defer, spin_us),
        "mshot-sqpoll" => run_mshot(raw, &mut st, Variant::Sqpoll, false, 0),
        m => eprintln!("unknown mode {m}"),
    }
    let el = t0.elapsed().as_secs_f64();
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    let fr = (st.frames[0] + st.frames[1]).max(1) as f64;
    println!(
        "STATS mode={mode} secs={el:.1} frames={:?} bytes={} read={} write={} wait={} eagain={} write_err={} read_err={} rearm={} enobufs={} spin_hits={} threads={} syscalls_per_frame={:.3}",
        st.frames, st.bytes, st.sys_read, st.sys_write, st.sys_wait, st.eagain, st.write_err,
        st.read_err, st.rearm, st.enobufs, st.spin_hits, threads,
        (st.sys_read + st.sys_write + st.sys_wait) as f64 / fr
    );
    drop(fds);
    drop(env);
}

// ---------------------------------------------------------------- (a) epoll
fn run_epoll(fd: [RawFd; 2], st: &mut Stats) {
    set_nonblock(fd[0]);
    set_nonblock(fd[1]);
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for p in 0..2 {
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: p as u64 };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd[p], &mut ev) };
    }
    let mut buf = vec![0u8; BUFSZ];
    let mut ready = [true, true];
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    while !STOP.load(Ordering::Relaxed) {
        for p in 0..2 {
            if !ready[p] {
                continue;
            }
            for _ in 0..BATCH {
                let n = unsafe { libc::read(fd[p], buf.as_mut_ptr().cast(), BUFSZ) };
                st.sys_read += 1;
                if n < 0 {
                    let e = std::io::Error::last_os_error().raw_os_error();
                    if e == Some(libc::EAGAIN) {
                        st.eagain += 1;
                        ready[p] = false;
                    } else {
                        st.read_err += 1;
                    }
                    break;
                }
                let w = unsafe { libc::write(fd[1 - p], buf.as_ptr().cast(), n as usize) };
                st.sys_write += 1;
                if w < 0 {
                    st.write_err += 1;
                }
                st.frames[p] += 1;
                st.bytes += n as u64;
            }
        }
        let timeout = if ready[0] || ready[1] { 0 } else { -1 };
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, timeout) };
        st.sys_wait += 1;
        for e in evs.iter().take(n.max(0) as usize) {
            ready[e.u64 as usize] = true;
        }
    }
    unsafe { libc::close(ep) };
}

// user_data: bit 63 = write, bits 16..31 = port, 0..15 = slot/bid
const UD_WRITE: u64 = 1 << 63;
fn ud(write: bool, port: usize, slot: usize) -> u64 {
    (if write { UD_WRITE } else { 0 }) | ((port as u64) << 16) | slot as u64
}

fn push(ring: &mut IoUring, e: squeue::Entry) {
    unsafe {
        if ring.submission().push(&e).is_err() {
            ring.submit().expect("submit");
            ring.submission().push(&e).expect("sq full");
        }
    }
}

fn build_ring(defer: bool, sqpoll: bool) -> IoUring {
    let mut b = IoUring::builder();
    if sqpoll {
        b.setup_sqpoll(2000);
    } else if defer {
        b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
    } else {
        b.setup_coop_taskrun().setup_taskrun_flag();
    }
    b.setup_cqsize(4096);
    b.build(512).expect("io_uring setup")
}

fn enter(ring: &mut IoUring, st: &mut Stats, want: usize) -> bool {
    st.sys_wait += 1;
    match ring.submit_and_wait(want) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EBUSY) => false,
        Err(e) => panic!("io_uring_enter: {e}"),
    }
}

// ---------------------------------------------------------------- (b) batched READs
fn run_batch(fd: [RawFd; 2], st: &mut Stats, defer: bool) {
    let mut ring = build_ring(defer, false);
    let mut bufs: Vec<Vec<Vec<u8>>> = (0..2).map(|_| (0..BATCH).map(|_| vec![0u8; BUFSZ]).collect()).collect();
    for p in 0..2 {
        for s in 0..BATCH {
            let e = opcode::Read::new(types::Fd(fd[p]), bufs[p][s].as_mut_ptr(), BUFSZ as u32)
                .build()
                .user_data(ud(false, p, s));
            push(&mut ring, e);
        }
    }
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
    while !STOP.load(Ordering::Relaxed) {
        enter(&mut ring, st, 1);
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for &(u, res, _) in &cqes {
            let p = ((u >> 16) & 0xffff) as usize;
            let s = (u & 0xffff) as usize;
            if u & UD_WRITE != 0 {
                if res < 0 {
                    st.write_err += 1;
                }
                let e = opcode::Read::new(types::Fd(fd[p]), bufs[p][s].as_mut_ptr(), BUFSZ as u32)
                    .build()
                    .user_data(ud(false, p, s));
                push(&mut ring, e);
            } else if res > 0 {
                st.frames[p] += 1;
                st.bytes += res as u64;
                let e = opcode::Write::new(types::Fd(fd[1 - p]), bufs[p][s].as_ptr(), res as u32)
                    .build()
                    .user_data(ud(true, p, s));
                push(&mut ring, e);
            } else {
                if res == -libc::EAGAIN {
                    st.eagain += 1;
                } else {
                    st.read_err += 1;
                }
                let e = opcode::Read::new(types::Fd(fd[p]), bufs[p][s].as_mut_ptr(), BUFSZ as u32)
                    .build()
                    .user_data(ud(false, p, s));
                push(&mut ring, e);
            }
        }
    }
    drop(bufs_guard(&mut ring, bufs));
}

/// Cancel everything and drain before buffers are freed.
fn bufs_guard<T>(ring: &mut IoUring, bufs: T) -> T {
    let _ = ring.submitter().register_sync_cancel(None, io_uring::types::CancelBuilder::any());
    let _ = ring.submit_and_wait(0);
    ring.completion().for_each(drop);
    bufs
}

// ---------------------------------------------------------------- (c)/(d) multishot + buffer ring
#[derive(PartialEq, Clone, Copy)]
enum Variant {
    Plain,
    Poll,
    Sqpoll,
}

const NBUF: usize = 256; // per port, power of two

struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_len: usize,
    data: *mut u8,
    data_len: usize,
    tail: u16,
}
impl BufRing {
    fn new(uring: &IoUring, bgid: u16) -> BufRing {
        unsafe {
            let ring_len = NBUF * std::mem::size_of::<types::BufRingEntry>();
            let ring = libc::mmap(std::ptr::null_mut(), ring_len, libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert!(ring != libc::MAP_FAILED);
            let data_len = NBUF * BUFSZ;
            let data = libc::mmap(std::ptr::null_mut(), data_len, libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert!(data != libc::MAP_FAILED);
            uring.submitter().register_buf_ring(ring as u64, NBUF as u16, bgid).expect("register_buf_ring (5.19+)");
            let mut br = BufRing { ring: ring.cast(), ring_len, data: data.cast(), data_len, tail: 0 };
            for b in 0..NBUF {
                br.add(b as u16);
            }
            br.publish();
            br
        }
    }
    fn addr(&self, bid: u16) -> *mut u8 {
        unsafe { self.data.add(bid as usize * BUFSZ) }
    }
    fn add(&mut self, bid: u16) {
        unsafe {
            let e = &mut *self.ring.add(self.tail as usize & (NBUF - 1));
            e.set_addr(self.addr(bid) as u64);
            e.set_len(BUFSZ as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }
    fn publish(&self) {
        unsafe {
            let t = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*t).store(self.tail, Ordering::Release);
        }
    }
}
impl Drop for BufRing {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
            libc::munmap(self.data.cast(), self.data_len);
        }
    }
}

fn arm_mshot(ring: &mut IoUring, fd: RawFd, p: usize) {
    let e = opcode::ReadMulti::new(types::Fd(fd), 0, p as u16).build().user_data(ud(false, p, 0));
    push(ring, e);
}

fn run_mshot(fd: [RawFd; 2], st: &mut Stats, v: Variant, defer: bool, spin_us: u64) {
    let mut ring = build_ring(defer, v == Variant::Sqpoll);
    let mut br = [BufRing::new(&ring, 0), BufRing::new(&ring, 1)];
    for p in 0..2 {
        arm_mshot(&mut ring, fd[p], p);
    }
    let spin = Duration::from_micros(spin_us);
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
    while !STOP.load(Ordering::Relaxed) {
        let mut got = false;
        if v == Variant::Poll {
            // Submit what is queued without waiting, then spin on the CQ / TASKRUN flag.
            let start = Instant::now();
            let mut first = true;
            loop {
                let pending = !ring.submission().is_empty();
                if pending || ring.submission().taskrun() || first {
                    enter(&mut ring, st, 0);
                    first = false;
                }
                if !ring.completion().is_empty() {
                    got = true;
                    st.spin_hits += 1;
                    break;
                }
                if start.elapsed() >= spin || STOP.load(Ordering::Relaxed) {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if !got {
            enter(&mut ring, st, 1);
        }
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        let mut returned = [false, false];
        for &(u, res, flags) in &cqes {
            let p = ((u >> 16) & 0xffff) as usize;
            if u & UD_WRITE != 0 {
                if res < 0 {
                    st.write_err += 1;
                }
                br[p].add((u & 0xffff) as u16);
                returned[p] = true;
                continue;
            }
            if res > 0 {
                let bid = cqueue::buffer_select(flags).expect("no buffer id");
                st.frames[p] += 1;
                st.bytes += res as u64;
                let e = opcode::Write::new(types::Fd(fd[1 - p]), br[p].addr(bid), res as u32)
                    .build()
                    .user_data(ud(true, p, bid as usize));
                push(&mut ring, e);
            } else if res == -libc::ENOBUFS {
                st.enobufs += 1;
            } else if res < 0 {
                st.read_err += 1;
                if res != -libc::ECANCELED {
                    eprintln!("multishot read error {res}");
                }
            }
            if !cqueue::more(flags) {
                st.rearm += 1;
                if !STOP.load(Ordering::Relaxed) {
                    arm_mshot(&mut ring, fd[p], p);
                }
            }
        }
        for p in 0..2 {
            if returned[p] {
                br[p].publish();
            }
        }
    }
    bufs_guard(&mut ring, ());
    for p in 0..2 {
        let _ = ring.submitter().unregister_buf_ring(p as u16);
    }
    drop(br);
}
