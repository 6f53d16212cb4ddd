//! crust's command line: exit status of an attached restore, `show`.

mod common;
use common::*;
use std::time::Duration;

/// Without -d, `crust restore` waits for the restored process and exits with its exit
/// code (here 42).
#[test]
fn attached_restore_exits_with_the_process_exit_code() {
    let mut w = Workload::spawn("exitcode", &["42"]);
    w.dump();
    w.restore_attached();
    let r = w.go();
    assert!(r.status_text.contains("EXIT 42"), "workload did not reach its exit:\n{}\n{}", r.status_text, r.log);
    assert_eq!(r.exit, Exit::Code(42), "crust restore should exit with 42\n{}", r.crust_output.unwrap_or_default());
}

/// Without -d, a restored workload that verifies its state makes `crust restore` exit 0.
#[test]
fn attached_restore_of_counter_passes_and_exits_zero() {
    let mut w = Workload::spawn("counter", &[]);
    let before = w.snapshot();
    w.dump();
    w.restore_attached();
    let after = w.snapshot();
    std::thread::sleep(Duration::from_millis(100));
    w.verify_restored(&before, &after, &[], vec![]);
}

fn json_has_number(v: &serde_json::Value, n: i64) -> bool {
    match v {
        serde_json::Value::Number(x) => x.as_i64() == Some(n),
        serde_json::Value::Array(a) => a.iter().any(|x| json_has_number(x, n)),
        serde_json::Value::Object(o) => o.values().any(|x| json_has_number(x, n)),
        _ => false,
    }
}

/// `crust show -D DIR` prints the image as JSON that names the dumped pid, and the
/// image can still be restored afterwards (show does not modify it).
#[test]
fn show_prints_the_image_as_json_naming_the_pid() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let out = crust(["show", "-D", &w.image_dir.to_string_lossy()]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("crust show did not print JSON ({e}):\n{out}"));
    assert!(json_has_number(&v, w.pid as i64), "the JSON does not contain pid {}:\n{out}", w.pid);
    w.restore_detached();
    w.go().assert_pass();
}
