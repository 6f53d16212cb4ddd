//! Threads and real multi-process programs across a checkpoint:
//!
//! * a pthread pool (tests/workloads/threadpool.c) whose workers sleep in one condition
//!   variable, one thread in pthread_join, each thread with its own TLS, blocked mask,
//!   alternate stack, name and (one of them) a thread-directed pending signal;
//! * python3 programs nobody wrote for crust, dumped in the middle of their work: threads
//!   with a Condition and a Queue, and `multiprocessing` (a Pool of 2 workers, Process +
//!   Pipe, one-way and duplex, Process + Queue). Each writes the numbers its workers computed to a file; the
//!   file must come out complete and correct, every item computed exactly once.
//!
//! Where crust may refuse a program (duplex pipes are UNIX socketpairs), the test checks that
//! the refusal is clear (it names a pid of the tree and what is refused) and that the program
//! runs on untouched and finishes its work; the refusal is printed (`cargo nextest run --no-capture`) so that it shows what to build next.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// Threads as /proc shows them
// ---------------------------------------------------------------------------------

/// What /proc/PID/task/TID says about one thread's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TaskState {
    comm: String,
    sig_blk: String,
    sig_pnd: String,
    shd_pnd: String,
}

fn task_state(pid: i32, tid: i32) -> TaskState {
    let dir = format!("/proc/{pid}/task/{tid}");
    let status = fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    let field =
        |key: &str| status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string())).unwrap_or_default();
    TaskState {
        comm: fs::read_to_string(format!("{dir}/comm")).unwrap_or_default().trim_end().to_string(),
        sig_blk: field("SigBlk"),
        sig_pnd: field("SigPnd"),
        shd_pnd: field("ShdPnd"),
    }
}

/// The system call a sleeping thread is blocked in (None while it runs or if it is gone).
fn task_syscall(pid: i32, tid: i32) -> Option<i64> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------
// 1. a pthread pool
// ---------------------------------------------------------------------------------

