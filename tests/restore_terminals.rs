//! Terminals: the settings of a shell job's terminal (--shell-job), and pseudo-terminal pairs
//! whose master and slave are both held inside the dumped tree.

mod common;
#[path = "common/terminal.rs"]
mod terminal;
use common::*;
use terminal::*;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

/// The job of a shell: puts its terminal in raw mode and sets its window size to 111x37 (as
/// less, top or an editor do), then answers each byte typed at once with `<got N>`; `q`
/// checks, from inside, that termios and window size are still what it set.
const RAW_JOB: &str = r#"
import fcntl, os, signal, struct, sys, termios, time, tty
status = sys.argv[1]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
job = os.fork()
if job == 0:
    os.setpgid(0, 0)
    for _ in range(5000):
        if os.tcgetpgrp(0) == os.getpgrp():
            break
        time.sleep(0.001)
    tty.setraw(0)
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 111, 3, 4))
    want = termios.tcgetattr(0)
    st("READY shell=%d job=%d" % (os.getppid(), os.getpid()))
    while True:
        b = os.read(0, 1)
        if not b:
            st("FAIL job: end of file")
            os._exit(1)
        if b == b"q":
            now = termios.tcgetattr(0)
            ws = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
            ok = now == want and ws == (37, 111, 3, 4)
            st(("PASS job" if ok else "FAIL job") + " termios %r (set %r) winsize %r" % (now, want, ws))
            os._exit(0 if ok else 1)
        os.write(1, b"<got %d>" % b[0])
os.setpgid(job, job)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
os.tcsetpgrp(0, job)
os.waitpid(job, 0)
while True:
    signal.pause()
"#;

/// A shell job that set its terminal raw and resized it is dumped with -j and restored with
/// -j by a crust running on the same terminal, left cooked and 80x24 meanwhile (as the shell
/// leaves it): the terminal is raw and 111x37 again before the job runs. From outside: the
/// master reads the very termios (flags, control characters, speeds) and window size of the
/// dump; a byte typed reaches the job at once without Enter and is not echoed. From inside:
/// tcgetattr and TIOCGWINSZ give what the job had set.
#[test]
fn shell_job_gets_its_raw_mode_and_window_size_back() {
    let (mut master, slave) = openpty();
    let slave_for_shell = slave.try_clone().unwrap();
    let mut w = Workload::spawn_program_with("rawjob", "setsid", &["-c", "python3", "-c", RAW_JOB, "status"], move |cmd| {
        on_terminal(cmd, &slave_for_shell);
    });
    let shell = w.pid;
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let job: i32 = ready_field(&line, "job").unwrap().parse().unwrap();
    w.own(job);
    let mut seen = String::new();
    master.write_all(b"a").unwrap();
    assert!(read_until(&mut master, &mut seen, "<got 97>"), "the job does not answer before the dump: {seen:?}");
    assert_eq!(seen, "<got 97>", "raw mode: the byte is not echoed");
    let before = terminal_state(master.as_raw_fd());
    assert_eq!((before.1.ws_col, before.1.ws_row), (111, 37));
    assert_eq!(before.0.c_lflag & (libc::ICANON | libc::ECHO), 0, "the job set its terminal raw");

    let img = w.image_dir.to_string_lossy().into_owned();
    crust(["dump", "-t", &job.to_string(), "-D", &img, "-j"]).assert_success();
    assert!(wait_gone(job, Duration::from_secs(5)) || proc_state(job) == Some('Z'), "the job survived its dump");
    // SAFETY: kill takes integers only; the shell is our child.
    unsafe { libc::kill(shell, libc::SIGKILL) };
    let _ = w.reap(Duration::from_secs(5));
    assert!(wait_gone(job, Duration::from_secs(5)), "pid {job} still taken");
    make_cooked(master.as_raw_fd());
    assert!(!same_state(&before, &terminal_state(master.as_raw_fd())), "the terminal was made cooked again");

    let mut restore = Command::new("setsid");
    restore.args(["-c", crust_bin(), "restore", "-j", "-D", &img]);
    on_terminal(&mut restore, &slave);
    let mut crust_proc = restore.spawn().unwrap();
    wait_released(job);
    let after = terminal_state(master.as_raw_fd());
    assert!(same_state(&before, &after), "the terminal's settings after restore:\n{}\nat dump:\n{}", describe(&after), describe(&before));

    seen.clear();
    master.write_all(b"b").unwrap();
    assert!(read_until(&mut master, &mut seen, "<got 98>"), "the restored job does not get a byte typed without Enter: {seen:?}");
    // crust's own progress line on its terminal ends with an erase-line sequence.
    let job_output = seen.rsplit("\u{1b}[2K").next().unwrap();
    assert_eq!(job_output, "<got 98>", "the byte was echoed: the terminal is not raw ({seen:?})");
    master.write_all(b"q").unwrap();
    let status = wait_exit(&mut crust_proc, || format!("crust restore did not end with the job: {}", w.status_text()));
    assert!(w.status_text().contains("PASS job"), "{}", w.status_text());
    assert!(status.success(), "crust restore -j exited with {status}");
}

