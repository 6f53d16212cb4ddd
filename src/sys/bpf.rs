//! A BPF iterator over the memory areas of one process (the kernel's `task_vma` iterator,
//! Linux 5.12+): start, end and the kernel's flags word of each area, read without walking a
//! page table. /proc/PID/smaps is the only other place that shows an area's flags, and it
//! counts every resident page of the area to do so (about 11 ms per GiB of 4 KiB pages).
//!
//! The program is seventeen instructions written here, checked by the kernel's verifier at load:
//! for each area it writes (vm_start, vm_end, vm_flags) to the iterator's output. It needs
//! CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); without them loading fails and the caller reads
//! smaps.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::SysError;

const BPF_PROG_LOAD: i32 = 5;
const BPF_LINK_CREATE: i32 = 28;
const BPF_ITER_CREATE: i32 = 33;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
/// bpf_seq_write(seq, data, len).
const HELPER_SEQ_WRITE: i32 = 127;

/// union bpf_attr for BPF_PROG_LOAD, as far as crust fills it (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
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
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// union bpf_attr for BPF_LINK_CREATE of an iterator.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// union bpf_iter_link_info, its `task` member: which process to iterate.
#[repr(C)]
struct IterTask {
    tid: u32,
    pid: u32,
    pid_fd: u32,
    _pad: u32,
}

/// One instruction: opcode, registers (dst low nibble, src high), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | src << 4, off, imm }
}

// Opcodes: mov64 reg, load/store 64-bit, jump if equal to an immediate, add64 immediate,
// mov64 immediate, call, exit.
const MOV_X: u8 = 0xbf;
const LDX_DW: u8 = 0x79;
const STX_DW: u8 = 0x7b;
const JEQ_K: u8 = 0x15;
const ADD_K: u8 = 0x07;
const MOV_K: u8 = 0xb7;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// The program, for an iterator context (struct bpf_iter__task_vma: meta, task, vma pointers)
/// and vm_flags at `flags_at` in struct vm_area_struct (vm_start at 0, vm_end at 8).
fn program(flags_at: i16) -> Vec<Insn> {
    vec![
        insn(MOV_X, 6, 1, 0, 0),     // r6 = ctx
        insn(LDX_DW, 7, 6, 16, 0),   // r7 = ctx->vma
        insn(JEQ_K, 7, 0, 12, 0),    // no area (the end): exit
        insn(LDX_DW, 1, 7, 0, 0),    // vm_start
        insn(STX_DW, 10, 1, -24, 0), // -> stack[-24]
        insn(LDX_DW, 1, 7, 8, 0),    // vm_end
        insn(STX_DW, 10, 1, -16, 0), // -> stack[-16]
        insn(LDX_DW, 1, 7, flags_at, 0),
        insn(STX_DW, 10, 1, -8, 0), // vm_flags -> stack[-8]
        insn(LDX_DW, 1, 6, 0, 0),   // r1 = ctx->meta
        insn(LDX_DW, 1, 1, 0, 0),   // r1 = meta->seq
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, -24), // r2 = the 24 bytes on the stack
        insn(MOV_K, 3, 0, 0, 24),  // r3 = 24
        insn(CALL, 0, 0, 0, HELPER_SEQ_WRITE),
        insn(MOV_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

fn bpf<T>(cmd: i32, attr: &mut T, what: &str) -> Result<OwnedFd, SysError> {
    // Every pointer inside `attr` points at memory that outlives the call.
    // SAFETY: `attr` is a live, exclusively borrowed #[repr(C)] prefix of bpf_attr for `cmd`.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if fd < 0 {
        return Err(SysError::new(format!("bpf({what})"), Errno::last()));
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The loaded iterator program.
pub struct VmaIterator(OwnedFd);

/// One memory area as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaWord {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

impl VmaIterator {
    /// Loads the program; `attach_btf_id` is the kernel's `bpf_iter_task_vma` function,
    /// `flags_at` the offset of vm_flags in struct vm_area_struct (both from its BTF).
    pub fn load(attach_btf_id: u32, flags_at: u64) -> Result<VmaIterator, SysError> {
        let flags_at = i16::try_from(flags_at).map_err(|_| SysError::new("bpf(BPF_PROG_LOAD): vm_flags offset", Errno::ERANGE))?;
        let code = program(flags_at);
        let license = c"GPL";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_TRACING,
            insn_cnt: code.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_TRACE_ITER,
            attach_btf_id,
            ..Default::default()
        };
        attr.prog_name[..9].copy_from_slice(b"crust_vma");
        bpf(BPF_PROG_LOAD, &mut attr, "BPF_PROG_LOAD").map(VmaIterator)
    }

    /// Every memory area of process `pid`, in address order.
    pub fn areas_of(&self, pid: i32) -> Result<Vec<VmaWord>, SysError> {
        let mut task = IterTask { tid: 0, pid: pid as u32, pid_fd: 0, _pad: 0 };
        let mut link = LinkCreate {
            prog_fd: self.0.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: BPF_TRACE_ITER,
            flags: 0,
            iter_info: &mut task as *mut IterTask as u64,
            iter_info_len: std::mem::size_of::<IterTask>() as u32,
            _pad: 0,
        };
        let link = bpf(BPF_LINK_CREATE, &mut link, "BPF_LINK_CREATE").map_err(|e| e.pid(pid))?;
        let mut create = [link.as_raw_fd() as u32, 0u32];
        let iter = bpf(BPF_ITER_CREATE, &mut create, "BPF_ITER_CREATE").map_err(|e| e.pid(pid))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(iter), &mut bytes)
            .map_err(|e| SysError::new("read(BPF iterator)", super::remote::io_errno(&e)).pid(pid))?;
        let words = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
        Ok(bytes.chunks_exact(24).map(|c| VmaWord { start: words(&c[..8]), end: words(&c[8..16]), flags: words(&c[16..]) }).collect())
    }
}
