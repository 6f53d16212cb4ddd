//! The `crust` command line. Option names follow the reference tool (CRIU) where the meaning is
//! the same; its other `dump` and `restore` options are accepted or refused by the table in
//! [`criu`], and its verbosity forms and configuration files are read by [`argv`].

mod argv;
pub mod criu;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::kinds::leases::Policy;
use crate::permits::Permits;
use crate::restore::{RestoreOptions, Restored};
use criu::Pipeline;

/// `crust --version`: crust's own line, then the `Version: X.Y` line scripts of the reference
/// tool parse.
const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), "\nVersion: ", env!("CARGO_PKG_VERSION_MAJOR"), ".", env!("CARGO_PKG_VERSION_MINOR"));

const AFTER_HELP: &str = "dump and restore take CRIU's options: those crust has the meaning of work \
as in CRIU, those that change nothing here are accepted, the others are refused in one line \
before anything is done. `crust dump --help` and `crust restore --help` list them.";

#[derive(Parser)]
#[command(name = "crust", version = VERSION, about = "Checkpoint/restore of Linux processes", after_help = AFTER_HELP)]
#[command(args_override_self = true)]
struct Cli {
    /// Log level, as in CRIU: -v0 or -v1 errors, -v2 warnings (the default), -v3 (or -v)
    /// information, -v4 (or -vv) debug, -v5 (or -vvv) everything.
    #[arg(short = 'v', long = "verbosity", value_name = "LEVEL", num_args = 0..=1, require_equals = true,
          default_missing_value = "", action = ArgAction::Append, global = true)]
    verbosity: Vec<String>,
    /// Write the log to FILE instead of stderr; a relative FILE is in the work dir (-W, else -D).
    #[arg(short = 'o', long = "log-file", value_name = "FILE", global = true)]
    log_file: Option<PathBuf>,
    /// Read options from FILE first, in CRIU's format: one option per line without its dashes,
    /// then its value; `#` starts a comment. Options on the command line override them.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Accepted: crust reads no default configuration file.
    #[arg(long, global = true)]
    no_default_config: bool,
    /// Close crust's descriptor FD before anything else (so that whoever waits for its end
    /// sees it closed). Repeatable.
    #[arg(long = "close", value_name = "FD", global = true)]
    close: Vec<i32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Freeze a process, write its image, then kill it (or leave it running with -R, stopped
    /// with -s).
    Dump(DumpArgs),
    /// Recreate a process from an image, with its PID, and wait for it (or not, with -d).
    Restore(RestoreArgs),
    /// List the image's file leases; with an option, change what restore does with a lease
    /// break that was in progress (written into the image).
    Lease(LeaseCmdArgs),
    /// Print the whole image as JSON.
    Show {
        /// The image directory, as written by `crust dump`.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Check that this kernel has every feature crust needs.
    Check,
    /// Measure dump and restore of a process with N MiB of memory against this machine's floors.
    Bench {
        /// Memory of the benchmarked process, in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        /// Where images and floor files go (tmpfs by default).
        #[arg(long, default_value = "/dev/shm/crust-bench")]
        dir: PathBuf,
        /// How many times to repeat the measurement.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Which pages the process's memory is in: 4k (ordinary pages), huge, or both.
        #[arg(long, default_value = "both", value_parser = ["4k", "huge", "both"])]
        pages: String,
        /// The reference tool's binary, measured side by side in each run.
        #[arg(long, value_name = "PATH")]
        criu: Option<PathBuf>,
        /// What is dumped: memory (--mib of it), tree300 (a root and 299 sleeping children)
        /// threads1000 (one process with 1000 sleeping threads) or maps16k (--mib of memory in
        /// areas of 64 KiB, 16384 of them by default, against the same memory in one area).
        #[arg(long, default_value = "memory", value_parser = ["memory", "tree300", "threads1000", "maps16k"])]
        workload: String,
    },
    /// Watch crust checkpoint and restore a built-in example: `demo` (a counter) or
    /// `demo leases` (a lease caught in the middle of a break).
    Demo {
        /// Which story: counter (default) or leases.
        #[arg(default_value = "counter", value_parser = ["counter", "leases"])]
        story: String,
        /// Where the example's files, log and image go.
        #[arg(long, default_value = "/tmp/crust-demo")]
        dir: PathBuf,
    },
    /// The lease demo's holder (internal).
    #[command(hide = true)]
    DemoLeaseHolder { file: PathBuf, log: PathBuf },
    /// The lease demo's breaker (internal).
    #[command(hide = true)]
    DemoLeaseBreaker { file: PathBuf, log: PathBuf },
    /// The demo's program (internal).
    #[command(hide = true)]
    DemoWorkload { log: PathBuf },
    /// The benchmark's own workload (internal).
    #[command(hide = true)]
    BenchWorkload {
        mib: usize,
        ready_file: PathBuf,
        #[arg(long)]
        small_pages: bool,
    },
    /// The benchmark's process of many small areas (internal).
    #[command(hide = true)]
    BenchMaps {
        #[arg(long)]
        areas: usize,
        #[arg(long)]
        one_area: bool,
        ready_file: PathBuf,
    },
    /// The benchmark's tree of sleeping processes and threads (internal).
    #[command(hide = true)]
    BenchTasks {
        #[arg(long)]
        processes: usize,
        #[arg(long)]
        threads: usize,
        ready_file: PathBuf,
    },
}

const SUPPORTED: &str = "Options (crust's own, and CRIU's with the same meaning)";

#[derive(Args)]
#[command(next_help_heading = SUPPORTED)]
struct DumpArgs {
    /// The process to dump, with all its descendants.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pid: i32,
    /// The image directory (created if needed).
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    dir: PathBuf,
    /// Where a relative -o FILE goes (default: the image directory); must exist.
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Leave the processes running after the dump.
    #[arg(short = 'R', long, overrides_with = "leave_stopped")]
    leave_running: bool,
    /// Leave the processes stopped after the dump (SIGSTOP; SIGCONT lets them go on).
    #[arg(short = 's', long, overrides_with = "leave_running")]
    leave_stopped: bool,
    /// An object shared with a process outside the tree that you will reconnect at restore
    /// with --inherit-fd (for now: pipe:[INODE], as /proc/PID/fd shows it). Repeatable.
    #[arg(long = "external", value_name = "KEY")]
    externals: Vec<String>,
    /// Accepted: crust always dumps file locks.
    #[arg(short = 'l', long = "file-locks")]
    file_locks: bool,
    /// The tree was started from an interactive shell: record its terminal, to be
    /// reconnected to the terminal `crust restore -j` runs on.
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Go on although processes outside the tree hold or wait for locks on files the tree
    /// has locked (their locks are theirs; crust only restores the tree's).
    #[arg(long = "external-locks")]
    external_locks: bool,
    /// Give up, leaving every process as it was, if the tree is not frozen within SECS
    /// seconds (0: wait as long as it takes).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// Print how long the tree was frozen, the whole dump's time and the pages written.
    #[arg(long)]
    display_stats: bool,
}

#[derive(Args)]
#[command(next_help_heading = SUPPORTED)]
struct RestoreArgs {
    /// The image directory, as written by `crust dump`.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    dir: PathBuf,
    /// Where relative -o FILE and --pidfile FILE go (default: the image directory); must exist.
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Return as soon as the process runs instead of waiting for it to exit; prints its pid.
    #[arg(short = 'd', long = "restore-detached", visible_alias = "daemon")]
    detach: bool,
    /// Leave the restored processes stopped (SIGSTOP; SIGCONT lets them go on).
    #[arg(short = 's', long)]
    leave_stopped: bool,
    /// Write the restored root's pid into FILE once the tree runs.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// fd[N]:KEY: crust's own fd N takes the place of the external object KEY recorded at
    /// dump (for example fd[0]:pipe:[1234]). Repeatable.
    #[arg(long = "inherit-fd", value_name = "fd[N]:KEY", value_parser = parse_inherit_fd)]
    inherit_fds: Vec<(i32, String)>,
    /// Restore a shell job on this terminal (crust's controlling terminal), in the
    /// foreground if it was in the foreground.
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Accepted: crust always restores file locks.
    #[arg(short = 'l', long = "file-locks")]
    file_locks: bool,
    #[command(flatten)]
    lease: LeaseArgs,
    /// How the executable and libraries are compared with what the process ran: by size and
    /// mtime (default), or `filesize` (size only). `buildid` is not supported yet.
    #[arg(long = "file-validation", value_name = "MODE", value_parser = parse_file_validation)]
    file_validation: Option<crate::kinds::memory::CodeValidation>,
    /// Restore an image that is not sealed by this host's crust, or was changed since its
    /// dump (its seal and file hashes are then not checked): only for images you trust.
    #[arg(long = "trust-image")]
    trust_image: bool,
    /// Let the processes run as soon as everything but their private anonymous pages is back;
    /// those come on demand (userfaultfd) while the rest is filled in the background, by crust
    /// and, once it returns, by a helper `crust-lazypages` that exits when every page is in.
    #[arg(long = "lazy-pages")]
    lazy_pages: bool,
    /// Print how long the restore took.
    #[arg(long)]
    display_stats: bool,
    /// Check everything a restore checks (image, seal, structure, PIDs, kernel, files,
    /// options) and create nothing; exits 0 if the restore could go ahead.
    #[arg(long)]
    check_only: bool,
}

#[derive(Args)]
struct LeaseCmdArgs {
    /// The image directory, as written by `crust dump`.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    dir: PathBuf,
    /// Edit (and seal with this host's key) an image whose seal is missing, foreign or wrong:
    /// only for images you trust.
    #[arg(long = "trust-image")]
    trust_image: bool,
    #[command(flatten)]
    lease: LeaseArgs,
}

const LEASES: &str = "Lease breaks in progress (the same options for restore and lease)";

/// What happens to a lease break that was in progress: `crust restore` and `crust lease` take
/// the same options. Default: as recorded in the image.
#[derive(Args)]
#[group(id = "lease-break", multiple = false)]
struct LeaseArgs {
    /// One of holder, breaker, no-break, add:SECS, set:SECS: the options below in one word.
    #[arg(long = "lease-policy", value_name = "POLICY", value_parser = Policy::parse, help_heading = LEASES)]
    policy: Option<Policy>,
    /// holder: the whole lease-break-time again; breaker: the break completes at restore.
    #[arg(long, visible_alias = "lease-favor", value_parser = ["holder", "breaker"], help_heading = LEASES)]
    favor: Option<String>,
    /// Add SECS (may be negative) to the remaining break time.
    #[arg(long, visible_alias = "lease-add", value_name = "SECS", allow_hyphen_values = true,
          value_parser = parse_lease_secs, help_heading = LEASES)]
    add: Option<f64>,
    /// Set the remaining break time to SECS.
    #[arg(long, visible_alias = "lease-set", value_name = "SECS", value_parser = parse_lease_secs, help_heading = LEASES)]
    set: Option<f64>,
    /// The holder keeps its pre-break lease; no break is restarted.
    #[arg(long, visible_alias = "lease-no-break", help_heading = LEASES)]
    no_break: bool,
}