/// A parent holding the master of a pseudo-terminal (pty.fork: the child is a session leader
/// whose controlling terminal is the slave, on its fds 0-2) and a child answering each line
/// read from its terminal (and holds /dev/tty at fd 10, through which it answers `check`).
/// The child turns echo off, sets ^H as erase and a 132x50 window;
/// before READY the child has written a line the parent has not read yet, and the parent has
/// typed an unfinished line the child has not read yet. After `.go` the parent checks, from
/// inside: the unread line is there first, finishing the typed line gets it answered whole,
/// the pair's termios and window size (through the master) and its index are the same, and
/// the child finds its own (termios, window size, controlling terminal, foreground, session).
const FORKPTY: &str = r#"
import fcntl, os, pty, select, struct, sys, termios, time
status = sys.argv[1]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
def winsize(fd):
    return struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
TIOCGPTN = 0x80045430
child, master = pty.fork()
if child == 0:
    t = termios.tcgetattr(0)
    t[3] &= ~termios.ECHO
    t[6][termios.VERASE] = b"\x08"
    termios.tcsetattr(0, termios.TCSANOW, t)
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 7, 9))
    want = (termios.tcgetattr(0), winsize(0), os.ttyname(0))
    os.dup2(os.open("/dev/tty", os.O_RDWR), 10)
    os.write(1, b"child-ready\n")
    while True:
        line = os.read(0, 1024).decode()
        if not line:
            os._exit(3)
        line = line.rstrip("\n")
        if line == "prep":
            os.write(1, b"queued-output\n")
        elif line == "check":
            now = (termios.tcgetattr(0), winsize(0), os.ttyname(0))
            fg = os.tcgetpgrp(0) == os.getpgrp() and os.getsid(0) == os.getpid()
            devtty = winsize(10) == want[1] and os.tcgetpgrp(10) == os.getpgrp()
            answer = b"ok" if now == want and fg and devtty else repr((now, want, fg, devtty)).encode()
            os.write(10, b"check:%s\n" % answer)
        elif line == "quit":
            os._exit(0)
        else:
            os.write(1, ("echo:" + line.upper() + "\n").encode())
seen = b""
def read_until(needle, timeout=10):
    global seen
    deadline = time.time() + timeout
    while needle not in seen and time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            seen += os.read(master, 4096)
    found = needle in seen
    seen = seen[seen.index(needle) + len(needle):] if found else seen
    return found
def fail(why):
    st("FAIL " + why + " (seen %r)" % seen)
    sys.exit(1)
if not read_until(b"child-ready"):
    fail("child not ready")
os.write(master, b"hello\n")
if not read_until(b"echo:HELLO"):
    fail("no echo before the dump")
os.write(master, b"prep\n")
time.sleep(0.3)
os.write(master, b"typed-ahead")
time.sleep(0.2)
index = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
state = (termios.tcgetattr(master), winsize(master))
st("READY parent=%d child=%d index=%d" % (os.getpid(), child, index))
for _ in range(6000):
    if os.path.exists(status + ".go"):
        break
    time.sleep(0.01)
r, _, _ = select.select([master], [], [], 2)
first = os.read(master, 4096) if r else b""
if not first.startswith(b"queued-output\r\n"):
    fail("the line written before the dump is not the first thing read: %r" % first)
seen = first[len(b"queued-output\r\n"):]
os.write(master, b" more\n")
if not read_until(b"echo:TYPED-AHEAD MORE\r\n"):
    fail("the line typed before the dump did not come back whole")
os.write(master, b"check\n")
if not read_until(b"check:ok"):
    fail("the child's terminal is not as it set it")
now_index = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
now_state = (termios.tcgetattr(master), winsize(master))
if now_index != index or now_state != state:
    fail("pair changed: index %d -> %d, %r -> %r" % (index, now_index, state, now_state))
os.write(master, b"quit\n")
_, code = os.waitpid(child, 0)
if code != 0:
    fail("child ended with %d" % code)
st("PASS pair index %d" % index)
"#;

/// fdinfo's tty-index of the master fd, the slave's link in the child, and the child's
/// controlling terminal and its foreground group (/proc/PID/stat tty_nr, tpgid), session.
fn pty_proc_state(parent: i32, child: i32) -> (String, String, String) {
    let master_fd = std::fs::read_dir(format!("/proc/{parent}/fd"))
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "/dev/ptmx"))
        .expect("the parent holds /dev/ptmx")
        .file_name();
    let fdinfo = std::fs::read_to_string(format!("/proc/{parent}/fdinfo/{}", master_fd.to_string_lossy())).unwrap();
    let index = fdinfo.lines().find(|l| l.starts_with("tty-index:")).unwrap_or("").split_whitespace().last().unwrap_or("").to_string();
    let links: Vec<String> = [0, 1, 2, 10]
        .iter()
        .map(|fd| std::fs::read_link(format!("/proc/{child}/fd/{fd}")).unwrap().to_string_lossy().into_owned())
        .collect();
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // After the comm: state(0) ppid(1) pgrp(2) session(3) tty_nr(4) tpgid(5).
    (index, links.join(" "), format!("pgrp {} session {} tty_nr {} tpgid {}", f[2], f[3], f[4], f[5]))
}

fn spawn_forkpty() -> (Workload, i32, String) {
    let mut w = Workload::spawn_program("forkpty", "python3", &["-c", FORKPTY, "status"]);
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let child: i32 = ready_field(&line, "child").unwrap().parse().unwrap();
    w.own(child);
    let index = ready_field(&line, "index").unwrap();
    (w, child, index)
}

