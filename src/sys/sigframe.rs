//! A signal frame (x86_64 `struct rt_sigframe`) that returns a thread to exactly the state it had
//! when crust took it over: its registers, its signal mask and its FPU/vector registers.
//!
//! While crust works inside a frozen thread, the thread is parked so that if crust disappears
//! at any instant (SIGKILL, a crash), the thread, let go by the kernel, executes
//! `rt_sigreturn` on this frame and goes on as if nothing had happened (see
//! docs/injection.md). The frame lives below the thread's stack pointer and its red zone, in
//! stack memory the thread does not use at that moment, like the frame of a signal the kernel
//! delivers.
//!
//! What rt_sigreturn does with it (arch/x86/kernel/signal_64.c):
//! - `rsp - 8` is the frame; `uc.uc_sigmask` becomes the blocked mask;
//! - `uc.uc_mcontext` gives every general register, rip, the user-visible flags, cs and ss
//!   (UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS); orig_rax becomes -1 (no restart);
//! - `uc_mcontext.fpstate` points at an XSAVE image that is restored with XRSTOR when its
//!   software bytes (bytes 464..512 of the legacy area) carry FP_XSTATE_MAGIC1, the size and
//!   the features, and FP_XSTATE_MAGIC2 ends it (UC_FP_XSTATE). PTRACE_GETREGSET(NT_X86_XSTATE)
//!   returns the same standard-format image, with XCR0 in the first 8 of those bytes (as gdb
//!   reads it): crust writes the software bytes from it;
//! - `uc.uc_stack` is given to sigaltstack; its errors are ignored: crust writes an invalid
//!   mode there, so the thread's alternate signal stack is left as it is.
//!
//! fs and gs bases are not in the frame: crust never changes them.

use super::ptrace::Registers;

/// Bytes below the stack pointer that the x86_64 ABI lets a function use without moving it.
pub const RED_ZONE: u64 = 128;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of the software bytes in the 512-byte legacy FXSAVE area.
const SW_BYTES: usize = 464;
const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
/// `pretcode` (8) + `struct ucontext` (8 + 8 + 24 + 256 + 8) + `siginfo` (128).
const FRAME_LEN: usize = 8 + 304 + 128;
/// An `ss_flags` that is neither 0, SS_ONSTACK nor SS_DISABLE: sigaltstack refuses it (EINVAL)
/// and rt_sigreturn ignores that, leaving the alternate stack alone.
const SS_FLAGS_KEEP: u32 = 3;

/// A frame ready to be written into the thread at `address`; the thread parks with
/// `rsp = address + 8`.
pub struct SelfReturnFrame {
    pub address: u64,
    pub bytes: Vec<u8>,
}

impl SelfReturnFrame {
    /// The stack pointer the parked thread must have: rt_sigreturn finds the frame at rsp - 8.
    pub fn parked_rsp(&self) -> u64 {
        self.address + 8
    }

    /// Lowest address the frame uses.
    pub fn low(&self) -> u64 {
        self.address
    }
}

/// Why a thread cannot get a frame (crust then works without one; see docs/injection.md).
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The XSAVE image is too short or names no x87/SSE state in its XCR0 bytes.
    NoXstate,
}

