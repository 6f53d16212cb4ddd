//! Programs nobody here wrote: coreutils `sleep`, python3 loops, a Java program on the JVM,
//! PostgreSQL, tmux, nginx, memcached.

mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::time::Duration;

fn spawn_sleep() -> Workload {
    let w = Workload::spawn_program("sleep", "sleep", &["1000"]);
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    w
}

/// `sleep 1000` restored detached: same pid, same cmdline (and the rest of /proc),
/// still asleep in clock_nanosleep a while later (the interrupted sleep was resumed,
/// not turned into an exit), and it dies of the SIGTERM we send it.
#[test]
fn coreutils_sleep_keeps_sleeping_with_same_pid_after_restore() {
    let mut w = spawn_sleep();
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    assert_same_proc(&before, &after, &[]);
    assert_eq!(before.entries.get("cmdline"), after.entries.get("cmdline"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(proc_state(w.pid), Some('S'), "restored sleep is not sleeping\n{}", w.log_text());
    assert_eq!(blocked_syscall(w.pid), Some(SYS_CLOCK_NANOSLEEP), "restored sleep is not in clock_nanosleep");
    w.signal(libc::SIGTERM);
    assert_eq!(w.reap(Duration::from_secs(5)), Some(Exit::Signal(libc::SIGTERM)));
}

/// `sleep 1000` restored attached: crust waits for it and, when the test kills it with
/// SIGTERM, exits with 128+15.
#[test]
fn attached_restore_of_sleep_exits_128_plus_signal_when_it_is_killed() {
    let mut w = spawn_sleep();
    w.dump();
    w.restore_attached();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(proc_state(w.pid), Some('S'), "restored sleep is not sleeping\n{}", w.attached_output());
    w.signal(libc::SIGTERM);
    let e = w.wait_attached(Duration::from_secs(10));
    assert_eq!(e, Exit::Code(128 + libc::SIGTERM), "crust restore should exit 143\n{}", w.attached_output());
}

/// `sleep 1000` restored attached: Ctrl-C (SIGINT) or SIGTERM sent to the waiting crust is
/// passed on to the restored process, as a shell passes it to its job: sleep dies of it and
/// crust exits with 128 + its number.
#[test]
fn attached_restore_passes_sigint_and_sigterm_on_to_the_restored_process() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut w = spawn_sleep();
        w.dump();
        w.restore_attached();
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(proc_state(w.pid), Some('S'), "restored sleep is not sleeping\n{}", w.attached_output());
        let crust_pid = w.attached.as_ref().unwrap().child.id() as i32;
        let crust_fd = pidfd_open(crust_pid).expect("pidfd of the attached crust");
        pidfd_signal(&crust_fd, sig).expect("signalling the attached crust");
        let e = w.wait_attached(Duration::from_secs(10));
        assert_eq!(e, Exit::Code(128 + sig), "crust restore should exit with the signal it passed on\n{}", w.attached_output());
        assert!(wait_gone(w.pid, Duration::from_secs(5)), "the restored sleep outlived the signal");
    }
}

const PY_COUNTER: &str = r#"
import sys, time
i = 0
while True:
    with open(sys.argv[1], 'a') as f:
        f.write('%d\n' % i)
    i += 1
    time.sleep(0.1)
"#;

fn counter_lines(path: &std::path::Path) -> Vec<u64> {
    let s = fs::read_to_string(path).unwrap_or_default();
    // a line being written at this instant may be incomplete: only count full lines
    let complete = match s.rfind('\n') {
        Some(i) => &s[..=i],
        None => "",
    };
    complete.lines().map(|l| l.parse().unwrap_or_else(|_| panic!("bad line {l:?} in {}", path.display()))).collect()
}

