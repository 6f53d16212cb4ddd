//! membarrier(2) registrations of a process (MEMBARRIER_CMD_REGISTER_*): a program that
//! registered for expedited barriers gets EPERM from them unless it is registered again.
//!
//! Dump asks the process itself (MEMBARRIER_CMD_GET_REGISTRATIONS, Linux 6.3+); restore
//! registers it again for each command, from inside.

use anyhow::{Context, Result};

use super::{DumpCtx, RestoreCtx};

const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// The REGISTER_* commands, each one bit, as GET_REGISTRATIONS reports them.
const REGISTER_COMMANDS: [(u64, &str); 4] = [
    (1 << 2, "REGISTER_GLOBAL_EXPEDITED"),
    (1 << 4, "REGISTER_PRIVATE_EXPEDITED"),
    (1 << 6, "REGISTER_PRIVATE_EXPEDITED_SYNC_CORE"),
    (1 << 8, "REGISTER_PRIVATE_EXPEDITED_RSEQ"),
];

/// The process's registrations (0 when the kernel cannot tell: before 6.3, or no membarrier).
pub fn dump(ctx: &mut DumpCtx) -> Result<u32> {
    match ctx.remote.syscall_raw(libc::SYS_membarrier, &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0]) {
        Ok(mask) if mask >= 0 => Ok(mask as u32),
        Ok(_) => Ok(0),
        Err(e) => Err(e).with_context(|| format!("pid {}: membarrier(GET_REGISTRATIONS)", ctx.pid)),
    }
}

pub fn restore(ctx: &mut RestoreCtx, registrations: u32) -> Result<()> {
    for (cmd, name) in REGISTER_COMMANDS {
        if registrations as u64 & cmd != 0 {
            ctx.remote
                .syscall(&format!("membarrier({name})"), libc::SYS_membarrier, &[cmd, 0, 0])
                .with_context(|| format!("pid {}: registering for membarrier {name} again", ctx.pid))?;
        }
    }
    Ok(())
}
