//! The reference tool's (CRIU's) `dump` and `restore` options, in one table.
//!
//! Scripts, test harnesses and runtimes pass the same options to both commands, so crust takes
//! every one of them, and gives each the reference tool's meaning or refuses it:
//!
//! - [`Class::Native`]: crust's own option of that name and meaning (declared with the command
//!   in `cli/mod.rs`); the table only lists it.
//! - [`Class::Ignored`]: accepted; on this command it changes nothing, for the reason given.
//! - [`Class::Permits`]: accepted; it only permits a kind of object crust refuses at dump by
//!   pid, fd and kind anyway. Its value is recorded in [`Permits`] for the work that will honour
//!   it.
//! - [`Class::Only`]: accepted with the listed values, refused with any other.
//! - [`Class::Refused`]: crust does not have its meaning yet: the command fails in one line
//!   naming the option, before anything is done.
//!
//! Boolean options also take their `--no-` form, which the last one given overrides, as in the
//! reference tool.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::permits::Permits;

/// The two commands that take the reference tool's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipeline {
    Dump,
    Restore,
}

/// What an option takes.
#[derive(Clone, Copy, Debug)]
pub enum Takes {
    Nothing,
    /// A value (repeatable).
    Value(&'static str),
    /// An optional value, attached with `=`.
    OptionalValue(&'static str),
}

/// What crust does with an option on one command (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub enum Class {
    Native,
    Ignored(&'static str),
    Permits(&'static str),
    /// Accepted values, what they mean here, and why any other value is refused.
    Only(&'static [&'static str], &'static str, &'static str),
    Refused(&'static str),
}

/// One of the reference tool's options.
#[derive(Clone, Copy, Debug)]
pub struct CriuOption {
    pub long: &'static str,
    pub short: Option<char>,
    pub takes: Takes,
    /// A boolean option with a `--no-` form.
    pub negatable: bool,
    pub dump: Class,
    pub restore: Class,
}

impl CriuOption {
    const fn new(long: &'static str, takes: Takes, class: Class) -> Self {
        CriuOption { long, short: None, takes, negatable: false, dump: class, restore: class }
    }
    const fn flag(long: &'static str, class: Class) -> Self {
        Self::new(long, Takes::Nothing, class)
    }
    const fn value(long: &'static str, name: &'static str, class: Class) -> Self {
        Self::new(long, Takes::Value(name), class)
    }
    const fn optional(long: &'static str, name: &'static str, class: Class) -> Self {
        Self::new(long, Takes::OptionalValue(name), class)
    }
    const fn short(mut self, c: char) -> Self {
        self.short = Some(c);
        self
    }
    /// A boolean option of the reference tool: it also has a `--no-` form.
    const fn bool(mut self) -> Self {
        self.negatable = true;
        self
    }
    const fn dump(mut self, class: Class) -> Self {
        self.dump = class;
        self
    }
    const fn restore(mut self, class: Class) -> Self {
        self.restore = class;
        self
    }

    pub fn class(&self, pipeline: Pipeline) -> Class {
        match pipeline {
            Pipeline::Dump => self.dump,
            Pipeline::Restore => self.restore,
        }
    }

    fn negation(&self) -> String {
        format!("no-{}", self.long)
    }
}

use Class::{Ignored, Native, Only, Permits as Permit, Refused};

const ONLY_RESTORE: Class = Ignored("used by restore only; the reference tool ignores it on dump too");
const ONLY_DUMP: Class = Ignored("used by dump only; the reference tool ignores it on restore too");
const TCP: &str = "established TCP connections are checkpointed (TCP repair), their peers kept waiting by the network lock";
const TCP_CLOSE: &str = "TCP connections are checkpointed without their state and restored closed (dump), or restored closed whatever the image holds (restore)";
const IN_FLIGHT: &str =
    "a listener's connections not yet accepted are left out (their clients see a reset); without it such a listener is refused at dump";
const LINK_REMAP: &str = "dump: a file unlinked by the name it was opened by but linked elsewhere is linked back to a hidden name in its directory, kept until a restore opens and removes it (without it, refused)";
const GHOST_LIMIT: &str = "dump: the largest deleted file (bytes, or K, M, G) whose contents go into the image, 1M by default; a larger one is refused by pid, fd, path and size";
const GHOST_FIEMAP: &str = "crust always saves a deleted file's data without its holes (SEEK_DATA/SEEK_HOLE)";
const MOUNTS: &str = "permits mount points; crust refuses processes in another mount namespace at dump";
const IRMAP: &str = "permits finding inotify watches by path; crust finds them by file handle and refuses a watch it cannot reach that way";
const CGROUPS: &str = "crust does not checkpoint cgroups: restored processes join crust's own";
const NO_PAGE_SERVER: &str = "crust writes every page into the image directory; it has no page server";
const NO_PRE_DUMP: &str = "crust has no pre-dump or incremental dumps";
const NAMESPACES: &str = "crust does not checkpoint namespaces";
const LSM: &str = "crust does not restore LSM (AppArmor, SELinux) labels";

/// Every option of the reference tool's `dump` and `restore` (CRIU 4.2), with crust's class on
/// each command. The `check`-only and service options are not here.
pub const CRIU_OPTIONS: &[CriuOption] = &[
    // Generic.
    CriuOption::value("tree", "PID", Native).short('t').restore(ONLY_DUMP),
    CriuOption::value("images-dir", "DIR", Native).short('D'),
    CriuOption::value("work-dir", "DIR", Native).short('W'),
    CriuOption::flag("leave-stopped", Native).short('s'),
    CriuOption::flag("leave-running", Native).short('R').restore(ONLY_DUMP),
    CriuOption::flag("restore-detached", ONLY_RESTORE).short('d').bool().restore(Native),
    CriuOption::flag("daemon", ONLY_RESTORE).bool().restore(Native),
    CriuOption::flag("restore-sibling", ONLY_RESTORE)
        .short('S')
        .bool()
        .restore(Refused("the restored root is created as crust's child, not as its sibling")),
    CriuOption::value("pidfile", "FILE", ONLY_RESTORE).restore(Native),
    CriuOption::optional(
        "cpu-cap",
        "CAP",
        Only(&["none"], "crust compares no CPU features (as with none)", "crust does not compare CPU features"),
    ),
    CriuOption::flag("exec-cmd", ONLY_RESTORE).restore(Refused("running a command as the restored root's parent")),
    CriuOption::value("freeze-cgroup", "PATH", Refused("crust freezes with ptrace, not with the cgroup freezer")).restore(ONLY_DUMP),
    CriuOption::flag("weak-sysctls", Ignored("crust restores no namespace sysctls")).bool(),
    CriuOption::flag("lazy-pages", Native).dump(Refused("dump writes every page into the image; none is left to serve lazily")),
    CriuOption::flag("stream", Refused("images are read and written as files in the image directory")).bool(),
    CriuOption::flag("mntns-compat-mode", Ignored("crust restores no mount namespace")).bool(),
    CriuOption::value(
        "network-lock",
        "METHOD",
        Permit("how TCP connections are locked while the tree is away: nftables (also for iptables: the same kernel tables) or skip"),
    ),
    CriuOption::flag("unprivileged", Refused("crust needs root (ptrace of any process, clone3 with set_tid)")).bool(),
    CriuOption::flag("allow-uprobes", Permit("permits [uprobes] mappings; crust refuses them at dump by pid and address")).bool(),
    // External resources.
    CriuOption::value("external", "RES", Native).restore(Refused("crust's images hold no devices, mounts or network devices to map")),
    CriuOption::value("inherit-fd", "fd[N]:RES", ONLY_RESTORE).restore(Native),
    // Special resources.
    CriuOption::flag("tcp-established", Permit(TCP)).bool(),
    CriuOption::flag("skip-in-flight", Permit(IN_FLIGHT)).bool(),
    CriuOption::flag("tcp-close", Permit(TCP_CLOSE)).bool(),
    CriuOption::value("root", "PATH", Refused("crust restores in its own root file system only")).short('r'),
    CriuOption::flag("evasive-devices", Refused("device files are reopened at their recorded path only")).bool(),
    CriuOption::flag("link-remap", Permit(LINK_REMAP)).bool(),
    CriuOption::value("ghost-limit", "SIZE", Permit(GHOST_LIMIT)),
    CriuOption::flag("ghost-fiemap", Permit(GHOST_FIEMAP)).bool(),
    CriuOption::value("action-script", "FILE", Refused("crust runs no action scripts")),
    CriuOption::flag("shell-job", Native).short('j').bool(),
    CriuOption::flag("file-locks", Native).short('l').bool(),
    CriuOption::value("libdir", "PATH", Refused("crust has no plugins")).short('L'),
    CriuOption::value("timeout", "SECS", Native).restore(ONLY_DUMP),
    CriuOption::flag("force-irmap", Permit(IRMAP)).bool(),
    CriuOption::value("irmap-scan-path", "PATH", Permit(IRMAP)),
    CriuOption::optional("manage-cgroups", "MODE", Only(&["ignore"], "crust leaves cgroups alone (as with ignore)", CGROUPS)),
    CriuOption::value("cgroup-root", "[CTL:]PATH", Refused(CGROUPS)),
    CriuOption::value("cgroup-props", "STRING", Refused(CGROUPS)),
    CriuOption::value("cgroup-props-file", "FILE", Refused(CGROUPS)),
    CriuOption::value("cgroup-dump-controller", "NAME", Refused(CGROUPS)),
    CriuOption::value("cgroup-yard", "PATH", Refused(CGROUPS)),
    CriuOption::value("lsm-profile", "TYPE:NAME", Refused(LSM)),
    CriuOption::value("lsm-mount-context", "CTX", Refused(LSM)),
    CriuOption::value("skip-mnt", "PATH", Permit(MOUNTS)),
    CriuOption::value("enable-fs", "FSNAMES", Permit(MOUNTS)),
    CriuOption::flag("enable-external-sharing", Permit(MOUNTS)),
    CriuOption::flag("enable-external-masters", Permit(MOUNTS)),
    CriuOption::value(
        "ext-mount-map",
        "KEY:VAL",
        Refused("crust does not checkpoint mount namespaces, so there are no external mounts to map"),
    )
    .short('M'),
    CriuOption::optional(
        "ext-unix-sk",
        "INODES",
        Permit("permits UNIX sockets connected outside the tree; crust refuses them at dump by pid and fd"),
    )
    .short('x'),
    CriuOption::value("empty-ns", "net", Refused(NAMESPACES)),
    CriuOption::value("join-ns", "NS:PID|FILE", Refused(NAMESPACES)).short('J'),
    CriuOption::value("veth-pair", "IN=OUT", Refused(NAMESPACES)),
    CriuOption::value(
        "file-validation",
        "METHOD",
        Only(&["filesize"], "crust records size and mtime; the comparison is chosen at restore", "crust does not compare build-ids"),
    )
    .restore(Native),
    CriuOption::flag("skip-file-rwx-check", ONLY_RESTORE)
        .bool()
        .restore(Permit("permits reopening files the process could no longer open; crust refuses such a file by name")),
    // Logging.
    CriuOption::value("log-file", "FILE", Native).short('o'),
    CriuOption::flag("log-pid", Ignored("crust logs from one process: everything goes to the -o file")).bool(),
    CriuOption::optional("verbosity", "LEVEL", Native).short('v'),
    CriuOption::flag("display-stats", Native).bool(),
    // Memory.
    CriuOption::flag("track-mem", Refused(NO_PRE_DUMP)).bool(),
    CriuOption::value("prev-images-dir", "DIR", Refused(NO_PRE_DUMP)),
    CriuOption::flag("auto-dedup", Refused(NO_PRE_DUMP)).bool(),
    CriuOption::value("pre-dump-mode", "MODE", Ignored("applies to pre-dump, which crust does not have")),
    CriuOption::flag("page-server", Refused(NO_PAGE_SERVER)).bool(),
    CriuOption::value("address", "ADDR", Refused(NO_PAGE_SERVER)),
    CriuOption::value("port", "PORT", Refused(NO_PAGE_SERVER)),
    CriuOption::value("ps-socket", "FD", Refused(NO_PAGE_SERVER)),
    CriuOption::flag("tls", Refused(NO_PAGE_SERVER)).bool(),
    CriuOption::value("tls-cacert", "FILE", Refused(NO_PAGE_SERVER)),
    CriuOption::value("tls-cacrl", "FILE", Refused(NO_PAGE_SERVER)),
    CriuOption::value("tls-cert", "FILE", Refused(NO_PAGE_SERVER)),
    CriuOption::value("tls-key", "FILE", Refused(NO_PAGE_SERVER)),
    CriuOption::flag("tls-no-cn-verify", Refused(NO_PAGE_SERVER)).bool(),
    CriuOption::value("status-fd", "FD", Ignored("the reference tool writes it for page-server, lazy-pages and service only")),
    // Configuration and the rest.
    CriuOption::value("config", "FILE", Native),
    CriuOption::flag("no-default-config", Native),
    CriuOption::flag("deprecated", Ignored("crust has no deprecated behaviour to turn on")).bool(),
    CriuOption::value("close", "FD", Native),
    CriuOption::flag("ms", Refused("deprecated in the reference tool too")),
];

/// `--tcp-skip-in-flight`, a name some runtimes use for `--skip-in-flight`.
const ALIASES: &[(&str, &str)] = &[("skip-in-flight", "tcp-skip-in-flight")];

pub const ACCEPTED_HEADING: &str = "CRIU options accepted for compatibility";
pub const REFUSED_HEADING: &str = "CRIU options not supported yet (refused before anything is done)";

/// Adds the table's non-native options of `pipeline` to its command, and the `--no-` forms.
pub fn augment(mut cmd: Command, pipeline: Pipeline) -> Command {
    for o in CRIU_OPTIONS {
        let class = o.class(pipeline);
        let id = match class {
            Native => match cmd.get_arguments().find(|a| a.get_long() == Some(o.long)) {
                Some(native) => native.get_id().clone(),
                // A global option, declared on the top command.
                None => continue,
            },
            _ => {
                cmd = cmd.arg(build_arg(o, class));
                clap::Id::from(o.long)
            }
        };
        if o.negatable {
            let no = o.negation();
            cmd = cmd.mut_arg(id.clone(), |a| a.overrides_with(no.clone()));
            cmd = cmd.arg(Arg::new(no.clone()).long(no).action(ArgAction::SetTrue).hide(true).overrides_with(id));
        }
    }
    cmd
}

fn build_arg(o: &CriuOption, class: Class) -> Arg {
    let (help, heading) = match class {
        Ignored(why) => (format!("Accepted; changes nothing here: {why}"), ACCEPTED_HEADING),
        Permit(why) => (format!("Accepted: {why}"), ACCEPTED_HEADING),
        Only(values, meaning, why) => {
            (format!("Accepted as {}: {meaning}; other values refused ({why})", values.join(", ")), ACCEPTED_HEADING)
        }
        Refused(why) => (format!("Not supported yet: {why}"), REFUSED_HEADING),
        Native => unreachable!("native options are declared with their command"),
    };
    let mut arg = Arg::new(o.long).long(o.long).help(help).help_heading(heading);
    if let Some(c) = o.short {
        arg = arg.short(c);
    }
    if let Some((_, alias)) = ALIASES.iter().find(|(name, _)| *name == o.long) {
        arg = arg.alias(*alias);
    }
    match o.takes {
        Takes::Nothing => arg.action(ArgAction::SetTrue),
        Takes::Value(name) => arg.value_name(name).action(ArgAction::Append),
        Takes::OptionalValue(name) => {
            arg.value_name(name).action(ArgAction::Append).num_args(0..=1).require_equals(true).default_missing_value("")
        }
    }
}

/// An option given on the command line that crust refuses, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Checks the table's options given to `pipeline`: the first refused one is the error;
/// otherwise the permissions given.
pub fn check(matches: &ArgMatches, pipeline: Pipeline) -> Result<Permits, Refusal> {
    let mut permits = Permits::default();
    for o in CRIU_OPTIONS {
        let class = o.class(pipeline);
        if matches!(class, Native) || matches.value_source(o.long) != Some(ValueSource::CommandLine) {
            continue;
        }
        let values: Vec<String> = match o.takes {
            Takes::Nothing => Vec::new(),
            _ => matches.get_many::<String>(o.long).map(|v| v.cloned().collect()).unwrap_or_default(),
        };
        match class {
            Refused(why) => return Err(Refusal(format!("--{} is not supported yet ({why})", o.long))),
            Only(allowed, _, why) => {
                if let Some(v) = values.iter().find(|v| !allowed.contains(&v.as_str())) {
                    let shown = if v.is_empty() { format!("--{} without a value", o.long) } else { format!("--{} {v}", o.long) };
                    return Err(Refusal(format!("{shown} is not supported yet ({why})")));
                }
            }
            Permit(_) => record(&mut permits, o.long, values)?,
            Native | Ignored(_) => {}
        }
    }
    Ok(permits)
}

/// Records a permission option's value.
fn record(p: &mut Permits, long: &str, values: Vec<String>) -> Result<(), Refusal> {
    let list = |values: Vec<String>| values.iter().flat_map(|v| v.split(',')).filter(|s| !s.is_empty()).map(String::from).collect();
    match long {
        "tcp-established" => p.tcp_established = true,
        "tcp-close" => p.tcp_close = true,
        "skip-in-flight" => p.skip_in_flight = true,
        "link-remap" => p.link_remap = true,
        "ghost-fiemap" => p.ghost_fiemap = true,
        "ghost-limit" => {
            let last = values.last().map(String::as_str).unwrap_or_default();
            p.ghost_limit = Some(crate::permits::parse_size(last).map_err(|e| Refusal(format!("--ghost-limit: {e}")))?);
        }
        "ext-unix-sk" => p.ext_unix_sk = Some(list(values)),
        "force-irmap" => p.force_irmap = true,
        "irmap-scan-path" => p.irmap_scan_paths = values,
        "skip-mnt" => p.skip_mnt = values,
        "enable-fs" => p.enable_fs = list(values),
        "enable-external-sharing" => p.enable_external_sharing = true,
        "enable-external-masters" => p.enable_external_masters = true,
        "allow-uprobes" => p.allow_uprobes = true,
        "network-lock" => {
            let method = values.last().cloned().unwrap_or_default();
            if !["iptables", "nftables", "skip"].contains(&method.as_str()) {
                return Err(Refusal(format!("--network-lock {method}: unknown method (iptables, nftables or skip)")));
            }
            p.network_lock = Some(method);
        }
        "skip-file-rwx-check" => p.skip_file_rwx_check = true,
        other => unreachable!("--{other} is classed Permits but not recorded"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_listed_once() {
        let mut names: Vec<&str> = CRIU_OPTIONS.iter().map(|o| o.long).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "an option is listed twice");
    }

    #[test]
    fn every_permission_is_recorded() {
        for o in CRIU_OPTIONS {
            for pipeline in [Pipeline::Dump, Pipeline::Restore] {
                if let Permit(_) = o.class(pipeline) {
                    let value = match o.long {
                        "ghost-limit" => "1M",
                        "network-lock" => "skip",
                        _ => "x",
                    };
                    let mut p = Permits::default();
                    record(&mut p, o.long, vec![value.to_string()]).unwrap();
                    assert_ne!(p, Permits::default(), "--{} is not recorded", o.long);
                }
            }
        }
    }

    #[test]
    fn the_readme_lists_every_option() {
        let readme = include_str!("../../README.md");
        for o in CRIU_OPTIONS {
            assert!(readme.contains(&format!("--{}", o.long)), "README.md does not list --{}", o.long);
        }
    }
}
