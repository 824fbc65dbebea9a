//! Which queue of a multiqueue TAP the kernel hands a frame to: a small eBPF program
//! (`TUNSETSTEERINGEBPF`) that hashes the frame's flow, so a flow is always read from the same
//! queue, by the same worker, and never reordered.
//!
//! Without it the TAP's own steering (automq) sends a flow to the queue that last wrote a
//! frame of it. That moves a flow between workers whenever another worker writes one of its
//! frames (a frame that waited for a next hop, the reply direction of a translated connection
//! read on another worker), and frames already queued on the old queue then race the new
//! ones. The hash here depends on the frame alone: IPv4 and IPv6 addresses, and TCP/UDP ports
//! when the packet is not a fragment, combined symmetrically (XOR), so both directions of a
//! switched flow meet on one worker too. Frames of other kinds (ARP, VLAN-tagged) go to
//! queue 0.
//!
//! The program is written out as instructions here (classic packet loads, `LD_ABS`/`LD_IND`,
//! which socket filter programs may use) and loaded with the `bpf(2)` syscall; the kernel
//! verifies it. It returns a 16-bit hash; the TAP takes it modulo its number of queues.
//!
//! The same hash, of the frame inside a VXLAN packet, picks which of a tunnel endpoint's
//! `SO_REUSEPORT` sockets receives the packet ([`load_reuseport`], attached with
//! `SO_ATTACH_REUSEPORT_EBPF`): so the worker that writes a flow's frames into a TAP is the
//! one that reads its answers from that TAP, and an answer the kernel makes at once (an echo
//! reply, a TCP ACK) finds that worker running instead of waking another one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

// Instruction classes, sizes, modes, operations (linux/bpf_common.h, linux/bpf.h).
const LD: u8 = 0x00;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const ABS: u8 = 0x20;
const IND: u8 = 0x40;
const K: u8 = 0x00;
const X: u8 = 0x08;
const MUL: u8 = 0x20;
const AND: u8 = 0x50;
const MOD: u8 = 0x90;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JNE: u8 = 0x50;
const JSET: u8 = 0x40;
const EXIT: u8 = 0x90;

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// A program being written, with forward jumps to named places.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    /// (instruction index, label) of jumps to patch.
    fixups: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
    /// Where the Ethernet frame starts in the packet: added to every load's offset.
    base: i32,
}

impl Asm {
    fn op(&mut self, i: Insn) -> &mut Self {
        self.code.push(i);
        self
    }
    /// r0 = packet[off] (`size` W/H/B, network order turned to host).
    fn load(&mut self, size: u8, off: i32) -> &mut Self {
        let off = off + self.base;
        self.op(insn(LD | ABS | size, 0, 0, 0, off))
    }
    /// r0 = packet[reg + off].
    fn load_ind(&mut self, size: u8, reg: u8, off: i32) -> &mut Self {
        let off = off + self.base;
        self.op(insn(LD | IND | size, 0, reg, 0, off))
    }
    fn alu_k(&mut self, op: u8, dst: u8, imm: i32) -> &mut Self {
        self.op(insn(ALU64 | op | K, dst, 0, 0, imm))
    }
    fn alu_x(&mut self, op: u8, dst: u8, src: u8) -> &mut Self {
        self.op(insn(ALU64 | op | X, dst, src, 0, 0))
    }
    fn jump(&mut self, op: u8, reg: u8, imm: i32, to: &'static str) -> &mut Self {
        self.fixups.push((self.code.len(), to));
        self.op(insn(JMP | op | K, reg, 0, 0, imm))
    }
    fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.push((name, self.code.len()));
        self
    }
    /// r8 ^= (r0 >> 16) ^ (r0 & 0xffff): two ports, in either order.
    fn mix_ports(&mut self) -> &mut Self {
        self.alu_x(MOV, 1, 0)
            .alu_k(RSH, 1, 16)
            .alu_k(AND, 0, 0xffff)
            .alu_x(XOR, 0, 1)
            .alu_x(XOR, 8, 0)
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, name) in &self.fixups {
            let target = self
                .labels
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, i)| *i)
                .expect("label defined");
            self.code[*at].off = (target - at - 1) as i16;
        }
        self.code
    }
}