/// The pair comes back with its index, settings, both queues, and the child's controlling
/// terminal: see FORKPTY for what is checked from inside; from /proc, the master's tty-index,
/// the child's fds 0-2 on /dev/pts/N and fd 10 on /dev/tty, its terminal (tty_nr) and foreground group (tpgid).
#[test]
fn pty_pair_comes_back_with_index_settings_queues_and_controlling_terminal() {
    let (mut w, child, index) = spawn_forkpty();
    let before = pty_proc_state(w.pid, child);
    assert_eq!(before.0, index, "fdinfo tty-index");
    assert_eq!(before.1, format!("/dev/pts/{index} /dev/pts/{index} /dev/pts/{index} /dev/tty"));
    w.dump();
    assert!(wait_gone(child, GONE_TIMEOUT), "the child survived the dump");
    w.restore_detached();
    w.own(child);
    let after = pty_proc_state(w.pid, child);
    assert_eq!(before, after, "/proc before the dump and after the restore");
    w.go().assert_pass();
}

/// dump -R reads the queues and puts them back: the tree goes on as if nothing happened.
#[test]
fn pty_pair_dump_leave_running_leaves_queues_as_they_were() {
    let (mut w, child, _) = spawn_forkpty();
    let before = pty_proc_state(w.pid, child);
    w.dump_with(&["-R"]).assert_success();
    assert_eq!(before, pty_proc_state(w.pid, child));
    w.go().assert_pass();
}

/// Tick numbers a program printed, in order.
fn ticks(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok()).collect()
}

/// A real program: `script` runs a shell loop on a pseudo-terminal it made (it holds the
/// master and copies the output to its own stdout; the shell is a session leader with the
/// slave as its terminal). Dumped, restored: the ticks go on where they stopped, none lost or
/// repeated (those written on the terminal but not yet copied came back in its queue), and
/// the shell has the same terminal, session and foreground group.
#[test]
fn script_on_its_own_pseudo_terminal_goes_on_after_restore() {
    let cmd = "i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done";
    let mut w = Workload::spawn_program("script", "script", &["-q", "-c", cmd, "/dev/null"]);
    wait_until("script's shell ticking", Duration::from_secs(10), || ticks(&w.log_text()).len() >= 5);
    let shell =
        children_of(w.pid).into_iter().find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() != "sleep"));
    let shell = shell.expect("script's shell");
    w.own(shell);
    let state = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<String> = stat.rsplit(')').next().unwrap().split_whitespace().map(String::from).collect();
        (f[3].clone(), f[4].clone(), f[5].clone(), std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap())
    };
    let before = state(shell);
    w.dump();
    // The killed shell and its sleep (whichever sleep it had forked by the freeze, maybe one
    // younger than any we could list before the dump) are orphans reparented to the test, a
    // subreaper: every child the test has now is one of them, to reap before the restore
    // needs their pids (a sleep that ended before the dump was the shell's to reap, not ours).
    let us = std::process::id() as i32;
    for _ in 0..10 {
        let orphans = children_of(us);
        if orphans.is_empty() {
            break;
        }
        for pid in orphans {
            let _ = waitpid_timeout(pid, Duration::from_secs(5));
        }
    }
    let at_dump = ticks(&w.log_text()).len();
    w.restore_detached();
    wait_until("the ticks going on", Duration::from_secs(10), || ticks(&w.log_text()).len() >= at_dump + 10);
    assert_eq!(state(shell), before, "the shell's session, terminal (tty_nr), foreground group and fd 1");
    let all = ticks(&w.log_text());
    let expected: Vec<u32> = (0..all.len() as u32).collect();
    assert_eq!(all, expected, "every tick once, in order");
}

/// Holds a pseudo-terminal in a way crust refuses, in a child `crust dump -t` is pointed at:
/// `outside` (the master is shared with the parent, outside the dump), `slave_outside` (the
/// child holds the master, the parent its slave), `status` (packet mode with a status byte unread), `full` (5000 bytes
/// written on the slave, more than the master's buffer holds), `full_input` (5000 bytes typed
/// into a raw slave), `session` (the slave is the
/// controlling terminal of the parent's session), `pkt_extproc` (packet mode with EXTPROC),
/// `extproc` (a line waiting in canonical mode
/// with EXTPROC). After `.go` the child checks
/// that the refused dump left the pair as it was.
const REFUSED_PTY: &str = r#"
import fcntl, os, select, signal, struct, sys, termios, time, tty
status, mode = sys.argv[1], sys.argv[2]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
def wait_go():
    for _ in range(6000):
        if os.path.exists(status + ".go"):
            break
        time.sleep(0.01)
def read_all(fd, want):
    got = b""
    os.set_blocking(fd, False)
    deadline = time.time() + 5
    while len(got) < want and time.time() < deadline:
        try:
            got += os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.01)
    return got
