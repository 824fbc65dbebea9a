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
//! verifies it. It returns a 32-bit hash; the TAP takes it modulo its number of queues.

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
}

impl Asm {
    fn op(&mut self, i: Insn) -> &mut Self {
        self.code.push(i);
        self
    }
    /// r0 = packet[off] (`size` W/H/B, network order turned to host).
    fn load(&mut self, size: u8, off: i32) -> &mut Self {
        self.op(insn(LD | ABS | size, 0, 0, 0, off))
    }
    /// r0 = packet[reg + off].
    fn load_ind(&mut self, size: u8, reg: u8, off: i32) -> &mut Self {
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

/// The steering program: r8 accumulates the flow's symmetric hash, r7 holds the IPv4 header
/// length; loads past the frame's end end the program with 0.
fn program() -> Vec<Insn> {
    let mut a = Asm::default();
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
        .op(insn(JMP | EXIT, 0, 0, 0, 0));
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
    let code = program();
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
            format!("loading the queue steering program: {e} {}", why.trim()),
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
        let code = program();
        for (i, ins) in code.iter().enumerate() {
            if ins.code & 0x07 == JMP && ins.code != JMP | EXIT {
                let to = i as i64 + 1 + i64::from(ins.off);
                assert!(to > i as i64 && (to as usize) < code.len(), "insn {i}");
            }
        }
        assert_eq!(code.last().map(|i| i.code), Some(JMP | EXIT));
    }
}