/// The steering program for an Ethernet frame that starts `base` bytes into the packet: r8
/// accumulates the flow's symmetric hash, r7 holds the IPv4 header length; loads past the
/// frame's end end the program with 0. With `modulo`, it returns the hash modulo that.
fn program(base: i32, modulo: Option<u32>) -> Vec<Insn> {
    let mut a = Asm {
        base,
        ..Asm::default()
    };
    a.alu_x(MOV, 6, 1) // r6 = the frame (packet loads need it there)
        .alu_k(MOV, 8, 0)
        .load(H, 12) // EtherType
        .jump(JNE, 0, 0x0800, "ipv6")
        // IPv4: addresses, then ports unless a fragment.
        .load(B, 14)
        .alu_k(AND, 0, 0x0f)
        .alu_k(LSH, 0, 2)
        .alu_x(MOV, 7, 0)
        .load(W, 26)
        .alu_x(XOR, 8, 0)
        .load(W, 30)
        .alu_x(XOR, 8, 0)
        .load(H, 20)
        .jump(JSET, 0, 0x3fff, "done")
        .load(B, 23)
        .jump(JEQ, 0, 6, "v4ports")
        .jump(JNE, 0, 17, "done")
        .label("v4ports")
        .load_ind(W, 7, 14)
        .mix_ports()
        .jump(JA, 0, 0, "done")
        .label("ipv6")
        .jump(JNE, 0, 0x86dd, "done");
    for off in (22..54).step_by(4) {
        a.load(W, off).alu_x(XOR, 8, 0);
    }
    a.load(B, 20)
        .jump(JEQ, 0, 6, "v6ports")
        .jump(JNE, 0, 17, "done")
        .label("v6ports")
        .load(W, 54)
        .mix_ports()
        .label("done")
        // Spread the bits: the queue is the hash modulo the number of queues.
        .alu_x(MOV, 0, 8)
        .op(insn(ALU | MUL | K, 0, 0, 0, 0x9e37_79b1_u32 as i32))
        .alu_x(MOV, 1, 0)
        .alu_k(RSH, 1, 16)
        .alu_x(XOR, 0, 1)
        // 16 bits: kernels differ on whether the TAP keeps 16 or 32 bits of the result
        // before it takes it modulo the queues; this way both pick the same queue.
        .alu_k(AND, 0, 0xffff);
    if let Some(n) = modulo {
        a.alu_k(MOD, 0, n.max(1) as i32);
    }
    a.op(insn(JMP | EXIT, 0, 0, 0, 0));
    a.finish()
}

/// The bpf_attr fields of BPF_PROG_LOAD that are used; the rest stays zero.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    _rest: [u8; 64],
}

/// Loads the steering program; the descriptor can be attached to any number of TAPs.
pub fn load() -> io::Result<OwnedFd> {
    load_program(&program(0, None), "the queue steering program")
}

/// Loads the program that picks which of `sockets` `SO_REUSEPORT` UDP sockets receives a
/// VXLAN packet: the steering hash of the inner frame (after the 8-byte VXLAN header; the
/// kernel starts a reuseport program at the UDP payload) modulo `sockets`.
pub fn load_reuseport(sockets: usize) -> io::Result<OwnedFd> {
    let code = program(crate::wire::vxlan::HEADER_LEN as i32, Some(sockets as u32));
    load_program(&code, "the tunnel socket steering program")
}

