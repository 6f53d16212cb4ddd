//! `crust bench --workload tree300|threads1000`: the cost per process and per thread. A tree
//! of sleeping processes (a root and its children) or one process of sleeping threads is dumped
//! and restored by crust and, with `--criu PATH`, by the reference tool, each on a fresh
//! workload, the two tools taking turns to go first from one round to the next. Both run as
//! commands (`crust dump`, `crust restore -d`), so both pay for starting a program.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What the workload is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tasks {
    /// Processes in the tree (the root included).
    pub processes: usize,
    /// Threads of the root besides its main thread.
    pub threads: usize,
}

impl Tasks {
    fn name(&self) -> String {
        match (self.processes, self.threads) {
            (p, 0) => format!("a tree of {p} sleeping processes"),
            (1, t) => format!("one process with {t} sleeping threads"),
            (p, t) => format!("{p} processes, {t} threads"),
        }
    }
}

/// Runs as the benchmarked tree: a root in a session of its own forks `processes - 1`
/// children and starts `threads` threads, all of which sleep until killed, then says READY in
/// `ready_file`.
pub fn workload(tasks: Tasks, ready_file: &Path) -> Result<()> {
    crate::sys::close_inherited_fds()?;
    let _ = nix::unistd::setsid();
    // Children first, while the root is single-threaded.
    for _ in 1..tasks.processes {
        crate::sys::fork_sleeper().context("forking a sleeping child")?;
    }
    for _ in 0..tasks.threads {
        std::thread::Builder::new().stack_size(64 * 1024).spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        })?;
    }
    std::fs::write(ready_file, "READY\n")?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn start_workload(tasks: Tasks, dir: &Path) -> Result<Child> {
    let ready = dir.join("tasks.ready");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["bench-tasks", "--processes", &tasks.processes.to_string(), "--threads", &tasks.threads.to_string()])
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::fs::read_to_string(&ready).is_ok_and(|l| l.ends_with('\n')) {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("benchmark workload exited early: {status}");
        }
        if Instant::now() > deadline {
            end_tree(child.id() as i32);
            let _ = child.wait();
            bail!("benchmark workload did not get ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    check_tree(child.id() as i32, tasks).context("the workload before the dump")?;
    Ok(child)
}

/// Every thread id of `pid`.
fn threads_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The tree is whole: the root has its threads and children, each child sleeping.
fn check_tree(root: i32, tasks: Tasks) -> Result<()> {
    let threads = threads_of(root);
    if threads.len() != tasks.threads + 1 {
        bail!("pid {root} has {} threads, not {}", threads.len(), tasks.threads + 1);
    }
    let mut children = Vec::new();
    for tid in &threads {
        let list = std::fs::read_to_string(format!("/proc/{root}/task/{tid}/children")).unwrap_or_default();
        children.extend(list.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    }
    if children.len() != tasks.processes - 1 {
        bail!("pid {root} has {} children, not {}", children.len(), tasks.processes - 1);
    }
    // A child just let go may still be on its way back into pause(2).
    let deadline = Instant::now() + Duration::from_secs(5);
    for child in children {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).with_context(|| format!("child {child}"))?;
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("?").to_string();
            if state == "S" {
                break;
            }
            if Instant::now() > deadline {
                bail!("child {child} of pid {root} is in state {state}, not sleeping");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// The root and its children.
fn tree_pids(root: i32) -> Vec<i32> {
    let mut pids = vec![root];
    for tid in threads_of(root) {
        let list = std::fs::read_to_string(format!("/proc/{root}/task/{tid}/children")).unwrap_or_default();
        pids.extend(list.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    }
    pids
}

/// Waits, boundedly, until none of `pids` exists any more (killed processes are reaped by
/// init a moment later; a restore needs their pids free).
fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Kills the workload's whole session (it leads its own) and waits until it is gone.
fn end_tree(root: i32) {
    let pids = tree_pids(root);
    let _ = kill(Pid::from_raw(-root), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
    wait_gone(&pids);
}

/// A checkpoint/restore tool driven through its command line.
pub(super) struct Tool {
    pub name: &'static str,
    pub exe: PathBuf,
}

impl Tool {
    /// crust itself, then the reference tool at `criu` if given.
    pub(super) fn crust_and(criu: Option<&Path>) -> Result<Vec<Tool>> {
        let mut tools = vec![Tool { name: "crust", exe: std::env::current_exe()? }];
        if let Some(criu) = criu {
            tools.push(Tool { name: "criu", exe: criu.to_path_buf() });
        }
        Ok(tools)
    }
}

/// The order `tools` tools go in, in run `run`: they take turns to go first (this VM's speed
/// drifts).
pub(super) fn turn_order(run: usize, tools: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tools).collect();
    if run.is_multiple_of(2) {
        order.reverse();
    }
    order
}

impl Tool {
    pub fn run(&self, args: &[&str], image: &Path) -> Result<Duration> {
        self.run_with_cpu(args, image).map(|(wall, _)| wall)
    }

    /// [`Self::run`], with the CPU time (user + system) of the tool and the children it waited
    /// for: a figure the other work on a shared machine disturbs less than the wall time.
    pub fn run_with_cpu(&self, args: &[&str], image: &Path) -> Result<(Duration, Duration)> {
        self.run_with_cpu_env(args, image, &[])
    }

    /// [`Self::run_with_cpu`] with variables `env` set for the tool.
    pub fn run_with_cpu_env(&self, args: &[&str], image: &Path, env: &[(&str, &str)]) -> Result<(Duration, Duration)> {
        let cpu_before = children_cpu();
        let started = Instant::now();
        let out = Command::new(&self.exe).args(args).arg("-D").arg(image).envs(env.iter().copied()).stdin(Stdio::null()).output()?;
        let took = started.elapsed();
        let cpu = children_cpu().saturating_sub(cpu_before);
        if !out.status.success() {
            bail!("{} {}: {}\n{}", self.exe.display(), args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok((took, cpu))
    }

    /// Dumps a fresh workload, restores it detached, checks it: (dump, restore) wall times.
    fn measure(&self, tasks: Tasks, dir: &Path) -> Result<(Duration, Duration)> {
        let mut child = start_workload(tasks, dir)?;
        let root = child.id() as i32;
        let pids = tree_pids(root);
        let image = dir.join(format!("{}-image", self.name));
        let _ = std::fs::remove_dir_all(&image);
        std::fs::create_dir_all(&image)?;
        let dump = self.run(&["dump", "-t", &root.to_string(), "-o", "dump.log"], &image);
        if dump.is_err() {
            end_tree(root);
        }
        let _ = child.wait();
        let dump = dump?;
        wait_gone(&pids);
        let restore = self.run(&["restore", "-d", "-o", "restore.log"], &image);
        // Both tools restore the same pids.
        let check = restore.as_ref().map_err(|_| ()).ok().map(|_| check_tree(root, tasks));
        end_tree(root);
        // A failed restore's image and logs stay for a look.
        let restore = restore?;
        let _ = std::fs::remove_dir_all(&image);
        check.unwrap_or(Ok(())).with_context(|| format!("the tree {} restored", self.name))?;
        Ok((dump, restore))
    }
}

/// CPU time (user + system) of every child of this process waited for so far.
fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) else { return Duration::ZERO };
    let d = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    d(usage.user_time()) + d(usage.system_time())
}

fn ms(d: Duration) -> String {
    format!("{:7.1} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One tool's figures over every round: (dumps, restores).
#[derive(Default)]
struct Rounds {
    dumps: Vec<Duration>,
    restores: Vec<Duration>,
}

pub fn run(tasks: Tasks, dir: &Path, runs: usize, criu: Option<&Path>) -> Result<()> {
    super::in_own_dir(dir, "tasks", |own| run_in(tasks, own, runs, criu))
}

fn run_in(tasks: Tasks, dir: &Path, runs: usize, criu: Option<&Path>) -> Result<()> {
    println!("crust bench: {}, images in {}", tasks.name(), dir.display());
    let tools = Tool::crust_and(criu)?;
    let mut rounds: Vec<Rounds> = tools.iter().map(|_| Rounds::default()).collect();
    for run in 1..=runs {
        println!("run {run}:");
        for i in turn_order(run, tools.len()) {
            let (dump, restore) = tools[i].measure(tasks, dir)?;
            println!("  {:<5} dump {}  restore {}", tools[i].name, ms(dump), ms(restore));
            rounds[i].dumps.push(dump);
            rounds[i].restores.push(restore);
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / (tasks.processes + tasks.threads) as f64;
    for (tool, r) in tools.iter().zip(&rounds) {
        let (dump, restore) = (median(r.dumps.clone()), median(r.restores.clone()));
        println!(
            "median of {runs} runs, {}: dump {} ({:.2} ms per task), restore {} ({:.2} ms per task)",
            tool.name,
            ms(dump).trim(),
            per(dump),
            ms(restore).trim(),
            per(restore)
        );
    }
    if let [crust, criu] = &rounds[..] {
        let ratio = |a: &[Duration], b: &[Duration]| median(a.to_vec()).as_secs_f64() / median(b.to_vec()).as_secs_f64();
        println!("crust/criu: dump {:.2}, restore {:.2}", ratio(&crust.dumps, &criu.dumps), ratio(&crust.restores, &criu.restores));
    }
    Ok(())
}