impl LeaseArgs {
    /// The policy chosen (clap lets at most one of the options through).
    fn policy(&self) -> Option<Policy> {
        let favor = self.favor.as_deref().map(|f| if f == "holder" { Policy::FavorHolder } else { Policy::FavorBreaker });
        self.policy
            .or(favor)
            .or(self.add.map(|s| Policy::AddMs((s * 1000.0) as i64)))
            .or(self.set.map(|s| Policy::SetMs((s.max(0.0) * 1000.0) as u64)))
            .or(self.no_break.then_some(Policy::NoBreak))
    }
}

/// A number of seconds for a lease break, within range.
fn parse_lease_secs(v: &str) -> Result<f64, String> {
    let secs = v.parse::<f64>().map_err(|_| format!("{v:?} is not a number of seconds"))?;
    Policy::check_secs(secs)
}

/// CRIU's `--file-validation` modes.
fn parse_file_validation(mode: &str) -> Result<crate::kinds::memory::CodeValidation, String> {
    match mode {
        "filesize" => Ok(crate::kinds::memory::CodeValidation::FileSize),
        "buildid" => Err("--file-validation buildid is not supported yet (use filesize, or nothing for size and mtime)".into()),
        other => Err(format!("unknown mode {other:?} (filesize)")),
    }
}