/// threadpool.c: worker0..3 blocked in pthread_cond_wait on one condition variable, the
/// joiner in pthread_join(worker0), main in a sleep loop; SIGUSR2 sent with pthread_kill to
/// worker2, which blocks it.
///
/// After the restore: the same six thread ids; per thread (from /proc/PID/task/TID) the same
/// name, blocked mask (all six differ), and pending sets: SIGUSR2 pending in worker2's
/// SigPnd only, not in ShdPnd nor in any other thread; the waiting threads are back in futex.
/// From inside after .go: main broadcasts 40 items, every worker wakes and processes its
/// items (each exactly once, results and sum right), each thread finds its own TLS values,
/// mask, sigaltstack and name; worker2 still has SIGUSR2 pending (sigpending and its SigPnd)
/// and unblocking it runs the SA_ONSTACK handler exactly once, in worker2, on worker2's
/// alternate stack; worker0's exit ends the joiner's pthread_join with worker0's value.
#[test]
fn pthread_pool_wakes_works_and_each_thread_keeps_tls_mask_altstack_name_and_pending_signal() {
    let mut w = Workload::spawn("threadpool", &[]);
    let pid = w.pid;
    let tid = |key: &str| -> i32 { w.ready_field(key).parse().unwrap() };
    let roles: Vec<(&str, i32)> = ["main", "w0", "w1", "w2", "w3", "joiner"].iter().map(|r| (*r, tid(r))).collect();
    let pending_tid = tid("pending_tid");
    let sig: u32 = w.ready_field("pending_sig").parse().unwrap();
    let waiters: Vec<(&str, i32)> = roles.iter().copied().filter(|(r, _)| *r != "main").collect();
    wait_until("the workers and the joiner to block in futex", Duration::from_secs(5), || {
        waiters.iter().all(|(_, t)| task_syscall(pid, *t) == Some(libc::SYS_futex))
    });

    let tids_before = task_ids(pid);
    let states_before: BTreeMap<&str, TaskState> = roles.iter().map(|(r, t)| (*r, task_state(pid, *t))).collect();
    // test setup: the pending signal is where it should be, every mask differs
    let bit = 1u64 << (sig - 1);
    for (role, t) in &roles {
        let s = &states_before[role];
        assert_eq!(parse_hex(&s.sig_pnd) & bit != 0, *t == pending_tid, "test setup: {role} ({t}) SigPnd {}", s.sig_pnd);
        assert_eq!(parse_hex(&s.shd_pnd) & bit, 0, "test setup: SIGUSR2 pending process-wide: {}", s.shd_pnd);
    }
    let masks: std::collections::BTreeSet<&String> = states_before.values().map(|s| &s.sig_blk).collect();
    assert_eq!(masks.len(), roles.len(), "test setup: the threads' masks are not all different: {states_before:?}");
    assert_eq!(tids_before.len(), roles.len(), "test setup: threads {tids_before:?}");

    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let mut problems = Vec::new();
    let tids_after = task_ids(pid);
    if tids_after != tids_before {
        problems.push(format!("thread ids {tids_before:?} before the dump, {tids_after:?} after the restore"));
    }
    for (role, t) in &roles {
        let (b, a) = (&states_before[role], task_state(pid, *t));
        if *b != a {
            problems.push(format!("{role} (tid {t}): before the dump {b:?}, after the restore {a:?}"));
        }
    }
    // a restarted wait goes back to sleep in the same call
    let deadline = Instant::now() + Duration::from_secs(2);
    while !waiters.iter().all(|(_, t)| task_syscall(pid, *t) == Some(libc::SYS_futex)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for (role, t) in &waiters {
        let nr = task_syscall(pid, *t);
        if nr != Some(libc::SYS_futex) {
            problems.push(format!("{role} (tid {t}) is not back in futex after the restore: syscall {nr:?}"));
        }
    }
    let after = w.snapshot();
    let r = w.verify_restored(&before, &after, &[], problems);
    eprintln!("{}", r.status_text.lines().last().unwrap_or(""));
}

// ---------------------------------------------------------------------------------
// Python programs and their process trees
// ---------------------------------------------------------------------------------

/// What must be the same for a process of a running tree before the dump and after the
/// restore (a program that is busy changes its memory map and file offsets all the time,
/// so the full snapshot of tests/common cannot be compared here).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    ppid: i32,
    pgid: i32,
    sid: i32,
    comm: String,
    exe: String,
    cmdline: Vec<u8>,
    tids: Vec<String>,
}

fn identity(pid: i32) -> Option<Identity> {
    let i = proc_info(pid)?;
    Some(Identity {
        ppid: i.ppid,
        pgid: i.pgid,
        sid: i.sid,
        comm: i.comm,
        exe: fs::read_link(format!("/proc/{pid}/exe")).ok()?.to_string_lossy().into_owned(),
        cmdline: fs::read(format!("/proc/{pid}/cmdline")).ok()?,
        tids: task_ids(pid),
    })
}

/// The processes of a test's tree, held by pidfd (root included) so that cleanup can never
/// touch a pid someone else reused. The root itself is reaped by its Workload.
struct Held {
    root: i32,
    fds: BTreeMap<i32, OwnedFd>,
}

impl Held {
    fn new(root: i32) -> Held {
        Held { root, fds: BTreeMap::new() }
    }

    /// The tree now, each process with its identity.
    fn tree(&mut self) -> BTreeMap<i32, Identity> {
        adopt_tree(self.root, &mut self.fds).into_iter().filter_map(|p| Some((p, identity(p)?))).collect()
    }

