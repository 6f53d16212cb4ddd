//! Open files, cwd and umask survive checkpoint/restore.

mod common;
use common::*;

/// files.c: the fd table (numbers, targets), access modes and status flags
/// (O_APPEND, O_DSYNC, O_NOATIME), close-on-exec flags, offsets, offset sharing between
/// dup'ed fds (and not with an independent open), fd 100, /dev/null, /dev/zero,
/// /dev/urandom, a directory fd, the cwd and umask 027 are all as before.
#[test]
fn fd_table_offsets_flags_cwd_and_umask_survive_restore() {
    let mut w = Workload::spawn("files", &[]);
    let before = w.snapshot();
    assert!(before.entries.contains_key("fd:100"), "workload has no fd 100");
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    // fdinfo pos/flags of every fd, fd targets, cwd, Umask are compared
    w.verify_restored(&before, &after, &[], vec![]);
}