/// Parses CRIU's `fd[N]:KEY`.
fn parse_inherit_fd(arg: &str) -> Result<(i32, String), String> {
    let rest = arg.strip_prefix("fd[").ok_or("expected fd[N]:KEY")?;
    let (n, key) = rest.split_once("]:").ok_or("expected fd[N]:KEY")?;
    let n = n.parse::<i32>().map_err(|_| format!("{n:?} is not an fd number"))?;
    Ok((n, key.to_string()))
}

/// The whole command: crust's own options and the reference tool's on dump and restore.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("dump", |c| criu::augment(c, Pipeline::Dump))
        .mut_subcommand("restore", |c| criu::augment(c, Pipeline::Restore))
}

/// Parses the command line (after [`argv::expand`]); clap's own errors, help and version end
/// the process here.
fn parse_command_line() -> Result<(Cli, ArgMatches)> {
    let cmd = command();
    let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let valued = valued_options(&cmd);
    let valued: Vec<&str> = valued.iter().map(String::as_str).collect();
    let args = argv::expand(std::env::args_os().collect(), &names, &valued)?;
    let matches = cmd.try_get_matches_from(args).unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok((cli, matches))
}

/// The options (`--long` and `-s`) of the command and its subcommands that take their value in
/// the next word.
fn valued_options(cmd: &clap::Command) -> Vec<String> {
    let args = cmd.get_arguments().chain(cmd.get_subcommands().flat_map(|c| c.get_arguments()));
    // Before the command is built, an option without an explicit count takes one value.
    let valued = args.filter(|a| a.get_action().takes_values() && a.get_num_args().is_none_or(|n| n.min_values() != 0));
    valued.flat_map(|a| a.get_long().map(|l| format!("--{l}")).into_iter().chain(a.get_short().map(|c| format!("-{c}")))).collect()
}