    /// After a successful dump: every descendant was SIGKILLed and, the root being gone,
    /// is ours (we are a subreaper) to reap. Problems, if any.
    fn reap_dumped(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let deadline = Instant::now() + GONE_TIMEOUT;
        for (&pid, fd) in self.fds.iter().filter(|(p, _)| **p != self.root) {
            loop {
                if let Some(e) = pidfd_try_reap(fd) {
                    if e != Exit::Signal(libc::SIGKILL) {
                        problems.push(format!("pid {pid} ended with {e} after the dump, expected SIGKILL"));
                    }
                    break;
                }
                if pidfd_reaped(fd) {
                    break;
                }
                if Instant::now() > deadline {
                    problems.push(format!("pid {pid} still exists after the dump: {:?}", proc_info(pid)));
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.fds.clear();
        problems
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for fd in self.fds.values() {
            let _ = pidfd_signal(fd, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (&pid, fd) in &self.fds {
            while pid != self.root && !pidfd_reaped(fd) && Instant::now() < deadline {
                let _ = pidfd_try_reap(fd);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Items reported done in the log ("item X by K" lines, see PY_PRELUDE), in order.
fn items_done(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.strip_prefix("item ")?.split_whitespace().next()?.parse().ok()).collect()
}

/// The result file, once the program wrote it (it renames it into place when complete):
/// the numbers and the list of items that arrived more than once.
fn read_result(path: &Path) -> Option<(Vec<u64>, String)> {
    let s = fs::read_to_string(path).ok()?;
    let mut lines = s.lines();
    let numbers = lines.next()?.split_whitespace().map(|v| v.parse().unwrap_or(u64::MAX)).collect();
    let dups = lines.next().unwrap_or("").to_string();
    Some((numbers, dups))
}

/// The checks every python job ends with: exit 0, the numbers f(x) = x * x + 1 for every x
/// below n in order, no duplicate arrivals, and each item reported done exactly once.
fn job_problems(exit: Option<Exit>, result: &Path, log: &str, n: u64) -> Vec<String> {
    let mut p = Vec::new();
    if exit != Some(Exit::Code(0)) {
        p.push(format!("the program ended with {exit:?}, expected exit code 0"));
    }
    match read_result(result) {
        None => p.push(format!("no result file {}", result.display())),
        Some((numbers, dups)) => {
            let expected: Vec<u64> = (0..n).map(|x| x * x + 1).collect();
            if numbers != expected {
                p.push(format!("the result is not x*x+1 for x in 0..{n}: {numbers:?}"));
            }
            if dups != "dups []" {
                p.push(format!("items arrived more than once: {dups}"));
            }
        }
    }
    let mut done = items_done(log);
    done.sort();
    if done != (0..n).collect::<Vec<u64>>() {
        p.push(format!("the log does not report each of the {n} items exactly once: {done:?}"));
    }
    p
}

#[track_caller]
fn assert_no_problems(what: &str, problems: &[String], w: &Workload, extra: &str) {
    assert!(
        problems.is_empty(),
        "{what}: {} problems:\n  {}\n{extra}\n--- program log (tail) ---\n{}",
        problems.len(),
        problems.join("\n  "),
        {
            let l = w.log_text();
            l.get(l.len().saturating_sub(3000)..).unwrap_or(&l).to_string()
        }
    );
}

/// How a dump of a python job in the middle of its work went.
enum Outcome {
    /// dumped, restored and finished correctly
    Restored,
    /// refused clearly; the program ran on and finished correctly
    Refused(String),
}

/// Runs `python3 -c PY_PRELUDE+SCRIPT result.txt N ARGS...`; once `min_done` items are reported and the tree
/// has `procs` processes, dumps it. If the dump succeeds: every process is gone, none
/// wrote the result yet (the dump was mid-work), the restore brings back each pid with the
/// same parent, group, session, name, exe, cmdline and threads, and the program finishes
/// with the right result. If the dump is refused: the refusal names a pid of the tree and
/// says the tree was left running, every process runs on (not stopped, not traced, same
/// identity) and finishes with the right result.
fn python_job_across_dump(label: &str, script: &str, args: &[&str], n: u64, procs: usize, min_done: usize) -> Outcome {
    let (program, n_arg) = (format!("{PY_PRELUDE}{script}"), n.to_string());
    let mut argv = vec!["-c", &program, "result.txt", &n_arg];
    argv.extend_from_slice(args);
    let mut w = Workload::spawn_program(label, "python3", &argv);
    let result = w.dir.path.join("result.txt");
    let mut held = Held::new(w.pid);
    wait_until(&format!("{label}: {min_done} items done and {procs} processes"), Duration::from_secs(20), || {
        items_done(&w.log_text()).len() >= min_done && held.tree().len() == procs
    });
    let before = held.tree();
    let out = w.dump_with(&[]);
    eprintln!("{out}");
    let mut problems = Vec::new();
    let outcome = if out.success() {
        match w.reap(GONE_TIMEOUT) {
            Some(Exit::Signal(libc::SIGKILL)) => {}
            other => problems.push(format!("the dumped root ended with {other:?}, expected SIGKILL")),
        }
        problems.extend(held.reap_dumped());
        for pid in before.keys() {
            if !wait_gone(*pid, GONE_TIMEOUT) {
                problems.push(format!("pid {pid} exists after the dump: {:?}", proc_info(*pid)));
            }
        }
        let done_at_dump = items_done(&w.log_text()).len();
        if result.exists() || done_at_dump as u64 >= n {
            problems.push(format!("the dump came after the work was done ({done_at_dump} of {n} items): the test proves nothing"));
        }
        assert_no_problems(&format!("{label}: after the dump"), &problems, &w, &out.to_string());
        let restore = w.restore_detached();
        eprintln!("{restore}");
        let after = held.tree();
        for (pid, b) in &before {
            match after.get(pid) {
                Some(a) if a == b => {}
                a => problems.push(format!("pid {pid}: before the dump {b:?}, after the restore {a:?}")),
            }
        }
        eprintln!("{label}: dumped with {done_at_dump} of {n} items done, restored");
        Outcome::Restored
    } else {
        let text = out.text();
        if !before.keys().any(|p| has_token(&text, &p.to_string())) {
            problems.push(format!("the refusal names no pid of the tree {:?}", before.keys().collect::<Vec<_>>()));
        }
        if !text.contains("left running") {
            problems.push("the refusal does not say the processes were left running".into());
        }
        for _ in 0..5 {
            for pid in before.keys() {
                let (st, tracer) = (proc_state(*pid), proc_status_field(*pid, "TracerPid"));
                if !matches!(st, Some('R' | 'S')) || tracer.as_deref() != Some("0") {
                    problems.push(format!("pid {pid} after the refused dump: state {st:?}, TracerPid {tracer:?}"));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let now = held.tree();
        for (pid, b) in &before {
            if now.get(pid) != Some(b) {
                problems.push(format!("pid {pid} changed across the refused dump: {b:?} -> {:?}", now.get(pid)));
            }
        }
        let refusal = text.lines().find(|l| l.contains("error")).unwrap_or(text.trim()).to_string();
        eprintln!("{label}: REFUSED: {refusal}");
        Outcome::Refused(refusal)
    };
    let exit = w.reap(Duration::from_secs(60));
    problems.extend(job_problems(exit, &result, &w.log_text(), n));
    for pid in before.keys() {
        if *pid != w.pid && !wait_gone(*pid, Duration::from_secs(5)) {
            problems.push(format!("pid {pid} is left after the program ended: {:?}", proc_info(*pid)));
        }
    }
    assert_no_problems(label, &problems, &w, &out.to_string());
    outcome
}

/// Put before each python program: it reports each item done with one os.write (print()
/// may write the text and the newline separately, and two processes' lines then
/// interleave), and writes the result file (argv[1]) when complete: x*x+1 for each x below
/// n, then the items that arrived more than once.
const PY_PRELUDE: &str = r#"
import os, sys
def item_done(x, who):
    os.write(1, b'item %d by %d\n' % (x, who))
def write_result(got, n):
    with open(sys.argv[1] + '.tmp', 'w') as out:
        out.write(' '.join(str(got[x][0]) for x in range(n)) + '\n')
        out.write('dups %s\n' % sorted(x for x, v in got.items() if len(v) != 1))
    os.rename(sys.argv[1] + '.tmp', sys.argv[1])
"#;

// ---------------------------------------------------------------------------------
// 2. python3 threads: a Condition and a Queue
// ---------------------------------------------------------------------------------

const PY_THREADS: &str = r#"
import queue, threading, time
n = int(sys.argv[2])
q = queue.Queue()
cond = threading.Condition()
got = {}
def worker(k):
    while True:
        x = q.get()
        if x is None:
            return
        time.sleep(0.02)
        with cond:
            got.setdefault(x, []).append(x * x + 1)
            item_done(x, k)
            cond.notify_all()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
for t in threads:
    t.start()
for x in range(n):
    q.put(x)
with cond:
    while len(got) < n:
        cond.wait(timeout=0.5)
for t in threads:
    q.put(None)
for t in threads:
    t.join()
write_result(got, n)
"#;

/// python3 with 3 worker threads taking items from a queue.Queue (blocked in q.get or in
/// time.sleep) and the main thread in Condition.wait(timeout=0.5), dumped after 20 of 150
/// items: the restored process has the same threads and finishes with every result, each
/// item computed exactly once.
#[test]
fn python_threads_with_condition_and_queue_finish_the_work_exactly_once() {
    match python_job_across_dump("py-threads", PY_THREADS, &[], 150, 1, 20) {
        Outcome::Restored => {}
        Outcome::Refused(r) => panic!("crust refused a single python process with threads: {r}"),
    }
}

// ---------------------------------------------------------------------------------
// 3. python3 multiprocessing
// ---------------------------------------------------------------------------------

const PY_POOL: &str = r#"
import multiprocessing as mp, time
def f(x):
    time.sleep(0.03)
    item_done(x, os.getpid())
    return x * x + 1
if __name__ == '__main__':
    n = int(sys.argv[2])
    with mp.get_context('fork').Pool(2) as pool:
        r = pool.map(f, range(n), chunksize=1)
    write_result({x: [v] for x, v in enumerate(r)}, n)
"#;

/// Two multiprocessing.Process workers (fork); argv[3] says how they send their results:
/// "pipe" (one Pipe(duplex=False) each: plain pipes), "duplex" (one Pipe() each: a UNIX
/// socketpair) or "queue" (one multiprocessing.Queue for both: a pipe, a lock that is a
/// POSIX semaphore, and a feeder thread in each sender).
const PY_PROCESSES: &str = r#"
import multiprocessing as mp, time
from multiprocessing.connection import wait
def worker(k, xs, out):
    send = out.put if hasattr(out, 'put') else out.send
    for x in xs:
        time.sleep(0.03)
        send((x, x * x + 1))
        item_done(x, k)
    send(None)
if __name__ == '__main__':
    ctx = mp.get_context('fork')
    n, how = int(sys.argv[2]), sys.argv[3]
    q = ctx.Queue() if how == 'queue' else None
    procs, live, got, ended = [], [], {}, 0
    for k in range(2):
        if q is None:
            r, out = ctx.Pipe(duplex=(how == 'duplex'))
            live.append(r)
        else:
            out = q
        p = ctx.Process(target=worker, args=(k, range(k, n, 2), out))
        p.start()
        if q is None:
            out.close()
        procs.append(p)
    while ended < len(procs):
        for c in ([q] if q is not None else wait(live)):
            m = c.get() if c is q else c.recv()
            if m is None:
                ended += 1
                if c is not q:
                    live.remove(c)
            else:
                got.setdefault(m[0], []).append(m[1])
    for p in procs:
        p.join()
        assert p.exitcode == 0, p.exitcode
    write_result(got, n)
"#;

/// multiprocessing.Pool(2) (fork) mapping f over 80 items, dumped after 10: its locks are
/// POSIX semaphores, shared mappings of deleted files in /dev/shm (restored as ghost files);
/// the restored pool delivers every result exactly once.
#[test]
fn python_multiprocessing_pool_delivers_every_result_across_a_dump() {
    if let Outcome::Refused(r) = python_job_across_dump("py-pool", PY_POOL, &[], 80, 3, 10) {
        panic!("crust refused multiprocessing.Pool: {r}");
    }
}

/// PY_PROCESSES "pipe": two multiprocessing.Process (fork), each sending its results through
/// its own Pipe(duplex=False) (plain pipes, no semaphore): the tree is dumped after 10 of 80 items,
/// restored with its pids, and the parent collects every result exactly once.
#[test]
fn python_multiprocessing_processes_and_pipes_deliver_every_result_after_restore() {
    match python_job_across_dump("py-process-pipe", PY_PROCESSES, &["pipe"], 80, 3, 10) {
        Outcome::Restored => {}
        Outcome::Refused(r) => panic!("crust refused multiprocessing.Process with pipes: {r}"),
    }
}

/// PY_PROCESSES "duplex", with Pipe() (duplex, the default): each pipe is a UNIX socketpair, which crust
/// refuses today (naming the socket); refused or restored, every result arrives once.
#[test]
fn python_multiprocessing_duplex_pipes_deliver_every_result_across_a_dump() {
    if let Outcome::Refused(r) = python_job_across_dump("py-process-duplex", PY_PROCESSES, &["duplex"], 80, 3, 10) {
        assert!(r.contains("socket"), "the duplex pipes were refused for another reason than their sockets: {r}");
    }
}

/// PY_PROCESSES "queue": two multiprocessing.Process (fork) sending results through one
/// multiprocessing.Queue (a pipe, a lock that is a semaphore in /dev/shm, a feeder thread
/// in each sender): dumped after 10 of 80 items, restored, every result arrives once.
#[test]
fn python_multiprocessing_queue_delivers_every_result_across_a_dump() {
    if let Outcome::Refused(r) = python_job_across_dump("py-process-queue", PY_PROCESSES, &["queue"], 80, 3, 10) {
        panic!("crust refused multiprocessing.Process with a Queue: {r}");
    }
}

/// A child forked by a thread other than the main thread is the process's child too: /proc
/// lists it under that thread only. The dump takes it (it was missed, silently, and kept
/// running), kills it with the tree, and the restore brings it back under its parent.
#[test]
fn a_child_forked_by_a_second_thread_is_part_of_the_tree() {
    const PY: &str = r#"
import subprocess, threading, time
holder = {}
started = threading.Event()
def start():
    holder['child'] = subprocess.Popen(['sleep', '1000'])
    started.set()
    while True:  # the child stays this thread's while the thread lives
        time.sleep(0.1)
threading.Thread(target=start, daemon=True).start()
started.wait()
open('ready', 'w').write('%d\n' % holder['child'].pid)
while True:
    time.sleep(0.1)
"#;
    let mut w = Workload::spawn_program("py-thread-fork", "python3", &["-c", PY]);
    wait_until("python3 to start its child", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let child: i32 = std::fs::read_to_string(w.dir.path.join("ready")).unwrap().trim().parse().unwrap();
    let leader_children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", w.pid, w.pid)).unwrap();
    assert!(!leader_children.split_whitespace().any(|c| c == child.to_string()), "test setup: the leader lists the child");
    w.dump();
    assert!(wait_gone(child, Duration::from_secs(5)), "the child forked by a thread was left out of the dump (still running)");
    w.restore_detached();
    let ppid = proc_status_field(child, "PPid");
    assert_eq!(ppid.as_deref(), Some(w.pid.to_string().as_str()), "the child is not back under its parent");
    assert_eq!(proc_status_field(child, "Name").as_deref(), Some("sleep"));
    // The tree's own cleanup kills only the root: the child is ours to end, by pid.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL);
}