master, slave = os.openpty()
if mode == "session":
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
child = os.fork()
if child == 0:
    if mode == "slave_outside":
        os.close(slave)
    if mode == "extproc":
        t = termios.tcgetattr(slave)
        t[3] |= 0x10000
        termios.tcsetattr(slave, termios.TCSANOW, t)
        os.write(master, b"line one\n")
    if mode == "pkt_extproc":
        t = termios.tcgetattr(slave)
        t[3] |= 0x10000
        termios.tcsetattr(slave, termios.TCSANOW, t)
        fcntl.ioctl(master, 0x5420, struct.pack("i", 1))
    if mode == "status":
        fcntl.ioctl(master, 0x5420, struct.pack("i", 1))
        termios.tcflush(slave, termios.TCOFLUSH)
    if mode == "full":
        os.set_blocking(slave, False)
        os.write(slave, b"x" * 5000)
    if mode == "full_input":
        tty.setraw(slave)
        os.set_blocking(master, False)
        os.write(master, b"x" * 5000)
    if mode != "outside":
        time.sleep(0.2)
        st("READY parent=%d child=%d" % (os.getppid(), os.getpid()))
    wait_go()
    if mode == "session":
        os.write(master, b"line one\n")
    if mode in ("outside", "session", "extproc"):
        got = os.read(slave, 100)
        ok = got == b"line one\n"
    elif mode == "slave_outside":
        os.write(master, b"line one\n")
        for _ in range(500):
            if "parent read" in open(status).read():
                break
            time.sleep(0.01)
        got, ok = b"", True
    elif mode == "status":
        got = os.read(master, 100)
        ok = len(got) == 1 and got != b"\0"
    elif mode == "pkt_extproc":
        poller = select.poll()
        poller.register(master, select.POLLPRI)
        got = repr(poller.poll(0)).encode()
        ok = got == b"[]"
    elif mode == "full_input":
        got = read_all(slave, 5000)
        ok = got == b"x" * 5000
    else:
        got = read_all(master, 5000)
        ok = got == b"x" * 5000
    st(("PASS" if ok else "FAIL") + " child read %r" % got[:40])
    os._exit(0)
if mode == "outside":
    st("READY parent=%d child=%d" % (os.getpid(), child))
    wait_go()
    os.write(master, b"line one\n")
elif mode == "slave_outside":
    os.close(master)
    wait_go()
    got = os.read(slave, 100)
    st(("PASS" if got == b"line one\n" else "FAIL") + " parent read %r" % got)
else:
    os.close(master)
    os.close(slave)
os.waitpid(child, 0)
"#;

fn refused_pty(mode: &str, expect: &[&str]) {
    let mut w = Workload::spawn_program("refusedpty", "python3", &["-c", REFUSED_PTY, "status", mode]);
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let child: i32 = ready_field(&line, "child").unwrap().parse().unwrap();
    w.own(child);
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["dump", "-t", &child.to_string(), "-D", &img]);
    out.assert_failure();
    for e in expect {
        assert!(out.text().contains(e), "{e:?} not in:\n{out}");
    }
    assert!(out.text().contains(&format!("pid {child} fd ")), "the refusal names pid and fd:\n{out}");
    assert!(pid_exists(child) && proc_state(child) != Some('Z'), "the refused dump harmed the child");
    std::fs::write(w.go_path(), "go").unwrap();
    w.wait_status_line("PASS", Duration::from_secs(10));
    assert!(!w.status_text().contains("FAIL"), "{}", w.status_text());
}

/// A slave held by a process outside the tree (the pair would be split) is refused.
#[test]
fn pty_slave_held_outside_the_tree_is_refused() {
    refused_pty("slave_outside", &["pseudo-terminal master", "also open in pid"]);
}

/// More input than the slave's buffer holds is refused; every byte is still read afterwards.
#[test]
fn pty_input_beyond_the_slaves_buffer_is_refused_and_left_in_place() {
    refused_pty("full_input", &["typed into it wait unread"]);
}

/// A pair that is the controlling terminal of a session led outside the tree is refused (the
/// restored pair could not be that session's terminal).
#[test]
fn pty_terminal_of_a_session_led_outside_the_tree_is_refused() {
    refused_pty("session", &["controlling terminal of session", "whose leader is not dumped"]);
}

/// Packet mode with EXTPROC is refused: crust could not read the queues without its settings
/// changes being reported to the master's reader; the refused dump reported none.
#[test]
fn pty_packet_mode_with_extproc_is_refused_and_reports_nothing() {
    refused_pty("pkt_extproc", &["packet mode with EXTPROC"]);
}

/// Input waiting in canonical mode with EXTPROC (the kernel then shows no line boundaries) is
/// refused and left in place.
#[test]
fn pty_input_waiting_with_extproc_is_refused_and_left_in_place() {
    refused_pty("extproc", &["EXTPROC"]);
}

/// A packet-mode status byte not read yet cannot be put back: refused, and still there.
#[test]
fn pty_packet_status_waiting_is_refused_and_left_in_place() {
    refused_pty("status", &["packet mode with a status byte"]);
}

/// More output than the master's buffer holds (the rest waits where crust cannot see it) is
/// refused; every byte is still read afterwards.
#[test]
fn pty_output_beyond_the_masters_buffer_is_refused_and_left_in_place() {
    refused_pty("full", &["written on its slave wait unread"]);
}

/// A master shared with a process outside the dumped tree is refused by name; the tree runs on.
#[test]
fn pty_master_held_outside_the_tree_is_refused() {
    refused_pty("outside", &["pseudo-terminal master", "outside the dumped processes"]);
}

/// The index of a pair is part of what the program knows (its slave's name): a restore while
/// another terminal has that index is refused by name, and succeeds once it is free.
#[test]
fn pty_pair_restore_is_refused_while_its_index_is_taken() {
    let (mut w, child, index) = spawn_forkpty();
    w.dump();
    assert!(wait_gone(child, GONE_TIMEOUT));
    // Take /dev/pts/INDEX (and the free ones below it meanwhile).
    let mut held = Vec::new();
    for _ in 0..64 {
        let (m, s) = openpty();
        let name = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap();
        held.push((m, s));
        if name.to_string_lossy() == format!("/dev/pts/{index}") {
            break;
        }
    }
    let taken = held.last().map(|(_, s)| std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap());
    assert_eq!(taken.unwrap().to_string_lossy(), format!("/dev/pts/{index}"), "the test could not take the index");
    let out = w.restore_detached_raw();
    out.assert_failure();
    assert!(out.text().contains(&format!("/dev/pts/{index} is taken")), "{out}");
    assert!(!pid_exists(child), "a refused restore left a process");
    held.clear();
    w.restore_detached();
    w.own(child);
    w.go().assert_pass();
}