/// The reference tool's options given to dump or restore: refused ones end the command here.
fn permits(matches: &ArgMatches) -> Result<Permits> {
    Ok(match matches.subcommand() {
        Some(("dump", sub)) => criu::check(sub, Pipeline::Dump)?,
        Some(("restore", sub)) => criu::check(sub, Pipeline::Restore)?,
        _ => Permits::default(),
    })
}

/// The directory relative -o and --pidfile paths are in: -W, else the image directory.
fn work_dir(command: &Command) -> Result<Option<PathBuf>> {
    let (dir, work) = match command {
        Command::Dump(a) => (&a.dir, &a.work_dir),
        Command::Restore(a) => (&a.dir, &a.work_dir),
        Command::Lease(a) => (&a.dir, &None),
        Command::Show { dir } => (dir, &None),
        _ => return Ok(None),
    };
    match work {
        Some(w) if !w.is_dir() => bail!("-W {}: not an existing directory", w.display()),
        Some(w) => Ok(Some(w.clone())),
        None => Ok(Some(dir.clone())),
    }
}

/// `path` as the reference tool reads it: relative to the work dir.
fn in_work_dir(work: Option<&Path>, path: &Path) -> PathBuf {
    match work {
        Some(w) if path.is_relative() => w.join(path),
        _ => path.to_owned(),
    }
}

