//! Signal state survives checkpoint/restore.

mod common;
use common::*;

/// signals.c: every disposition (handler, flags, restorer, mask), the ignored signals,
/// the blocked mask, thread-private and process-wide pending signals (with queued
/// real-time instances in order, si_code, si_value, si_pid) and sigaltstack are
/// identical after restore; handlers then run on the alternate stack when
/// SA_ONSTACK, with SA_NODEFER/SA_RESETHAND semantics intact.
#[test]
fn signal_dispositions_mask_pending_siginfo_and_altstack_survive_restore() {
    let mut w = Workload::spawn("signals", &[]);
    let before = w.snapshot();
    for k in ["SigBlk", "SigPnd", "ShdPnd", "SigIgn", "SigCgt"] {
        assert!(before.entries.contains_key(&format!("status:{k}")), "no {k} in /proc status");
    }
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    // SigBlk, SigPnd, ShdPnd, SigIgn, SigCgt are all part of the comparison
    w.verify_restored(&before, &after, &[], vec![]);
}