/// Builds the frame for a thread whose state to come back to is `regs` (an interrupted
/// system call already resolved: rt_sigreturn does not restart system calls), `sigmask`
/// and `xstate` (from PTRACE_GETREGSET(NT_X86_XSTATE)), placed below `regs.rsp`'s red zone.
pub fn build(regs: &Registers, sigmask: u64, xstate: &[u8]) -> Result<SelfReturnFrame, FrameError> {
    let xcr0 = xstate.get(SW_BYTES..SW_BYTES + 8).map(|b| u64::from_ne_bytes(b.try_into().unwrap()));
    let xcr0 = xcr0.filter(|x| x & 3 == 3 && xstate.len() >= XSAVE_HEADER_END).ok_or(FrameError::NoXstate)?;
    let (xstate_size, xcr0) = frame_part(xstate, xcr0, cpu_components());
    let xstate = &xstate[..xstate_size];
    let fp_len = xstate_size + 4; // + FP_XSTATE_MAGIC2
    // Layout, from high to low addresses: red zone, fpstate (64-byte aligned), frame.
    let fpstate = (regs.rsp - RED_ZONE - fp_len as u64) & !63;
    let address = (fpstate - FRAME_LEN as u64) & !15;
    let mut bytes = vec![0u8; (fpstate - address) as usize + fp_len];
    let uc = 8;
    put64(&mut bytes, uc, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    // uc_link (uc + 8) stays 0; uc_stack: ss_sp, ss_flags, ss_size.
    put32(&mut bytes, uc + 16 + 8, SS_FLAGS_KEEP);
    let sc = uc + 40;
    let gprs = [
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rax,
        regs.rcx,
        regs.rsp,
        regs.rip,
        regs.eflags,
    ];
    for (i, v) in gprs.iter().enumerate() {
        put64(&mut bytes, sc + 8 * i, *v);
    }
    // cs, gs, fs, ss (16 bits each) at sc + 144.
    put16(&mut bytes, sc + 144, regs.cs as u16);
    put16(&mut bytes, sc + 150, regs.ss as u16);
    put64(&mut bytes, sc + 184, fpstate);
    put64(&mut bytes, uc + 296, sigmask);
    let fp = (fpstate - address) as usize;
    bytes[fp..fp + xstate_size].copy_from_slice(xstate);
    bytes[fp + SW_BYTES..fp + 512].fill(0);
    put32(&mut bytes, fp + SW_BYTES, FP_XSTATE_MAGIC1);
    put32(&mut bytes, fp + SW_BYTES + 4, (xstate_size + 4) as u32);
    put64(&mut bytes, fp + SW_BYTES + 8, xcr0);
    put32(&mut bytes, fp + SW_BYTES + 16, xstate_size as u32);
    put32(&mut bytes, fp + xstate_size, FP_XSTATE_MAGIC2);
    Ok(SelfReturnFrame { address, bytes })
}

/// End of the XSAVE header (legacy area 512, header 64): the smallest image.
const XSAVE_HEADER_END: usize = 576;

/// One state component of this CPU's XSAVE standard format (CPUID leaf 0xD).
#[derive(Clone, Copy, Debug)]
struct Component {
    bit: u32,
    offset: usize,
    size: usize,
    /// Enabled only on use, through XFD (AMX tile data).
    dynamic: bool,
}

/// The state components 2..63 this CPU describes. Asked once: each CPUID is a trap to the
/// hypervisor in a VM (61 of them cost 0.4-0.5 ms here, once per thread parked: half a second
/// for 1000 threads).
fn cpu_components() -> &'static [Component] {
    static COMPONENTS: std::sync::OnceLock<Vec<Component>> = std::sync::OnceLock::new();
    COMPONENTS.get_or_init(ask_cpu_components)
}

fn ask_cpu_components() -> Vec<Component> {
    use std::arch::x86_64::__cpuid_count;
    (2..63)
        .filter_map(|bit| {
            // CPUID leaf 0xD sub-leaf `bit` describes a state component (zeros for one the
            // CPU lacks).
            let leaf = __cpuid_count(0xd, bit);
            (leaf.eax != 0).then_some(Component { bit, offset: leaf.ebx as usize, size: leaf.eax as usize, dynamic: leaf.ecx & 4 != 0 })
        })
        .collect()
}

/// How much of a ptrace XSAVE image a signal frame of this thread holds, and its features.
/// ptrace gives the image at the largest size the CPU has, dynamic components included (AMX
/// tile data: 10688 bytes where the thread's own frames take 2496); rt_sigreturn refuses a
/// larger image than the thread's frames and then restores the x87 and SSE state only, its
/// AVX and AVX-512 registers reset. A dynamic component the thread does not use (not in the
/// header's XSTATE_BV) is left out; one it uses keeps the whole image.
fn frame_part(xstate: &[u8], xcr0: u64, components: &[Component]) -> (usize, u64) {
    let in_use = u64::from_ne_bytes(xstate[512..520].try_into().unwrap());
    let dynamic = components.iter().filter(|c| c.dynamic).fold(0u64, |m, c| m | 1 << c.bit);
    if in_use & dynamic != 0 || xcr0 & dynamic == 0 {
        return (xstate.len(), xcr0);
    }
    let features = xcr0 & !dynamic;
    let end = components
        .iter()
        .filter(|c| features & 1 << c.bit != 0)
        .map(|c| c.offset + c.size)
        .fold(XSAVE_HEADER_END, usize::max)
        .min(xstate.len());
    (end, features)
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}