/// A python3 loop appending an incrementing counter to a file every 100 ms continues
/// after restore from where it was: the file holds 0, 1, 2, ... with no gap, no
/// repeat and no restart from 0.
#[test]
fn python_counter_loop_continues_from_where_it_was() {
    let mut w = Workload::spawn_program("python-counter", "python3", &["-c", PY_COUNTER, "counter.txt"]);
    let file = w.dir.path.join("counter.txt");
    wait_until("5 lines from the python loop", Duration::from_secs(15), || counter_lines(&file).len() >= 5);
    let before = w.snapshot();
    w.dump();
    let at_dump = counter_lines(&file);
    w.restore_detached();
    let after = w.snapshot();
    assert_same_proc(&before, &after, &[]);
    wait_until("5 more lines after the restore", Duration::from_secs(15), || counter_lines(&file).len() >= at_dump.len() + 5);
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(5));
    let all = counter_lines(&file);
    let expected: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, expected, "counter file is not 0,1,2,... ({} lines at the dump, {} now)", at_dump.len(), all.len());
}

/// python3 appending a line to its log (kept open) every 50 ms.
const PY_LOGGER: &str = r#"
import sys, time
log = open(sys.argv[1], 'a', buffering=1)
i = 0
while True:
    log.write('line %d\n' % i)
    i += 1
    time.sleep(0.05)
"#;

/// `dump -R` of a program writing a log, which goes on writing; later (after a crash, here a
/// SIGKILL) the checkpoint is restored: the log grew meanwhile, which the restored program
/// lives with, so the restore goes on with one warning naming the log, and the program appends
/// again from its restored state (its counter starts over from where the checkpoint was).
#[test]
fn checkpoint_of_a_program_writing_a_log_restores_after_it_went_on() {
    let mut w = Workload::spawn_program("py-logger", "python3", &["-c", PY_LOGGER, "app.log"]);
    let log = w.dir.path.join("app.log");
    let lines = |p: &std::path::Path| fs::read_to_string(p).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();
    wait_until("a few log lines", Duration::from_secs(15), || lines(&log).len() >= 5);
    w.dump_with(&["-R"]).assert_success();
    let at_dump = lines(&log).len();
    wait_until("the log to grow after the checkpoint", Duration::from_secs(15), || lines(&log).len() >= at_dump + 5);
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(5));
    let at_crash = lines(&log).len();
    let out = w.restore_detached();
    assert!(out.text().contains("app.log changed since the dump"), "no warning naming the log:\n{out}");
    wait_until("the restored program to append again", Duration::from_secs(15), || lines(&log).len() >= at_crash + 3);
    let after: Vec<String> = lines(&log)[at_crash..].to_vec();
    let first: usize = after[0].trim_start_matches("line ").parse().unwrap();
    assert!(first + 4 >= at_dump && first <= at_dump, "the restored program went on from line {first}, the checkpoint was at {at_dump}");
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(5));
}

/// coreutils `tail -f`, blocked in poll (no timeout) on its inotify descriptor: restored, the
/// poll goes on as the kernel would have restarted it (it died with "Interrupted system call"
/// when crust turned the call into EINTR), and lines appended after the restore come out.
#[test]
fn tail_follow_blocked_in_poll_goes_on_after_restore() {
    let mut w =
        Workload::spawn_program_with("tail-f", "sh", &["-c", "echo one > log; echo READY > status; exec tail -f log > out 2>&1"], |_| {});
    let out = w.dir.path.join("out");
    wait_until("tail to print the first line", Duration::from_secs(10), || fs::read_to_string(&out).is_ok_and(|t| t.contains("one")));
    wait_in_syscall(w.pid, libc::SYS_poll, Duration::from_secs(5));
    w.dump();
    w.restore_detached();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        proc_state(w.pid).map(is_live_state),
        Some(true),
        "tail is gone after restore:\n{}",
        fs::read_to_string(&out).unwrap_or_default()
    );
    fs::OpenOptions::new().append(true).open(w.dir.path.join("log")).unwrap().write_all(b"two\n").unwrap();
    wait_until("tail to print the line appended after restore", Duration::from_secs(10), || {
        fs::read_to_string(&out).is_ok_and(|t| t.contains("two"))
    });
    let text = fs::read_to_string(&out).unwrap();
    assert_eq!(text, "one\ntwo\n", "tail's output");
}

