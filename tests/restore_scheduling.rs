//! Scheduler and audit state survive checkpoint/restore: each thread's policy, priority,
//! reset-on-fork flag, nice value and CPU affinity, and the process's audit login uid.

mod common;
use common::*;

/// sched.c: three threads with SCHED_BATCH / SCHED_FIFO+reset-on-fork / SCHED_IDLE, their own
/// nice values and affinities, and login uid 4242. After restore each thread finds its own
/// state (checked from inside), and /proc agrees (policy, priority and nice of every thread
/// in its stat, Cpus_allowed in its status, loginuid).
#[test]
fn scheduling_policy_priority_nice_affinity_and_loginuid_survive_restore() {
    let mut w = Workload::spawn("sched", &[]);
    let view = |pid: i32| {
        let mut out = Vec::new();
        for tid in task_ids(pid) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
            let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
            // After the comm: priority(15) nice(16) rt_priority(37) policy(38), 0-based from state.
            let allowed = proc_status_field(pid, "Cpus_allowed_list").unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            let cpus = status.lines().find(|l| l.starts_with("Cpus_allowed_list")).unwrap_or_default().to_string();
            out.push(format!("{tid}: prio {} nice {} rt_prio {} policy {} {cpus} (process: {allowed})", f[15], f[16], f[37], f[38]));
        }
        out.push(format!("loginuid {}", std::fs::read_to_string(format!("/proc/{pid}/loginuid")).unwrap()));
        out
    };
    let listed_before = view(w.pid);
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let listed_after = view(w.pid);
    let after = w.snapshot();
    let mut extra = Vec::new();
    if listed_after != listed_before {
        extra.push(format!("scheduling in /proc before:\n  {}\nafter:\n  {}", listed_before.join("\n  "), listed_after.join("\n  ")));
    }
    // Writing a login uid starts a new audit session: its number (/proc/PID/sessionid) is the
    // kernel's next, never the old one (no call sets it).
    w.verify_restored(&before, &after, &["sessionid"], extra);
}
