//! The `crust` command line. Option names follow CRIU where the meaning is the same.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use crust::restore::{RestoreOptions, Restored};

#[derive(Parser)]
#[command(name = "crust", version, about = "Checkpoint/restore of Linux processes")]
struct Cli {
    /// More log output: -v info, -vv debug, -vvv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Write the log to this file instead of stderr.
    #[arg(short = 'o', long = "log-file", global = true)]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Freeze a process, write its image, then kill it (or leave it running with -R).
    Dump {
        /// The process to dump.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// The image directory.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Leave the process running after the dump.
        #[arg(short = 'R', long)]
        leave_running: bool,
        /// An object shared with a process outside the tree that you will reconnect at restore
        /// with --inherit-fd (for now: pipe:[INODE], as /proc/PID/fd shows it). Repeatable.
        #[arg(long = "external", value_name = "KEY")]
        externals: Vec<String>,
        /// Accepted for CRIU compatibility: crust always dumps file locks.
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
    },
    /// Recreate a process from an image, with its PID, and wait for it.
    Restore {
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Return as soon as the process runs instead of waiting for it to exit.
        #[arg(short = 'd', long = "restore-detached")]
        detach: bool,
        /// fd[N]:KEY: crust's own fd N takes the place of the external object KEY recorded at
        /// dump (for example fd[0]:pipe:[1234]). Repeatable.
        #[arg(long = "inherit-fd", value_name = "fd[N]:KEY", value_parser = parse_inherit_fd)]
        inherit_fds: Vec<(i32, String)>,
        /// Restore a shell job on this terminal (crust's controlling terminal), in the
        /// foreground if it was in the foreground.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// What happens to a lease break that was in progress: holder (the whole
        /// lease-break-time again), breaker (it completes at once), no-break (the holder keeps
        /// its lease), add:SECS, set:SECS. Default: as recorded in the image.
        #[arg(long = "lease-policy", value_parser = crust::kinds::leases::Policy::parse)]
        lease_policy: Option<crust::kinds::leases::Policy>,
        /// How the executable and libraries are compared with what the process ran: by size and
        /// mtime (default), or `filesize` (size only). `buildid` is not supported yet.
        #[arg(long = "file-validation", value_name = "MODE", value_parser = parse_file_validation)]
        file_validation: Option<crust::kinds::memory::CodeValidation>,
        /// Restore an image that is not sealed by this host's crust, or was changed since its
        /// dump (its seal and file hashes are then not checked): only for images you trust.
        #[arg(long = "trust-image")]
        trust_image: bool,
    },
    /// List the image's file leases; with an option, change what restore does with a lease
    /// break that was in progress (written into the image).
    Lease {
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// holder: the whole lease-break-time again; breaker: the break completes at restore.
        #[arg(long, value_parser = ["holder", "breaker"])]
        favor: Option<String>,
        /// Add SECS (may be negative) to the remaining break time.
        #[arg(long, value_name = "SECS", allow_hyphen_values = true, value_parser = parse_lease_secs)]
        add: Option<f64>,
        /// Set the remaining break time to SECS.
        #[arg(long, value_name = "SECS", value_parser = parse_lease_secs)]
        set: Option<f64>,
        /// The holder keeps its pre-break lease; no break is restarted.
        #[arg(long)]
        no_break: bool,
    },
    /// Print the whole image as JSON.
    Show {
        #[arg(short = 'D', long = "images-dir")]
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
    BenchWorkload { mib: usize, ready_file: PathBuf },
}

/// A number of seconds for `crust lease --add/--set`, within range.
fn parse_lease_secs(v: &str) -> Result<f64, String> {
    let secs = v.parse::<f64>().map_err(|_| format!("{v:?} is not a number of seconds"))?;
    crust::kinds::leases::Policy::check_secs(secs)
}

/// CRIU's `--file-validation` modes.
fn parse_file_validation(mode: &str) -> Result<crust::kinds::memory::CodeValidation, String> {
    match mode {
        "filesize" => Ok(crust::kinds::memory::CodeValidation::FileSize),
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

fn init_logging(verbose: u8, log_file: Option<&PathBuf>) -> Result<()> {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("crust={level}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match log_file {
        Some(path) => {
            let file = std::fs::File::create(path)?;
            builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Dump { pid, dir, leave_running, externals, file_locks: _, shell_job, external_locks } => {
            let opts = crust::dump::DumpOptions { leave_running, externals, shell_job, external_locks };
            crust::dump::dump(pid, &dir, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { dir, detach, inherit_fds, shell_job, lease_policy, file_validation, trust_image } => match crust::restore::restore(
            &dir,
            &RestoreOptions {
                detach,
                inherit_fds,
                shell_job,
                lease_policy,
                file_validation: file_validation.unwrap_or_default(),
                trust_image,
            },
        )? {
            Restored::Running { pid, .. } => {
                println!("{pid}");
                Ok(ExitCode::SUCCESS)
            }
            Restored::Exited { status, .. } => Ok(ExitCode::from(status.clamp(0, 255) as u8)),
        },
        Command::Lease { dir, favor, add, set, no_break } => {
            use crust::kinds::leases::Policy;
            let chosen: Vec<Policy> = [
                favor.as_deref().map(|f| if f == "holder" { Policy::FavorHolder } else { Policy::FavorBreaker }),
                add.map(|s| Policy::AddMs((s * 1000.0) as i64)),
                set.map(|s| Policy::SetMs((s.max(0.0) * 1000.0) as u64)),
                no_break.then_some(Policy::NoBreak),
            ]
            .into_iter()
            .flatten()
            .collect();
            if chosen.len() > 1 {
                anyhow::bail!("choose one of --favor, --add, --set, --no-break");
            }
            for line in crust::lease_cmd::run(&dir, chosen.first().copied())? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { dir } => {
            println!("{}", serde_json::to_string_pretty(&crust::show::show(&dir)?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { mib, dir, runs } => {
            crust::bench::run(&crust::bench::BenchOptions { mib, dir, runs })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchWorkload { mib, ready_file } => {
            crust::bench::workload(mib, &ready_file)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { story, dir } => {
            if story == "leases" {
                crust::demo::run_leases(&dir)?;
            } else {
                crust::demo::run(&dir)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoLeaseHolder { file, log } => {
            crust::demo::lease_holder(&file, &log)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoLeaseBreaker { file, log } => {
            crust::demo::lease_breaker(&file, &log)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoWorkload { log } => {
            crust::demo::workload(&log)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let lines = crust::check::run_checks();
            let mut ok = true;
            for line in &lines {
                match &line.result {
                    Ok(detail) => println!("ok    {:<46} {detail}", line.feature),
                    Err(e) => {
                        ok = false;
                        println!("FAIL  {:<46} {e:#}", line.feature)
                    }
                }
            }
            if ok {
                println!("Looks good: this kernel has everything crust needs.");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("Missing features: crust will not work here.");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.verbose, cli.log_file.as_ref()) {
        eprintln!("crust: cannot set up logging: {e:#}");
        return ExitCode::FAILURE;
    }
    let logging_to_file = cli.log_file.is_some();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crust: error: {e:#}");
            if logging_to_file {
                tracing::error!("{e:#}");
            }
            // Interrupted by a signal: the shell's convention, 128 + its number.
            match e.downcast_ref::<crust::interrupt::Interrupted>() {
                Some(crust::interrupt::Interrupted(sig)) => ExitCode::from((128 + *sig).clamp(0, 255) as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}