/// Makes the `SO_REUSEPORT` group of UDP socket `socket` pick its receiving socket with
/// `program` (a [`load_reuseport`] program).
pub fn attach_reuseport(socket: libc::c_int, program: &OwnedFd) -> io::Result<()> {
    super::raw::setsockopt(
        socket,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_EBPF,
        &(program.as_raw_fd() as libc::c_int),
    )
}

fn load_program(code: &[Insn], what: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        _rest: [0; 64],
    };
    // SAFETY: attr points at a live, zero-padded bpf_attr with valid pointers to the program,
    // the license string and the log buffer for the whole call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let why = String::from_utf8_lossy(&log[..end]);
        return Err(io::Error::new(
            e.kind(),
            format!("loading {what}: {e} {}", why.trim()),
        ));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the TAP of queue descriptor `tap` pick queues with `program`.
pub fn attach(tap: &OwnedFd, program: &OwnedFd) -> io::Result<()> {
    let prog: libc::c_int = program.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads an int (a program descriptor) from the pointer.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETSTEERINGEBPF, &prog) };
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
    fn jumps_land_inside_the_program() {
        for code in [program(0, None), program(8, Some(2))] {
            for (i, ins) in code.iter().enumerate() {
                if ins.code & 0x07 == JMP && ins.code != JMP | EXIT {
                    let to = i as i64 + 1 + i64::from(ins.off);
                    assert!(to > i as i64 && (to as usize) < code.len(), "insn {i}");
                }
            }
            assert_eq!(code.last().map(|i| i.code), Some(JMP | EXIT));
        }
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;

    /// The bpf_attr of BPF_PROG_TEST_RUN.
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        _rest: [u64; 8],
    }

    /// Runs `prog` on `frame` as the kernel runs a socket filter on a received skb; the
    /// test run pulls an Ethernet header first, so 14 bytes go before the frame.
    fn run(prog: &OwnedFd, packet: &[u8]) -> u32 {
        let mut data = vec![0u8; 14];
        data[12..14].copy_from_slice(&[0x08, 0x00]);
        data.extend_from_slice(packet);
        let mut attr = TestRun {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: data.len() as u32,
            data_in: data.as_ptr() as u64,
            repeat: 1,
            ..TestRun::default()
        };
        // SAFETY: attr is a live, zero-padded bpf_attr pointing at data for the whole call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                10, // BPF_PROG_TEST_RUN
                &mut attr as *mut TestRun,
                std::mem::size_of::<TestRun>(),
            )
        };
        assert_eq!(rc, 0, "test run: {}", io::Error::last_os_error());
        attr.retval
    }

    fn frame(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = proto;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    /// A tunnel socket is picked by the same hash, of the frame inside the VXLAN packet, as
    /// the TAP queue of the frame and of its answer.
    #[test]
    fn the_tunnel_socket_is_the_queue_of_the_inner_frame() {
        let (Ok(tap), Ok(two), Ok(three)) = (load(), load_reuseport(2), load_reuseport(3)) else {
            panic!("loading the programs needs CAP_BPF (tests run as root)");
        };
        let mut seen = [[false; 3]; 2];
        for i in 0..64u8 {
            let f = frame([10, 0, 0, i], [10, 0, 1, 7], 17, 1000 + u16::from(i), 53);
            let back = frame([10, 0, 1, 7], [10, 0, 0, i], 17, 53, 1000 + u16::from(i));
            let hash = run(&tap, &f);
            assert_eq!(hash, run(&tap, &back), "symmetric");
            let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
            vxlan.extend_from_slice(&f);
            let on2 = run(&two, &vxlan);
            let on3 = run(&three, &vxlan);
            assert!(hash <= 0xffff);
            assert_eq!(on2, hash % 2, "frame {i}");
            assert_eq!(on3, hash % 3, "frame {i}");
            seen[0][on2 as usize] = true;
            seen[1][on3 as usize] = true;
        }
        assert_eq!(
            seen,
            [[true, true, false], [true, true, true]],
            "flows spread"
        );
    }
}