/// Finds `mov $15, %rax; syscall` (glibc's __restore_rt) or `mov $15, %eax; syscall` (musl and
/// others) in `code` mapped at `base`: the instructions a parked thread runs to return through
/// its frame.
pub fn find_sigreturn(code: &[u8], base: u64) -> Option<u64> {
    const GLIBC: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
    const SHORT: &[u8] = &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
    [GLIBC, SHORT].iter().find_map(|pat| code.windows(pat.len()).position(|w| w == *pat).map(|off| base + off as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As PTRACE_GETREGSET returns it: XCR0 at byte 464.
    fn xstate(size: u32) -> Vec<u8> {
        let mut x = vec![0u8; size as usize];
        x[SW_BYTES..SW_BYTES + 8].copy_from_slice(&0xe7u64.to_ne_bytes());
        x[0] = 0x7f; // fcw, to find it again
        x
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// A CPU with AVX, AVX-512 and AMX as this project's machine reports it: tile data is
    /// dynamic. A thread that does not use it gets a frame of 2496 bytes without its feature
    /// bit; one that uses it keeps the whole image.
    #[test]
    fn frame_leaves_out_a_dynamic_component_the_thread_does_not_use() {
        let c = |bit, offset, size, dynamic| Component { bit, offset, size, dynamic };
        let amx = [
            c(2, 576, 256, false),
            c(5, 832, 64, false),
            c(6, 896, 512, false),
            c(7, 1408, 1024, false),
            c(17, 2432, 64, false),
            c(18, 2496, 8192, true),
        ];
        let xcr0 = 0x600e7;
        let mut image = xstate(10688);
        assert_eq!(frame_part(&image, xcr0, &amx), (2496, 0x200e7));
        image[512..520].copy_from_slice(&(1u64 << 18 | 7).to_ne_bytes());
        assert_eq!(frame_part(&image, xcr0, &amx), (10688, xcr0));
        // Without dynamic components (no AMX): the image as it is.
        assert_eq!(frame_part(&xstate(2432), 0xe7, &amx[..4]), (2432, 0xe7));
    }

    #[test]
    fn frame_holds_registers_mask_and_aligned_xstate_below_the_red_zone() {
        // SAFETY: user_regs_struct holds integers only: all zeroes is a valid value.
        let mut regs: Registers = unsafe { std::mem::zeroed() };
        regs.rsp = 0x7fff_0000_1000;
        regs.rip = 0x4010_00;
        regs.rax = 0x1234;
        regs.cs = 0x33;
        regs.ss = 0x2b;
        let f = build(&regs, 0xdead_beef, &xstate(832)).unwrap();
        assert_eq!(f.parked_rsp(), f.address + 8);
        let sc = 8 + 40;
        assert_eq!(u64_at(&f.bytes, sc + 8 * 13), 0x1234, "rax");
        assert_eq!(u64_at(&f.bytes, sc + 8 * 15), regs.rsp, "rsp");
        assert_eq!(u64_at(&f.bytes, sc + 8 * 16), regs.rip, "rip");
        assert_eq!(u64_at(&f.bytes, 8 + 296), 0xdead_beef, "mask");
        let fpstate = u64_at(&f.bytes, sc + 184);
        assert_eq!(fpstate % 64, 0);
        assert!(fpstate + 832 + 4 <= regs.rsp - RED_ZONE, "the red zone is left alone");
        let fp = (fpstate - f.address) as usize;
        assert_eq!(f.bytes[fp], 0x7f);
        assert_eq!(u32::from_ne_bytes(f.bytes[fp + 832..fp + 836].try_into().unwrap()), FP_XSTATE_MAGIC2);
        let sw = |off: usize| u32::from_ne_bytes(f.bytes[fp + SW_BYTES + off..fp + SW_BYTES + off + 4].try_into().unwrap());
        assert_eq!((sw(0), sw(4), sw(8), sw(16)), (FP_XSTATE_MAGIC1, 836, 0xe7, 832), "software bytes");
        assert_eq!(f.bytes.len(), fp + 836);
        assert_eq!(build(&regs, 0, &[0u8; 1024]).err(), Some(FrameError::NoXstate));
    }

    #[test]
    fn finds_both_sigreturn_sequences() {
        let code = [0x90, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05, 0xc3];
        assert_eq!(find_sigreturn(&code, 0x1000), Some(0x1001));
        let code = [0xc3, 0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05];
        assert_eq!(find_sigreturn(&code, 0x1000), Some(0x1001));
        assert_eq!(find_sigreturn(&[0x0f, 0x05], 0), None);
    }
}
