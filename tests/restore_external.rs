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
