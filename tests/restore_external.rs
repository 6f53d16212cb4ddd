//! Objects crossing the tree's border: refused by name at dump, unless declared external
//! (`--external pipe:[ID]`) and given back at restore (`--inherit-fd fd[N]:pipe:[ID]`).

mod common;
use common::*;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn wait_for(path: &std::path::Path, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A shell loop reading lines from a pipe whose writer is this test. The dump is refused
/// naming the pipe and the options to use; with --external it succeeds; the restore needs
/// --inherit-fd, and with it the restored loop reads the next line the test writes into the
/// very same pipe.
#[test]
fn pipe_to_outside_is_refused_unless_declared_external_and_reconnected_with_inherit_fd() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    let key = format!("pipe:[{}]", std::fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&writer))).unwrap().ino());
    let reader_for_child = reader.try_clone().unwrap();
    let mut w = Workload::spawn_program_with(
        "extpipe",
        "sh",
        &["-c", "echo READY > status; while read l; do echo \"got $l\" >> out; done"],
        move |cmd| {
            cmd.stdin(Stdio::from(reader_for_child));
        },
    );
    let out = w.dir.path.join("out");
    writeln!(writer, "one").unwrap();
    assert!(wait_for(&out, "got one"), "the loop did not start");

    // The refusal comes before any memory is saved (logged at debug level when it starts).
    w.crust_env = vec![("CRUST_LOG".into(), "crust=debug".into())];
    let refused = w.dump_with(&[]);
    w.crust_env.clear();
    refused.assert_failure();
    assert!(!refused.text().contains("saving the memory"), "the refusal came only after memory was saved:\n{refused}");
    assert!(
        refused.text().contains(&key) && refused.text().contains("--external") && refused.text().contains(&w.pid.to_string()),
        "refusal should name the pid, {key} and --external:\n{refused}"
    );
    let state = proc_state(w.pid);
    assert!(matches!(state, Some('R' | 'S')), "after the refused dump pid {} is in state {state:?}", w.pid);

    w.dump_with(&["--external", &key]).assert_success();
    assert_eq!(w.reap(Duration::from_secs(10)), Some(Exit::Signal(libc::SIGKILL)), "the dump should have killed the loop");

    let img = w.image_dir.to_string_lossy().into_owned();
    let missing = crust(["restore", "-d", "-D", &img]);
    missing.assert_failure();
    assert!(missing.text().contains("--inherit-fd") && missing.text().contains(&key), "{missing}");
    assert!(!pid_exists(w.pid), "a refused restore left pid {} behind", w.pid);

    let restore = crust_command()
        .args(["restore", "-d", "-D", &img, "--inherit-fd", &format!("fd[0]:{key}")])
        .stdin(Stdio::from(reader))
        .output()
        .unwrap();
    assert!(restore.status.success(), "restore failed: {}", String::from_utf8_lossy(&restore.stderr));
    w.own(w.pid);
    assert!(pid_exists(w.pid), "pid {} not restored", w.pid);
    writeln!(writer, "two").unwrap();
    assert!(wait_for(&out, "got two"), "the restored loop did not read from the reconnected pipe");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text, "got one\ngot two\n", "lines lost or repeated");
    drop(writer); // EOF: the loop ends
    let exit = w.reap(Duration::from_secs(10));
    assert_eq!(exit, Some(Exit::Code(0)), "the restored loop should end at EOF with status 0");
}

/// Pipes whose other end is closed everywhere cross no border: one whose writers are all gone
/// (bytes left in it) and one whose readers are all gone. They are dumped without --external
/// and come back so: the reader finds the bytes, then end of file (POLLHUP before), and a
/// write into the other fails with EPIPE (POLLERR before); /proc shows the same descriptors.
#[test]
fn pipes_whose_other_end_is_closed_come_back_so() {
    const PROGRAM: &str = r#"
import os, select, time
r, w = os.pipe(); os.write(w, b'left in the pipe'); os.close(w)
r2, w2 = os.pipe(); os.close(r2)
open('ready', 'w').write('%d %d' % (r, w2))
while not os.path.exists('go'): time.sleep(0.05)
p = select.poll(); p.register(r, select.POLLIN); p.register(w2, select.POLLOUT)
events = sorted(p.poll(0))
data, eof = os.read(r, 100), os.read(r, 100)
try:
    os.write(w2, b'x'); res = 'written'
except BrokenPipeError:
    res = 'EPIPE'
open('result', 'w').write('%s %r %r %s' % ([e for _, e in events], data, eof, res))
while True: time.sleep(0.1)
"#;
    let mut w = Workload::spawn_program("widowed-pipes", "python3", &["-c", PROGRAM]);
    wait_until("python3 to make its pipes", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    assert_same_proc(&before, &w.snapshot(), &[]);
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to use its pipes", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    // POLLIN|POLLHUP on the read end, POLLOUT|POLLERR on the write end.
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "[17, 12] b'left in the pipe' b'' EPIPE");
}