/// Sets up the log: to the -o file (without colours) or to stderr (coloured only on a
/// terminal). Returns whether it goes to a file.
fn init_logging(cli: &Cli) -> Result<bool> {
    let level = argv::verbosity_level(&cli.verbosity)?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("crust={}", argv::level_filter(level))));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let Some(log) = &cli.log_file else {
        builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
        return Ok(false);
    };
    let work = work_dir(&cli.command)?;
    if let Command::Dump(a) = &cli.command
        && a.work_dir.is_none()
        && log.is_relative()
    {
        // The log goes into the image directory, which the dump creates anyway.
        std::fs::create_dir_all(&a.dir).with_context(|| format!("creating the image directory {}", a.dir.display()))?;
    }
    let path = in_work_dir(work.as_deref(), log);
    let file = std::fs::File::create(&path).with_context(|| format!("-o {}: cannot create the log file", path.display()))?;
    builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
    Ok(true)
}

/// Writes a line to stdout. A reader that went away (`crust show | head`) ends crust quietly:
/// the error is a broken pipe, which [`main`] does not report.
fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

pub fn main() -> ExitCode {
    let (cli, matches) = match parse_command_line() {
        Ok(parsed) => parsed,
        Err(e) => return report(&e, false),
    };
    for fd in &cli.close {
        let _ = nix::unistd::close(*fd);
    }
    let to_file = match init_logging(&cli) {
        Ok(to_file) => to_file,
        Err(e) => return report(&e, false),
    };
    match permits(&matches).and_then(|permits| run(cli, permits)) {
        Ok(code) => code,
        Err(e) => report(&e, to_file),
    }
}