/// Three pairs in one process, each in a state a restore must keep: A in packet mode with
/// its slave raw, exclusive, its node mode 600 (as `mesg n` would make it), bytes waiting each way (a packet-mode read of the master gets
/// the slave's bytes after TIOCPKT_DATA; the raw slave reads what was typed); B never
/// unlocked (unlockpt not called: still locked, its slave cannot be opened); C whose slave
/// wrote a last line and was closed (the master reads the line, then EIO); D in packet mode
/// with its slave canonical (IXON on) and bytes waiting each way: putting them back reports
/// no status byte.
const PTY_STATES: &str = r#"
import errno, fcntl, os, select, struct, sys, termios, time, tty
status = sys.argv[1]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
def get(fd, req):
    return struct.unpack("i", fcntl.ioctl(fd, req, b"\0" * 4))[0]
TIOCGPTN, TIOCGPTLCK, TIOCGPKT, TIOCGEXCL, TIOCPKT = 0x80045430, 0x80045439, 0x80045438, 0x80045440, 0x5420
ma, sa = os.openpty()
tty.setraw(sa)
fcntl.ioctl(ma, TIOCPKT, struct.pack("i", 1))
fcntl.ioctl(sa, termios.TIOCEXCL)
os.fchmod(sa, 0o600)
os.write(ma, b"raw-input")
os.write(sa, b"pkt-out")
md, sd = os.openpty()
t = termios.tcgetattr(sd)
t[3] &= ~termios.ECHO
termios.tcsetattr(sd, termios.TCSANOW, t)
fcntl.ioctl(md, TIOCPKT, struct.pack("i", 1))
os.write(md, b"partial")
os.write(sd, b"out-d\n")
mb = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
mc, sc = os.openpty()
os.write(sc, b"last words\n")
os.close(sc)
time.sleep(0.2)
index = (get(ma, TIOCGPTN), get(mb, TIOCGPTN), get(mc, TIOCGPTN))
st("READY pid=%d a=%d b=%d c=%d" % ((os.getpid(),) + index))
for _ in range(6000):
    if os.path.exists(status + ".go"):
        break
    time.sleep(0.01)
problems = []
def check(what, ok):
    if not ok:
        problems.append(what)
check("indexes", (get(ma, TIOCGPTN), get(mb, TIOCGPTN), get(mc, TIOCGPTN)) == index)
check("A packet mode", get(ma, TIOCGPKT) == 1)
check("A slave exclusive", get(sa, TIOCGEXCL) == 1)
check("A slave raw", termios.tcgetattr(sa)[3] & termios.ICANON == 0)
check("A slave mode %o" % os.fstat(sa).st_mode, os.fstat(sa).st_mode & 0o777 == 0o600)
got = os.read(ma, 100)
check("A output %r" % got, got == b"\0pkt-out")
got = os.read(sa, 100)
check("A input %r" % got, got == b"raw-input")
check("B locked", get(mb, TIOCGPTLCK) == 1)
try:
    os.open("/dev/pts/%d" % index[1], os.O_RDWR | os.O_NOCTTY)
    check("B slave opened although locked", False)
except OSError as e:
    check("B slave open: %s" % e, e.errno == errno.EIO)
poller = select.poll()
poller.register(md, select.POLLPRI)
check("D no status byte", poller.poll(0) == [])
got = os.read(md, 100)
check("D output %r" % got, got == b"\0out-d\r\n")
os.write(md, b" rest\n")
got = os.read(sd, 100)
check("D unfinished line %r" % got, got == b"partial rest\n")
got = os.read(mc, 100)
check("C last line %r" % got, got == b"last words\r\n")
try:
    got = os.read(mc, 100)
    check("C read after the close gave %r" % got, False)
except OSError as e:
    check("C read after the close: %s" % e, e.errno == errno.EIO)
st("PASS" if not problems else "FAIL " + "; ".join(problems))
"#;

#[test]
fn pty_pairs_keep_packet_mode_lock_exclusive_raw_queues_and_a_closed_slave() {
    let mut w = Workload::spawn_program("ptystates", "python3", &["-c", PTY_STATES, "status"]);
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let indexes = |pid: i32| -> Vec<String> {
        let mut found: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.lines().find(|l| l.starts_with("tty-index:")).map(String::from))
            .collect();
        found.sort();
        found
    };
    let before = indexes(w.pid);
    assert_eq!(before.len(), 4, "four masters: {before:?} ({line})");
    w.dump();
    w.restore_detached();
    assert_eq!(indexes(w.pid), before, "fdinfo tty-index of the four masters");
    w.go().assert_pass();
}

/// The same states after a dump -R: crust read the queues (in packet mode too) and put them
/// back, and left lock, modes and the closed slave as they were.
#[test]
fn pty_pairs_dump_leave_running_leaves_their_states() {
    let mut w = Workload::spawn_program("ptystates", "python3", &["-c", PTY_STATES, "status"]);
    w.wait_status_line("READY", READY_TIMEOUT);
    w.dump_with(&["-R"]).assert_success();
    w.go().assert_pass();
}

