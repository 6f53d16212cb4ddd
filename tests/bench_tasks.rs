//! `crust bench --workload tree300|threads1000` runs end to end: it dumps and restores a tree of
//! 300 sleeping processes (or one process of 1000 sleeping threads), checks the restored tree
//! (the root's children and threads are all back, every child sleeping) and prints its figures.
//! Speed is the benchmark's business: nothing here is timed.

mod common;
use common::*;

/// The bench's figures: the per-run line and the medians, for crust only (no --criu).
fn run_bench(workload: &str) {
    // Not common::init(): the restored trees must go to init once the bench kills them, not
    // stay zombies of this test process (the bench waits for their pids to be free).
    let dir = std::path::PathBuf::from(format!("/dev/shm/crust-bench-test-{}-{workload}", std::process::id()));
    let out =
        crust(["bench", "--workload", workload, "--runs", "1", "--dir"].map(String::from).into_iter().chain([dir.display().to_string()]));
    let _ = std::fs::remove_dir_all(&dir);
    out.assert_success();
    let text = out.text();
    assert!(text.contains("run 1:"), "no run line:\n{text}");
    let median = text.lines().find(|l| l.starts_with("median of 1 runs, crust: dump")).unwrap_or_else(|| panic!("no medians:\n{text}"));
    assert!(median.contains("ms per task), restore"), "medians without both figures: {median}");
    assert!(!text.contains("criu"), "the reference tool ran without --criu:\n{text}");
}

#[test]
fn bench_tree300_dumps_restores_and_checks_a_tree_of_300_sleeping_processes() {
    run_bench("tree300");
}