/// Java (the JVM: about twenty threads of its own, a JIT, a garbage collector, a shared
/// performance-data mapping under /tmp/hsperfdata_root): a pool of four worker threads fills
/// a map and makes garbage; every 100 ms the main thread checks the whole map against what it
/// must hold (from inside) and appends "<tick> <size>" to a file. The restored JVM goes on from
/// where it was: ticks 0, 1, 2, ... with no gap, repeat or restart, never "BAD", the same
/// threads and /proc state.
const JAVA_COUNTER: &str = r#"
import java.io.*;
import java.util.*;
import java.util.concurrent.*;
public class Counter {
    public static void main(String[] args) throws Exception {
        ConcurrentHashMap<Integer, String> map = new ConcurrentHashMap<>();
        ExecutorService pool = Executors.newFixedThreadPool(4);
        PrintWriter out = new PrintWriter(new FileWriter(args[0], true), true);
        for (long tick = 0; ; tick++) {
            final long t = tick;
            List<Future<?>> jobs = new ArrayList<>();
            for (int w = 0; w < 4; w++) {
                final int id = w;
                jobs.add(pool.submit(() -> {
                    StringBuilder garbage = new StringBuilder();
                    for (int i = 0; i < 2000; i++) garbage.append(i);
                    map.put((int) (t * 4 + id), "v" + (t * 4 + id) + ":" + garbage.length());
                }));
            }
            for (Future<?> j : jobs) j.get();
            boolean ok = map.size() == (t + 1) * 4;
            for (long k = 0; ok && k < (t + 1) * 4; k++) ok = map.getOrDefault((int) k, "").startsWith("v" + k + ":");
            out.println(ok ? t + " " + map.size() : "BAD " + t);
            Thread.sleep(100);
        }
    }
}
"#;

/// Lines "<tick> <size>" of the Java counter (complete lines only); panics on "BAD".
fn java_ticks(path: &std::path::Path) -> Vec<u64> {
    let s = fs::read_to_string(path).unwrap_or_default();
    let complete = s.rfind('\n').map_or("", |i| &s[..=i]);
    complete
        .lines()
        .map(|l| {
            let (tick, size) = l.split_once(' ').unwrap_or_else(|| panic!("Java counter line {l:?} in {}", path.display()));
            let tick: u64 = tick.parse().unwrap_or_else(|_| panic!("Java counter line {l:?}"));
            assert_eq!(size.parse::<u64>().ok(), Some((tick + 1) * 4), "Java counter line {l:?}: the map lost or gained entries");
            tick
        })
        .collect()
}

#[test]
fn java_program_with_a_thread_pool_continues_from_where_it_was() {
    let source = TempDir::new("java-src");
    let file = source.path.join("Counter.java");
    fs::write(&file, JAVA_COUNTER).unwrap();
    let file = file.to_string_lossy().into_owned();
    let mut w = Workload::spawn_program("java-counter", "java", &["-Xmx128m", &file, "ticks.txt"]);
    let ticks = w.dir.path.join("ticks.txt");
    wait_until("5 ticks from the JVM", Duration::from_secs(60), || java_ticks(&ticks).len() >= 5);

    // Running: the JVM is dumped wherever its threads are, and goes on after the restore.
    w.dump();
    let at_dump = java_ticks(&ticks).len();
    w.restore_detached();
    wait_until("5 more ticks after the first restore", Duration::from_secs(30), || java_ticks(&ticks).len() >= at_dump + 5);

    // Stopped (SIGSTOP), so that nothing moves between the snapshot and the freeze (the JVM
    // grows its heaps and starts compiler threads as it likes): /proc is compared exactly,
    // every thread included, and after SIGCONT it goes on again.
    w.signal(libc::SIGSTOP);
    wait_until("the JVM to stop", Duration::from_secs(10), || proc_state(w.pid) == Some('T'));
    let threads_before = fs::read_dir(format!("/proc/{}/task", w.pid)).unwrap().count();
    let before = w.snapshot();
    w.dump();
    let at_dump = java_ticks(&ticks).len();
    w.restore_detached_raw().assert_success();
    wait_until("the restored JVM to be stopped", Duration::from_secs(10), || proc_state(w.pid) == Some('T'));
    // Stopped as it was (the state is checked above; the comparison expects a running one).
    assert_same_proc(&before, &w.snapshot(), &["status:State"]);
    assert_eq!(fs::read_dir(format!("/proc/{}/task", w.pid)).unwrap().count(), threads_before, "threads of the JVM");
    w.signal(libc::SIGCONT);
    wait_until("10 more ticks after the second restore", Duration::from_secs(30), || java_ticks(&ticks).len() >= at_dump + 10);
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(5));
    let all = java_ticks(&ticks);
    let expected: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, expected, "ticks are not 0,1,2,... ({at_dump} at the second dump, {} now)", all.len());
    assert!(!fs::read_to_string(&ticks).unwrap().contains("BAD"), "the JVM found its map wrong");
}