/// A session leader L whose controlling terminal is a pair it no longer holds: it opened the
/// pair, took the slave as its terminal, forked C, which keeps master and slave, and closed
/// both. The restore must still give L its terminal before it forks C (C inherits it): after
/// restore L opens /dev/tty, C talks to itself through the pair, both have the terminal and
/// its foreground (tty_nr, tpgid in /proc, and from inside).
const LEADER_WITHOUT_FDS: &str = r#"
import fcntl, os, signal, struct, sys, termios, time
status = sys.argv[1]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
def wait_for(what):
    for _ in range(6000):
        if what():
            return
        time.sleep(0.01)
go = lambda: os.path.exists(status + ".go")
leader = os.fork()
if leader == 0:
    os.setsid()
    m, s = os.openpty()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    c = os.fork()
    if c == 0:
        index = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"\0" * 4))[0]
        st("READY leader=%d c=%d index=%d" % (os.getppid(), os.getpid(), index))
        wait_for(lambda: "LEADER" in open(status).read())
        os.write(m, b"ping\n")
        got = os.read(s, 100)
        ok = got == b"ping\n" and os.tcgetpgrp(s) == os.getppid() and os.getsid(0) == os.getppid()
        st(("C ok" if ok else "FAIL") + " c read %r fg %d sid %d" % (got, os.tcgetpgrp(s), os.getsid(0)))
        os._exit(0 if ok else 1)
    os.close(m)
    os.close(s)
    # C's exit closes the master: the terminal hangs up, its session leader gets SIGHUP.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    wait_for(go)
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        st("LEADER has its terminal")
        ok = True
    except OSError as e:
        st("LEADER FAIL: /dev/tty: %s" % e)
        ok = False
    _, code = os.waitpid(c, 0)
    os._exit(0 if code == 0 and ok else 1)
_, code = os.waitpid(leader, 0)
st(("PASS" if code == 0 else "FAIL") + " leader ended with %d" % code)
sys.exit(0 if code == 0 else 1)
"#;

#[test]
fn session_leader_gets_its_terminal_back_although_only_its_child_holds_the_pair() {
    let mut w = Workload::spawn_program("leaderpty", "python3", &["-c", LEADER_WITHOUT_FDS, "status"]);
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let leader: i32 = ready_field(&line, "leader").unwrap().parse().unwrap();
    let c: i32 = ready_field(&line, "c").unwrap().parse().unwrap();
    w.own(leader);
    w.own(c);
    let stat = |pid: i32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<String> = text.rsplit(')').next().unwrap().split_whitespace().map(String::from).collect();
        format!("pgrp {} session {} tty_nr {} tpgid {}", f[2], f[3], f[4], f[5])
    };
    let before = (stat(leader), stat(c));
    assert!(!before.0.contains("tty_nr 0 "), "the leader has a terminal: {}", before.0);
    w.dump();
    for pid in [leader, c] {
        let _ = waitpid_timeout(pid, Duration::from_secs(5));
    }
    w.restore_detached();
    w.own(leader);
    w.own(c);
    assert_eq!((stat(leader), stat(c)), before, "sessions, terminals and foreground groups");
    w.go().assert_pass();
}

/// A shell (a session leader on the terminal) that runs ARGV[2:] as its foreground job.
const JOB_SHELL: &str = r#"
import os, signal, sys, time
status, command = sys.argv[1], sys.argv[2:]
job = os.fork()
if job == 0:
    os.setpgid(0, 0)
    for _ in range(5000):
        if os.tcgetpgrp(0) == os.getpgrp():
            break
        time.sleep(0.001)
    env = dict(os.environ, TERM="vt100", LESS="", LESSOPEN="", LESSHISTFILE="-")
    os.execvpe(command[0], command, env)
os.setpgid(job, job)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
os.tcsetpgrp(0, job)
with open(status, "a") as f:
    f.write("READY shell=%d job=%d\n" % (os.getpid(), job))
os.waitpid(job, 0)
while True:
    signal.pause()
"#;

/// The program the issue names: `less`, a shell's job, puts the terminal in raw mode. Dumped
/// with -j and restored with -j on the same terminal (left cooked meanwhile, as the shell
/// leaves it), it has its raw terminal back: a key typed reaches it at once, without Enter
/// and without echo (`G` shows the file's last line), and `q` ends it, and crust with it.
#[test]
fn less_comes_back_raw_and_takes_single_keys() {
    let (mut master, slave) = openpty();
    let w_size = libc::winsize { ws_row: 30, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize, a live local.
    assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &w_size) }, 0);
    let dir = TempDir::new("less-file");
    let file = dir.path.join("text");
    let text: String = (1..=500).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let slave_for_shell = slave.try_clone().unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    let mut w = Workload::spawn_program_with(
        "less",
        "setsid",
        &["-c", "python3", "-c", JOB_SHELL, "status", "less", "-X", &file_arg],
        move |cmd| {
            on_terminal(cmd, &slave_for_shell);
        },
    );
    let shell = w.pid;
    let job: i32 = ready_field(&w.wait_status_line("READY", READY_TIMEOUT), "job").unwrap().parse().unwrap();
    w.own(job);
    let mut seen = String::new();
    assert!(read_until(&mut master, &mut seen, "line 29"), "less shows its first page: {seen:?}");
    wait_until("less has made the terminal raw", Duration::from_secs(10), || {
        terminal_state(master.as_raw_fd()).0.c_lflag & libc::ICANON == 0
    });
    let before = terminal_state(master.as_raw_fd());

    let img = w.image_dir.to_string_lossy().into_owned();
    crust(["dump", "-t", &job.to_string(), "-D", &img, "-j"]).assert_success();
    // SAFETY: kill takes integers only; the shell is our child.
    unsafe { libc::kill(shell, libc::SIGKILL) };
    let _ = w.reap(Duration::from_secs(5));
    assert!(wait_gone(job, Duration::from_secs(5)), "pid {job} still taken");
    make_cooked(master.as_raw_fd());
    let w_size = libc::winsize { ws_row: 30, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &w_size) }, 0);

    let mut restore = Command::new("setsid");
    restore.args(["-c", crust_bin(), "restore", "-j", "-D", &img]);
    on_terminal(&mut restore, &slave);
    let mut crust_proc = restore.spawn().unwrap();
    wait_released(job);
    assert!(same_state(&before, &terminal_state(master.as_raw_fd())), "less's raw terminal after restore");
    seen.clear();
    master.write_all(b"G").unwrap();
    assert!(read_until(&mut master, &mut seen, "line 500"), "less did not get G without Enter: {seen:?}");
    master.write_all(b"q").unwrap();
    let status = wait_exit(&mut crust_proc, || format!("q did not end less: {seen:?}"));
    assert!(status.success(), "crust restore -j exited with {status}");
}

