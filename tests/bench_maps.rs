//! `crust bench --workload maps16k` runs end to end, small: 2000 private anonymous areas of
//! 64 KiB (every other one read-only) and the same memory in one area are each dumped,
//! restored and checked by the bench itself, from /proc (every area at its place with its
//! protection, a sample of words read from outside) and from inside (the restored process
//! compares every word with its pattern and its areas with /proc/self/maps). Any difference
//! fails the bench. Nothing here is timed.

mod common;
use common::*;

#[test]
fn bench_maps_dumps_restores_and_checks_2000_areas_of_64_kib_exactly() {
    // Not common::init(): the restored processes must go to init once the bench kills them,
    // not stay zombies of this test process (the bench waits for their pids to be free).
    let dir = std::path::PathBuf::from(format!("/dev/shm/crust-bench-test-{}-maps", std::process::id()));
    let args = ["bench", "--workload", "maps16k", "--mib", "125", "--runs", "1", "--dir"];
    let out = crust(args.map(String::from).into_iter().chain([dir.display().to_string()]));
    let _ = std::fs::remove_dir_all(&dir);
    out.assert_success();
    let text = out.text();
    assert!(text.contains("2000 private anonymous areas of 64 KiB"), "not 2000 areas:\n{text}");
    let run = text.lines().find(|l| l.trim_start().starts_with("crust 2000 areas: dump")).unwrap_or_else(|| panic!("no run line:\n{text}"));
    assert!(run.contains("one area: dump") && run.contains("per area: dump"), "run line without its figures: {run}");
    let median =
        text.lines().find(|l| l.starts_with("median of 1 runs, crust: per area dump")).unwrap_or_else(|| panic!("no medians:\n{text}"));
    assert!(median.contains("us, restore"), "medians without both figures: {median}");
    assert!(!text.contains("criu"), "the reference tool ran without --criu:\n{text}");
}