/// The newest PostgreSQL server binary directory of this machine (Debian's layout).
fn postgres_bindir() -> std::path::PathBuf {
    let mut dirs: Vec<_> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (.ci/run installs it)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("no /usr/lib/postgresql/*/bin/postgres")
}

/// Runs `psql` against the test's server over `host` (a socket directory or 127.0.0.1):
/// its output, or the failure with psql's words.
fn psql(host: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-h", host, "-p", PG_PORT, "-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("psql {sql:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

const PG_PORT: &str = "54329";

/// PostgreSQL (nobody here wrote it): a postmaster and its five helpers (checkpointer,
/// background writer, WAL writer, autovacuum launcher, logical replication launcher),
/// System V and anonymous shared memory, latches, a TCP listener on 127.0.0.1 and a UNIX
/// socket. It holds a table, is dumped and restored: the same six pids, the postmaster's
/// /proc state, the data; new sessions on both listeners (each a backend forked by the
/// restored postmaster) write, CHECKPOINT (which the checkpointer does, woken through
/// shared memory) completes, and a fast shutdown stops the whole restored tree cleanly.
#[test]
fn postgres_server_tree_restores_and_serves() {
    let bin = postgres_bindir();
    let dir = TempDir::new("postgres");
    let data = dir.path.join("data");
    let sock = dir.path.join("sock");
    fs::create_dir(&sock).unwrap();
    let pg_uid = nix::unistd::User::from_name("postgres").unwrap().expect("no postgres user (.ci/run installs PostgreSQL)");
    for p in [&dir.path, &sock] {
        nix::unistd::chown(p, Some(pg_uid.uid), Some(pg_uid.gid)).unwrap();
    }
    use std::os::unix::process::CommandExt;
    let initdb = std::process::Command::new(bin.join("initdb"))
        .args(["-D", &data.to_string_lossy(), "-A", "trust", "-U", "postgres", "--no-sync"])
        .uid(pg_uid.uid.as_raw())
        .gid(pg_uid.gid.as_raw())
        .current_dir(&dir.path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
    let postgres = bin.join("postgres").to_string_lossy().into_owned();
    let (uid, gid) = (pg_uid.uid.as_raw().to_string(), pg_uid.gid.as_raw().to_string());
    let (data_s, sock_s) = (data.to_string_lossy().into_owned(), sock.to_string_lossy().into_owned());
    let args = [
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
        "--",
        &postgres,
        "-D",
        &data_s,
        "-k",
        &sock_s,
        "-p",
        PG_PORT,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
    ];
    let mut w = Workload::spawn_program("postgres", "setpriv", &args);
    wait_until("PostgreSQL to accept connections", Duration::from_secs(30), || psql(&sock_s, "SELECT 1").is_ok());
    psql(&sock_s, "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 1000)").unwrap();
    // Only the five helpers, once the backend of the psql session above has exited.
    let title = |pid: &i32| fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_helper = |pid: &i32| {
        let t = title(pid);
        ["checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication launcher"]
            .iter()
            .any(|h| t.contains(h))
    };
    wait_until("the postmaster to have only its five helpers", Duration::from_secs(15), || {
        let c = children_of(w.pid);
        c.len() == 5 && c.iter().all(is_helper)
    });
    let helpers = children_of(w.pid);
    let before = w.snapshot();
    w.dump();
    for pid in &helpers {
        assert!(wait_gone(*pid, Duration::from_secs(5)), "helper {pid} left after the dump");
    }
    assert!(psql(&sock_s, "SELECT 1").is_err(), "the server still answers after the dump");
    w.restore_detached();
    assert_same_proc(&before, &w.snapshot(), &[]);
    let mut after = children_of(w.pid);
    after.sort();
    let mut expected = helpers.clone();
    expected.sort();
    assert_eq!(after, expected, "the postmaster's helpers after the restore");

    assert_eq!(psql(&sock_s, "SELECT count(*), sum(x) FROM t").unwrap(), "1000|500500", "the table over the UNIX socket");
    psql("127.0.0.1", "INSERT INTO t SELECT generate_series(1001, 1010)").unwrap();
    psql(&sock_s, "CHECKPOINT").unwrap();
    assert_eq!(psql("127.0.0.1", "SELECT count(*), sum(x) FROM t").unwrap(), "1010|510555", "the table over TCP");

    // A fast shutdown: the postmaster tells every helper to stop and exits when they have.
    w.signal(libc::SIGINT);
    let exit = w.reap(Duration::from_secs(30));
    assert!(exit.is_some(), "the restored postmaster did not shut down");
    for pid in &helpers {
        assert!(wait_gone(*pid, Duration::from_secs(10)), "helper {pid} left after the shutdown");
    }
    let log = w.log_text();
    assert!(log.contains("database system is shut down"), "no clean shutdown in the server's log:\n{log}");
}

/// Runs `tmux -S SOCK ARGS...` (a client of the test's server), its output or its failure.
fn tmux(sock: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args(args)
        .env("TERM", "xterm-256color")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("tmux: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The inodes of the sockets `pid` holds, sorted.
fn socket_inodes(pid: i32) -> Vec<u64> {
    let mut out: Vec<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| fs::read_link(e.path()).ok()).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect();
    out.sort();
    out
}

/// The inodes of the UNIX sockets listening on `path` (/proc/net/unix; a connection accepted
/// there shows the path too, without the listening flag), sorted.
fn listener_inodes(path: &str) -> Vec<u64> {
    let table = fs::read_to_string("/proc/net/unix").unwrap();
    // Fields: Num RefCount Protocol Flags Type St Inode Path.
    let mut out: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[7] == path && f[3] == "00010000").then(|| f[6].parse().ok()).flatten()
        })
        .collect();
    out.sort();
    out
}

/// tmux (nobody here wrote it): a server in the foreground (-D) with a session whose pane runs
/// a shell on a pseudo-terminal. Dumped and restored: the same server and shell pids and
/// /proc state; a new client reaches the restored server through its UNIX socket and lists
/// the session, and keys sent to the pane go through the restored terminal to the shell,
/// which runs them.
#[test]
fn tmux_server_with_a_shell_in_a_pane_restores_and_takes_keys() {
    let dir = TempDir::new("tmux-sock");
    let sock = dir.path.join("sock");
    let sock_s = sock.to_string_lossy().into_owned();
    let mut w = Workload::spawn_program_with("tmux", "tmux", &["-S", &sock_s, "-D"], |cmd| {
        cmd.env("TERM", "xterm-256color");
    });
    wait_until("the tmux server's socket", Duration::from_secs(10), || sock.exists());
    let work = w.dir.path.to_string_lossy().into_owned();
    tmux(&sock, &["new-session", "-d", "-s", "crust", "-c", &work, "sh"]).unwrap();
    wait_until("the pane's shell", Duration::from_secs(10), || children_of(w.pid).len() == 1);
    let shell = children_of(w.pid)[0];
    tmux(&sock, &["send-keys", "-t", "crust", "echo before > before.txt", "Enter"]).unwrap();
    wait_until("the shell to run the keys sent before the dump", Duration::from_secs(10), || file_written(&w.dir.path.join("before.txt")));
    wait_in_syscall(shell, SYS_READ, Duration::from_secs(5));
    // The server closes a client's connection some time after the client (each `tmux` run
    // above) exited: the snapshot is taken once its only socket is its listener.
    wait_until("the tmux server to close its clients' connections", Duration::from_secs(10), || {
        socket_inodes(w.pid) == listener_inodes(&sock_s)
    });
    let before = w.snapshot();
    w.dump();
    assert!(wait_gone(shell, Duration::from_secs(5)), "the shell is left after the dump");
    w.restore_detached();
    assert_same_proc(&before, &w.snapshot(), &[]);
    assert_eq!(children_of(w.pid), vec![shell], "the pane's shell after the restore");
    let sessions = tmux(&sock, &["list-sessions"]).unwrap();
    assert!(sessions.starts_with("crust:"), "the restored server lists {sessions:?}");
    tmux(&sock, &["send-keys", "-t", "crust", "echo after > after.txt", "Enter"]).unwrap();
    wait_until("the shell to run the keys sent after the restore", Duration::from_secs(10), || file_written(&w.dir.path.join("after.txt")));
    assert_eq!(fs::read_to_string(w.dir.path.join("after.txt")).unwrap(), "after\n");
    tmux(&sock, &["kill-server"]).unwrap();
    assert!(w.reap(Duration::from_secs(10)).is_some(), "the restored server did not exit on kill-server");
}

/// An HTTP/1.0 GET of `path` on 127.0.0.1:`port`: the whole answer, or the failure.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A port free on 127.0.0.1 a moment ago, for a program that cannot pick its own.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx (nobody here wrote it): a master and two workers sharing the listening socket, the
/// workers' channels to the master (socketpairs), epoll, the logs. The tree is dumped (gone:
/// nothing answers), restored with the same pids and /proc state, and serves again; the
/// access log goes on in the same file; a reload (SIGHUP) makes two new workers that serve
/// (the master's channels and signal handling work after the restore), and a graceful stop
/// (SIGQUIT) ends the whole tree.
#[test]
fn nginx_master_and_workers_restore_serve_and_reload() {
    let port = free_port();
    let dir = TempDir::new("nginx-site");
    fs::write(dir.path.join("index.html"), "hello from nginx\n").unwrap();
    // The workers run as nginx's unprivileged user: the site must be readable by anyone.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755)).unwrap();
    let conf = format!(
        "worker_processes 2;\npid nginx.pid;\nerror_log error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log access.log;\n  client_body_temp_path body;\n  proxy_temp_path proxy;\n  fastcgi_temp_path fcgi;\n\
         uwsgi_temp_path uwsgi;\n  scgi_temp_path scgi;\n  server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
        dir.path.display()
    );
    let mut w =
        Workload::spawn_program_with("nginx", "nginx", &["-p", ".", "-e", "error.log", "-c", "nginx.conf", "-g", "daemon off;"], |cmd| {
            // The configuration is written into the workload's directory (its cwd) before the exec.
            let cwd = cmd.get_current_dir().unwrap().to_path_buf();
            fs::write(cwd.join("nginx.conf"), &conf).unwrap();
        });
    let workers = |pid: i32| children_of(pid);
    wait_until("nginx to serve", Duration::from_secs(15), || http_get(port, "/").is_ok_and(|a| a.ends_with("hello from nginx\n")));
    // The master forks its workers one after the other (the first may serve before the second
    // is there) and sends each worker the others' channels (SCM_RIGHTS): the snapshot is taken
    // once both are there, every channel message was read, the master waits in sigsuspend and
    // the workers in epoll_wait, so that nothing moves until the freeze.
    let in_flight = |pid: i32| -> u64 {
        let fdinfo = fs::read_dir(format!("/proc/{pid}/fdinfo")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        let scm_fds = |text: String| text.lines().filter_map(|l| l.strip_prefix("scm_fds:")?.trim().parse::<u64>().ok()).sum::<u64>();
        fdinfo.iter().map(|e| scm_fds(fs::read_to_string(e.path()).unwrap_or_default())).sum()
    };
    wait_until("nginx to have its two workers, their channels read", Duration::from_secs(15), || {
        let w2 = workers(w.pid);
        let idle = |pid: &i32, calls: &[i64]| blocked_syscall(*pid).is_some_and(|nr| calls.contains(&nr));
        let (sigsuspend, epoll) = (libc::SYS_rt_sigsuspend, [libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2]);
        w2.len() == 2
            && idle(&w.pid, &[sigsuspend])
            && w2.iter().all(|p| idle(p, &epoll))
            && std::iter::once(w.pid).chain(w2).all(|pid| in_flight(pid) == 0)
    });
    let before_workers = workers(w.pid);
    for &pid in &before_workers {
        w.own(pid);
    }
    let before = w.snapshot();
    w.dump();
    for &pid in &before_workers {
        assert!(wait_gone(pid, Duration::from_secs(5)), "worker {pid} left after the dump");
    }
    assert!(http_get(port, "/").is_err(), "nginx still answers after the dump");
    w.restore_detached();
    assert_same_proc(&before, &w.snapshot(), &[]);
    assert_eq!(workers(w.pid), before_workers, "the workers after the restore");
    for _ in 0..4 {
        let answer = http_get(port, "/").expect("GET after the restore");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from nginx\n"), "after restore: {answer}");
    }
    let log = fs::read_to_string(w.dir.path.join("access.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"GET / HTTP/1.0\" 200")).count(), 5, "the access log after the restore:\n{log}");

    w.signal(libc::SIGHUP);
    let mut reloaded = Vec::new();
    wait_until("nginx to start two new workers", Duration::from_secs(15), || {
        reloaded = workers(w.pid).into_iter().filter(|p| !before_workers.contains(p)).collect();
        reloaded.len() == 2 && before_workers.iter().all(|p| !pid_exists(*p))
    });
    for &pid in &reloaded {
        w.own(pid);
    }
    let answer = http_get(port, "/").expect("GET after the reload");
    assert!(answer.ends_with("hello from nginx\n"), "after the reload: {answer}");
    w.signal(libc::SIGQUIT);
    assert!(w.reap(Duration::from_secs(15)).is_some(), "the restored master did not stop on SIGQUIT");
    for pid in reloaded {
        assert!(wait_gone(pid, Duration::from_secs(10)), "worker {pid} left after the master stopped");
    }
}

/// Runs memcached `command` lines on a fresh connection to 127.0.0.1:`port`, until `until`
/// ends the answer.
fn memcached(port: u16, command: &str, until: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to memcached");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(command.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    while !String::from_utf8_lossy(&answer).ends_with(until) {
        let n = s.read(&mut buf).expect("reading memcached's answer");
        assert!(n > 0, "memcached closed the connection: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// memcached (nobody here wrote it): libevent, a listener thread and four workers fed through
/// pipes, its own slab allocator over 64 MiB. Its items (a small one and one of 300 KB) and its
/// threads come back; it serves new clients and keeps counting from where it was.
#[test]
fn memcached_keeps_its_items_and_threads() {
    let port = free_port();
    let port_s = port.to_string();
    let mut w = Workload::spawn_program(
        "memcached",
        "memcached",
        &["-u", "root", "-l", "127.0.0.1", "-p", &port_s, "-U", "0", "-t", "4", "-m", "64"],
    );
    wait_until("memcached to accept a client", Duration::from_secs(15), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let big: String = (0..300_000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let stored = memcached(
        port,
        &format!("set small 5 0 5\r\nhello\r\nset big 0 0 {}\r\n{big}\r\nset n 0 0 1\r\n7\r\n", big.len()),
        "STORED\r\nSTORED\r\nSTORED\r\n",
    );
    assert_eq!(stored, "STORED\r\nSTORED\r\nSTORED\r\n", "test setup");
    // memcached closes a connection some time after its client did: the snapshot is taken
    // once it holds no connection on its port but its listener.
    let connections = || {
        let tcp = fs::read_to_string("/proc/net/tcp").unwrap();
        let local = format!(":{port:04X}");
        // Fields: sl, local, remote, state (0A: listening), ..., inode (the tenth).
        tcp.lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 9 && f[1].ends_with(&local) && f[3] != "0A" && f[9] != "0"
            })
            .count()
    };
    wait_until("memcached to close the test's connections", Duration::from_secs(15), || connections() == 0);
    let threads = |pid: i32| fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    let before_threads = threads(w.pid);
    assert!(before_threads >= 5, "test setup: memcached has {before_threads} threads");
    let before = w.snapshot();
    w.dump();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "memcached still listens after the dump");
    w.restore_detached();
    assert_same_proc(&before, &w.snapshot(), &[]);
    assert_eq!(threads(w.pid), before_threads, "memcached's threads after the restore");
    assert_eq!(memcached(port, "get small\r\n", "END\r\n"), "VALUE small 5 5\r\nhello\r\nEND\r\n");
    assert_eq!(memcached(port, "get big\r\n", "END\r\n"), format!("VALUE big 0 {}\r\n{big}\r\nEND\r\n", big.len()));
    assert_eq!(memcached(port, "incr n 5\r\n", "\r\n"), "12\r\n");
    let stats = memcached(port, "stats\r\n", "END\r\n");
    assert!(stats.contains("STAT curr_items 3\r\n") && stats.contains("STAT threads 4\r\n"), "stats after the restore:\n{stats}");
}

/// python3's multiprocessing (nobody here wrote it): a Manager (a server process holding a
/// dict, a queue and a lock behind UNIX sockets, with the read end of a pipe whose writer is
/// gone) and two worker processes squaring what the queue gives them.
const PY_MANAGER: &str = r#"
import multiprocessing as mp, os, time
def worker(q, d, lock):
    while True:
        item = q.get()
        if item is None:
            break
        with lock:
            d[item] = item * item
if __name__ == '__main__':
    m = mp.Manager(); d = m.dict(); q = m.Queue(); lock = m.Lock()
    ps = [mp.Process(target=worker, args=(q, d, lock)) for _ in range(2)]
    for p in ps: p.start()
    for i in range(10): q.put(i)
    while len(d) < 10: time.sleep(0.02)
    open('ready', 'w').write('%d' % len(d))
    while not os.path.exists('go'): time.sleep(0.05)
    for i in range(10, 20): q.put(i)
    for p in ps: q.put(None)
    for p in ps: p.join()
    open('result', 'w').write('%d %d' % (len(d), sum(d.values())))
    while True: time.sleep(0.1)
"#;

/// The tree of [`PY_MANAGER`], dumped and restored: every process and its /proc state comes
/// back; the restored workers take the next ten items from the restored manager's queue, the
/// dict holds all twenty squares, and the workers end when told.
#[test]
fn python_multiprocessing_manager_and_workers_go_on_after_restore() {
    let mut w = Workload::spawn_program("py-manager", "python3", &["-c", PY_MANAGER]);
    wait_until("the workers to square ten numbers", Duration::from_secs(30), || file_written(&w.dir.path.join("ready")));
    let children = children_of(w.pid);
    assert_eq!(children.len(), 3, "test setup: the manager and two workers: {children:?}");
    for &pid in &children {
        w.own(pid);
    }
    let before: Vec<ProcSnapshot> = std::iter::once(w.pid).chain(children.iter().copied()).map(ProcSnapshot::take).collect();
    w.dump();
    for &pid in &children {
        assert!(wait_gone(pid, Duration::from_secs(5)), "pid {pid} left after the dump");
    }
    w.restore_detached();
    for b in &before {
        assert_same_proc(b, &ProcSnapshot::take(b.pid), &[]);
    }
    fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("the restored workers to square ten more", Duration::from_secs(30), || file_written(&w.dir.path.join("result")));
    let squares: u64 = (0..20u64).map(|i| i * i).sum();
    assert_eq!(fs::read_to_string(w.dir.path.join("result")).unwrap(), format!("20 {squares}"));
}