/// Typed ahead into a canonical terminal while its reader is busy: two finished lines, a line
/// ended by end of file (^D), an end of file alone, and an unfinished line; the echo of all of
/// it was read by the parent. After restore (or dump -R) the reader gets each line by itself,
/// as it would have: "first\n", "second\n", "abc", "" (end of file), then the unfinished line
/// completed after the restore; nothing is echoed again.
const TYPEAHEAD: &str = r#"
import os, pty, select, sys, time
status = sys.argv[1]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
def wait_go():
    for _ in range(6000):
        if os.path.exists(status + ".go"):
            return
        time.sleep(0.01)
child, master = pty.fork()
if child == 0:
    wait_go()
    got = [os.read(0, 100) for _ in range(4)]
    os.write(1, repr(got).encode() + b"\n")
    os.write(1, b"fifth:%r\n" % os.read(0, 100))
    os._exit(0)
def drain(timeout):
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], timeout)
        if not r:
            return out
        out += os.read(master, 4096)
def read_until(needle):
    out = b""
    deadline = time.time() + 10
    while needle not in out and time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            out += os.read(master, 4096)
    return out
os.write(master, b"first\nsecond\nabc\x04\x04typed")
echo = read_until(b"abctyped")
echo += drain(0.1)
st("READY parent=%d child=%d echo=%r" % (os.getpid(), child, echo))
wait_go()
got = read_until(b"]\r\n")
want = repr([b"first\n", b"second\n", b"abc", b""]).encode() + b"\r\n"
if got != want:
    st("FAIL the lines read: %r, expected %r" % (got, want))
    sys.exit(1)
os.write(master, b" more\n")
got = read_until(b"'\r\n")
if got != b" more\r\nfifth:b'typed more\\n'\r\n":
    st("FAIL the unfinished line: %r" % got)
    sys.exit(1)
_, code = os.waitpid(child, 0)
st("PASS typeahead" if code == 0 else "FAIL child %d" % code)
"#;

fn spawn_typeahead() -> (Workload, i32) {
    let mut w = Workload::spawn_program("typeahead", "python3", &["-c", TYPEAHEAD, "status"]);
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let child: i32 = ready_field(&line, "child").unwrap().parse().unwrap();
    w.own(child);
    (w, child)
}

#[test]
fn pty_typeahead_in_canonical_mode_comes_back_line_by_line() {
    let (mut w, child) = spawn_typeahead();
    w.dump();
    let _ = waitpid_timeout(child, Duration::from_secs(5));
    w.restore_detached();
    w.own(child);
    w.go().assert_pass();
}

#[test]
fn pty_typeahead_dump_leave_running_leaves_the_lines() {
    let (mut w, _) = spawn_typeahead();
    w.dump_with(&["-R"]).assert_success();
    w.go().assert_pass();
}

/// A session leader L whose terminal (a pair of its own) has in its foreground the group of
/// G, a process of L's session that is not L's descendant (its parent exited; it was adopted
/// by the test): dumping L is refused (the restored terminal could not give its foreground to
/// a group that does not come back), and L goes on.
const FOREGROUND_OUTSIDE: &str = r#"
import fcntl, os, signal, sys, termios, time
status = sys.argv[1]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
leader = os.fork()
if leader == 0:
    os.setsid()
    m, s = os.openpty()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    r, w = os.pipe()
    c = os.fork()
    if c == 0:
        g = os.fork()
        if g == 0:
            os.close(m)
            os.close(s)
            os.close(r)
            os.setpgid(0, 0)
            os.write(w, b"%d\n" % os.getpid())
            os.close(w)
            while True:
                signal.pause()
        os._exit(0)
    os.close(w)
    g = int(os.read(r, 100))
    os.close(r)
    os.waitpid(c, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(s, g)
    st("READY leader=%d g=%d" % (os.getpid(), g))
    while not os.path.exists(status + ".go"):
        time.sleep(0.01)
    st("PASS leader went on")
    os._exit(0)
os.waitpid(leader, 0)
"#;

#[test]
fn pty_foreground_group_outside_the_tree_is_refused() {
    let mut w = Workload::spawn_program("fgoutside", "python3", &["-c", FOREGROUND_OUTSIDE, "status"]);
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let leader: i32 = ready_field(&line, "leader").unwrap().parse().unwrap();
    let g: i32 = ready_field(&line, "g").unwrap().parse().unwrap();
    w.own(leader);
    w.own(g);
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["dump", "-t", &leader.to_string(), "-D", &img]);
    out.assert_failure();
    assert!(out.text().contains(&format!("has process group {g} in its foreground, in which no dumped process is")), "{out}");
    assert!(out.text().contains(&format!("pid {leader} fd ")), "the refusal names pid and fd: {out}");
    assert!(pid_exists(leader) && proc_state(leader) != Some('Z'), "the refused dump harmed the leader");
    std::fs::write(w.go_path(), "go").unwrap();
    w.wait_status_line("PASS", Duration::from_secs(10));
}