/// The final error, in one line on stderr (and in the log file with -o); the exit code.
fn report(e: &anyhow::Error, to_file: bool) -> ExitCode {
    if is_broken_pipe(e) {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(std::io::stderr(), "crust: error: {e:#}");
    if to_file {
        tracing::error!("{e:#}");
    }
    // Interrupted by a signal: the shell's convention, 128 + its number.
    match e.downcast_ref::<crate::interrupt::Interrupted>() {
        Some(crate::interrupt::Interrupted(sig)) => ExitCode::from((128 + *sig).clamp(0, 255) as u8),
        None => ExitCode::FAILURE,
    }
}

fn run(cli: Cli, permits: Permits) -> Result<ExitCode> {
    let work = work_dir(&cli.command)?;
    match cli.command {
        Command::Dump(a) => dump(a, permits),
        Command::Restore(a) => restore(a, work.as_deref(), permits),
        Command::Lease(a) => {
            for line in crate::lease_cmd::run(&a.dir, a.lease.policy(), a.trust_image)? {
                emit(&line)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { dir } => {
            emit(&serde_json::to_string_pretty(&crate::show::show(&dir)?)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => check(),
        Command::Bench { mib, dir, runs, pages, criu, workload } => {
            let pages = match pages.as_str() {
                "4k" => vec![false],
                "huge" => vec![true],
                _ => vec![false, true],
            };
            use crate::bench::tasks::Tasks;
            let tasks = match workload.as_str() {
                "tree300" => Some(Tasks { processes: 300, threads: 0 }),
                "threads1000" => Some(Tasks { processes: 1, threads: 1000 }),
                _ => None,
            };
            let maps = workload == "maps16k";
            crate::bench::run(&crate::bench::BenchOptions { mib, dir, runs, pages, criu, tasks, maps })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchWorkload { mib, ready_file, small_pages } => {
            crate::bench::workload(mib, &ready_file, !small_pages).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchMaps { areas, one_area, ready_file } => {
            let layout = crate::bench::maps::Layout { areas: areas.max(1), apart: !one_area };
            crate::bench::maps::workload(layout, &ready_file).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchTasks { processes, threads, ready_file } => {
            let tasks = crate::bench::tasks::Tasks { processes: processes.max(1), threads };
            crate::bench::tasks::workload(tasks, &ready_file).map(|()| ExitCode::SUCCESS)
        }
        Command::Demo { story, dir } if story == "leases" => crate::demo::run_leases(&dir).map(|()| ExitCode::SUCCESS),
        Command::Demo { dir, .. } => crate::demo::run(&dir).map(|()| ExitCode::SUCCESS),
        Command::DemoLeaseHolder { file, log } => crate::demo::lease_holder(&file, &log).map(|()| ExitCode::SUCCESS),
        Command::DemoLeaseBreaker { file, log } => crate::demo::lease_breaker(&file, &log).map(|()| ExitCode::SUCCESS),
        Command::DemoWorkload { log } => crate::demo::workload(&log).map(|()| ExitCode::SUCCESS),
    }
}

fn dump(a: DumpArgs, permits: Permits) -> Result<ExitCode> {
    let opts = crate::dump::DumpOptions {
        leave_running: a.leave_running,
        leave_stopped: a.leave_stopped,
        externals: a.externals,
        shell_job: a.shell_job,
        external_locks: a.external_locks,
        freeze_timeout: (a.timeout > 0).then(|| Duration::from_secs(a.timeout)),
        permits,
    };
    let report = crate::dump::dump(a.pid, &a.dir, &opts)?;
    if a.display_stats {
        let pages = report.pages_bytes / crate::sys::PAGE_SIZE;
        emit("Displaying dump stats:")?;
        emit(&format!("Frozen time: {} us", report.frozen.as_micros()))?;
        emit(&format!("Dump time: {} us", report.total.as_micros()))?;
        emit(&format!("Memory pages written: {pages} ({pages:#x})"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(a: RestoreArgs, work: Option<&Path>, permits: Permits) -> Result<ExitCode> {
    let opts = RestoreOptions {
        detach: a.detach,
        leave_stopped: a.leave_stopped,
        pidfile: a.pidfile.as_deref().map(|p| in_work_dir(work, p)),
        inherit_fds: a.inherit_fds,
        shell_job: a.shell_job,
        lease_policy: a.lease.policy(),
        file_validation: a.file_validation.unwrap_or_default(),
        trust_image: a.trust_image,
        lazy_pages: a.lazy_pages,
        permits,
    };
    if a.check_only {
        crate::restore::check_only(&a.dir, &opts)?;
        emit(&format!("{}: the restore can go ahead", a.dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let restored = crate::restore::restore(&a.dir, &opts)?;
    let (pid, elapsed) = match &restored {
        Restored::Running { pid, elapsed } | Restored::Exited { pid, elapsed, .. } => (*pid, *elapsed),
    };
    if a.detach {
        emit(&pid.to_string())?;
    }
    if a.display_stats {
        emit("Displaying restore stats:")?;
        emit(&format!("Restore time: {} us", elapsed.as_micros()))?;
    }
    Ok(match restored {
        Restored::Running { .. } => ExitCode::SUCCESS,
        Restored::Exited { status, .. } => ExitCode::from(status.clamp(0, 255) as u8),
    })
}

/// `crust check`: one line per feature, a verdict, and the reference tool's last line when all
/// is well (scripts look for it).
fn check() -> Result<ExitCode> {
    let mut ok = true;
    for line in &crate::check::run_checks() {
        match &line.result {
            Ok(detail) => emit(&format!("ok    {:<46} {detail}", line.feature))?,
            Err(e) => {
                ok = false;
                emit(&format!("FAIL  {:<46} {e:#}", line.feature))?
            }
        }
    }
    if !ok {
        emit("Missing features: crust will not work here.")?;
        return Ok(ExitCode::FAILURE);
    }
    emit("Looks good: this kernel has everything crust needs.")?;
    emit("Looks good.")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