/// `script` run from a shell as its job: it puts the shell's terminal raw and runs `cat` on a
/// pseudo-terminal pair of its own (cat a session leader with the pair's slave as its
/// terminal, canonical with echo). Dumped and restored with -j: the outer terminal is raw
/// again, and a line typed on it goes through script to the inner terminal (echoed there) and
/// to cat, whose answer comes back out; ^D ends cat, script and crust.
#[test]
fn script_as_a_shell_job_comes_back_with_both_terminals() {
    let (mut master, slave) = openpty();
    let slave_for_shell = slave.try_clone().unwrap();
    let args = ["-c", "python3", "-c", JOB_SHELL, "status", "script", "-q", "-c", "exec cat", "/dev/null"];
    let mut w = Workload::spawn_program_with("scriptjob", "setsid", &args, move |cmd| on_terminal(cmd, &slave_for_shell));
    let shell = w.pid;
    let job: i32 = ready_field(&w.wait_status_line("READY", READY_TIMEOUT), "job").unwrap().parse().unwrap();
    w.own(job);
    wait_until("script has made the terminal raw and started cat", Duration::from_secs(10), || {
        terminal_state(master.as_raw_fd()).0.c_lflag & libc::ICANON == 0
            && children_of(job).iter().any(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "cat"))
    });
    let cat = *children_of(job).first().unwrap();
    w.own(cat);
    let mut seen = String::new();
    master.write_all(b"before\r").unwrap();
    assert!(read_until(&mut master, &mut seen, "before\r\nbefore\r\n"), "script and cat answer before the dump: {seen:?}");
    let before = terminal_state(master.as_raw_fd());

    let img = w.image_dir.to_string_lossy().into_owned();
    crust(["dump", "-t", &job.to_string(), "-D", &img, "-j"]).assert_success();
    // SAFETY: kill takes integers only; the shell is our child.
    unsafe { libc::kill(shell, libc::SIGKILL) };
    let _ = w.reap(Duration::from_secs(5));
    let _ = waitpid_timeout(cat, Duration::from_secs(5));
    assert!(wait_gone(job, Duration::from_secs(5)) && wait_gone(cat, Duration::from_secs(5)), "the job's pids still taken");
    make_cooked(master.as_raw_fd());

    let mut restore = Command::new("setsid");
    restore.args(["-c", crust_bin(), "restore", "-j", "-D", &img]);
    on_terminal(&mut restore, &slave);
    let mut crust_proc = restore.spawn().unwrap();
    wait_released(job);
    wait_released(cat);
    let after = terminal_state(master.as_raw_fd());
    assert!(same_state(&before, &after), "the outer terminal after restore:\n{}\nat dump:\n{}", describe(&after), describe(&before));
    seen.clear();
    master.write_all(b"after\r").unwrap();
    assert!(read_until(&mut master, &mut seen, "after\r\nafter\r\n"), "script and cat answer after the restore: {seen:?}");
    master.write_all(b"\x04").unwrap();
    let status = wait_exit(&mut crust_proc, || format!("^D did not end cat and script: {seen:?}"));
    assert!(status.success(), "crust restore -j exited with {status}");
}

/// A slave whose master was closed: hung up, it reads end of file and writing fails (EIO); its
/// node is gone. Restored hung up the same way (its /proc link a deleted /dev/pts node).
const HUNG_UP: &str = r#"
import errno, os, sys, time
status = sys.argv[1]
def st(line):
    with open(status, "a") as f:
        f.write(line + "\n")
m, s = os.openpty()
os.close(m)
st("READY pid=%d fd=%d" % (os.getpid(), s))
while not os.path.exists(status + ".go"):
    time.sleep(0.01)
got = os.read(s, 10)
try:
    os.write(s, b"x")
    wrote = "written"
except OSError as e:
    wrote = errno.errorcode[e.errno]
st(("PASS" if got == b"" and wrote == "EIO" else "FAIL") + " read %r, write %s" % (got, wrote))
"#;

#[test]
fn pty_hung_up_slave_comes_back_hung_up() {
    let mut w = Workload::spawn_program("hungup", "python3", &["-c", HUNG_UP, "status"]);
    w.wait_status_line("READY", READY_TIMEOUT);
    let ready = w.status_text();
    let fd = ready_field(ready.lines().next().unwrap(), "fd").unwrap();
    let link = |pid: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap().to_string_lossy().into_owned();
    let before = link(w.pid);
    assert!(before.starts_with("/dev/pts/") && before.ends_with(" (deleted)"), "{before}");
    w.dump();
    w.restore_detached();
    let after = link(w.pid);
    assert!(after.starts_with("/dev/pts/") && after.ends_with(" (deleted)"), "the restored fd is {after}");
    w.go().assert_pass();
}
