//! The network lock: while a TCP connection of a checkpointed tree has no socket (from the
//! moment the dumped tree is gone until the restored connection takes over), the packets its
//! peer sends to it are dropped, so that the kernel never answers them with a reset and the
//! peer, retransmitting, sees nothing but a pause.
//!
//! The lock is one nftables table, `inet crust`, made by the first lock and removed with its
//! last element: a chain on the input hook (before connection tracking) drops the packets of
//! every connection listed in its sets, one element (peer address, peer port, local address,
//! local port) per locked connection. Changes are serialized between crust runs by an
//! exclusive flock on [`LOCK_PATH`], and made with the `nft` command.
//!
//! Dump locks each connection before reading it (a byte the peer sent after the reading would
//! otherwise be acknowledged by the kernel and lost with the killed tree). When the tree was
//! killed the lock stays, by design, until the restore; restore lifts each connection's lock
//! once its socket exists again, and every lock of an image whose restore failed. When the
//! tree runs on (-R, a failed or interrupted dump), the dump lifts its locks itself; if crust
//! dies first, its guardian process (`crust-netguard`) lifts them from the journal
//! `/run/crust/network-lock.<pid>`, and if the guardian died too, the next crust run does
//! ([`repair_left_behind`]).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::sys::inet::InetAddr;

const LOCK_PATH: &str = "/run/crust/network-lock.lock";
const TABLE: &str = "inet crust";

/// The table: two sets of locked connections and the rule that drops their packets.
const RULESET: &str = "table inet crust {
	set peers4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }
	set peers6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }
	chain input {
		type filter hook input priority -300; policy accept;
		ip saddr . tcp sport . ip daddr . tcp dport @peers4 drop
		ip6 saddr . tcp sport . ip6 daddr . tcp dport @peers6 drop
	}
}
";

/// A connection as the lock names it: its local end and its peer.
#[derive(Debug, Clone)]
pub struct Connection {
    pub local: InetAddr,
    pub peer: InetAddr,
}

/// `set { element }` of the connection's packets from the peer.
fn element(c: &Connection) -> (&'static str, String) {
    let (peer, local) = (c.peer.unmapped().ip, c.local.unmapped().ip);
    let set = if peer.is_ipv4() { "peers4" } else { "peers6" };
    (set, format!("{peer} . {} . {local} . {}", c.peer.port, c.local.port))
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (the nftables package) for the network lock")?;
    child.stdin.take().context("nft's stdin")?.write_all(script.as_bytes()).context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!("nft -f: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", "crust"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn serialized<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::fs::create_dir_all("/run/crust").context("creating /run/crust")?;
    let file = std::fs::File::options().create(true).append(true).open(LOCK_PATH).with_context(|| format!("opening {LOCK_PATH}"))?;
    let locked = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e).with_context(|| format!("flock {LOCK_PATH}"))?;
    let result = work();
    drop(locked);
    result
}

/// Drops from now on the packets the peers of `connections` send them.
pub fn lock(connections: &[Connection]) -> Result<()> {
    if connections.is_empty() {
        return Ok(());
    }
    serialized(|| {
        let mut script = String::new();
        if !table_exists() {
            script.push_str(RULESET);
        }
        for c in connections {
            let (set, element) = element(c);
            script.push_str(&format!("add element {TABLE} {set} {{ {element} }}\n"));
        }
        nft(&script).context("locking the network of the dumped TCP connections")
    })
}

/// Lets the packets of `connections` through again (those not locked are skipped); the table
/// goes with its last element.
pub fn unlock(connections: &[Connection]) -> Result<()> {
    if connections.is_empty() {
        return Ok(());
    }
    serialized(|| {
        if !table_exists() {
            return Ok(());
        }
        let listed = Command::new("nft").args(["list", "table", "inet", "crust"]).output().context("nft list table")?;
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let mut script = String::new();
        for c in connections {
            let (set, element) = element(c);
            if listed.contains(&element) {
                script.push_str(&format!("delete element {TABLE} {set} {{ {element} }}\n"));
            }
        }
        if !script.is_empty() {
            nft(&script).context("unlocking the network of the restored TCP connections")?;
        }
        if is_empty()? {
            nft(&format!("delete table {TABLE}\n")).context("removing the network lock's table")?;
        }
        Ok(())
    })
}

/// Whether no connection is locked any more.
fn is_empty() -> Result<bool> {
    let listed = Command::new("nft").args(["list", "table", "inet", "crust"]).output().context("nft list table")?;
    Ok(!String::from_utf8_lossy(&listed.stdout).contains("elements"))
}

/// The locks one dump took, lifted when it is dropped unless [`DumpLock::keep`] was called.
#[derive(Default)]
pub struct DumpLock {
    connections: Vec<Connection>,
    /// Write end of the guardian's pipe: the guardian wakes when it closes.
    guardian: Option<OwnedFd>,
}

fn journal_path(pid: u32) -> String {
    format!("/run/crust/network-lock.{pid}")
}

fn journal_line(c: &Connection) -> String {
    format!("{} {} {} {}\n", c.peer.ip, c.peer.port, c.local.ip, c.local.port)
}

fn parse_journal(text: &str) -> Vec<Connection> {
    let addr = |ip: &str, port: &str| -> Option<InetAddr> {
        Some(InetAddr { ip: ip.parse().ok()?, port: port.parse().ok()?, flowinfo: 0, scope_id: 0 })
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Connection { peer: addr(f.first()?, f.get(1)?)?, local: addr(f.get(2)?, f.get(3)?)? })
        })
        .collect()
}

impl DumpLock {
    /// Locks one more connection (the journal and the guardian first, so that it is never
    /// locked without a way back).
    pub fn add(&mut self, c: Connection) -> Result<()> {
        self.journal(&c)?;
        lock(std::slice::from_ref(&c))?;
        self.connections.push(c);
        Ok(())
    }

    /// Lists a connection in the journal the guardian reads if crust dies.
    fn journal(&mut self, c: &Connection) -> Result<()> {
        if self.guardian.is_none() {
            std::fs::create_dir_all("/run/crust").context("creating /run/crust")?;
            self.guardian = Some(start_guardian()?);
        }
        let path = journal_path(std::process::id());
        let mut journal = std::fs::File::options().create(true).append(true).open(&path).with_context(|| format!("opening {path}"))?;
        journal.write_all(journal_line(c).as_bytes()).with_context(|| format!("writing {path}"))?;
        Ok(())
    }

    /// The tree is gone: the locks stay until the restore.
    pub fn keep(mut self) {
        self.connections.clear();
        let _ = std::fs::remove_file(journal_path(std::process::id()));
    }
}

impl Drop for DumpLock {
    /// The tree runs on: its connections are let through again.
    fn drop(&mut self) {
        if self.connections.is_empty() {
            let _ = std::fs::remove_file(journal_path(std::process::id()));
            return;
        }
        match unlock(&self.connections) {
            Ok(()) => {
                let _ = std::fs::remove_file(journal_path(std::process::id()));
            }
            Err(e) => tracing::error!("lifting the network lock of the dumped tree: {e:#} (the guardian will retry)"),
        }
    }
}

/// Starts `crust-netguard`, which waits for crust to close its pipe (or die) and lifts the
/// locks its journal still lists.
fn start_guardian() -> Result<OwnedFd> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2 for the network lock's guardian")?;
    let keep = read_end.as_raw_fd();
    let owner = std::process::id();
    crate::sys::spawn_detached("crust-netguard", &[keep], move || {
        let mut pipe = std::fs::File::from(read_end);
        let mut byte = [0u8; 1];
        // crust never writes: this returns when crust closed its end or died.
        while let Err(e) = pipe.read(&mut byte) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        repair_journal(owner);
    })
    .context("starting the network lock's guardian")?;
    Ok(write_end)
}

/// Lifts the locks listed in the journal of crust `pid` and removes it.
fn repair_journal(pid: u32) {
    let path = journal_path(pid);
    let Ok(text) = std::fs::read_to_string(&path) else { return };
    if unlock(&parse_journal(&text)).is_ok() {
        let _ = std::fs::remove_file(&path);
    }
}

/// Lifts the locks of dumps whose crust died with its guardian (a journal whose pid is gone).
pub fn repair_left_behind() {
    let Ok(entries) = std::fs::read_dir("/run/crust") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("network-lock.").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            repair_journal(pid);
        }
    }
}

/// The locks of the connections a restore is making again: from the moment a connection's
/// socket exists in a restored process until the connection is let through, a crust killed
/// (its processes die with it) leaves its guardian to lift the lock.
static RESTORING: std::sync::Mutex<Option<DumpLock>> = std::sync::Mutex::new(None);

/// Restore: the connection's socket exists; its lock is crust's to lift, also if crust dies.
pub fn restoring(c: Connection) -> Result<()> {
    let mut restoring = RESTORING.lock().unwrap_or_else(|e| e.into_inner());
    let locks = restoring.get_or_insert_with(DumpLock::default);
    locks.journal(&c)?;
    locks.connections.push(c);
    Ok(())
}

/// Restore: lifts the connection's lock (it is ready, or the restore failed) and takes it out
/// of the journal.
pub fn restored(connections: &[Connection]) -> Result<()> {
    unlock(connections)?;
    let mut restoring = RESTORING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(locks) = restoring.as_mut() {
        locks.connections.retain(|c| !connections.iter().any(|d| d.local == c.local && d.peer == c.peer));
        let rest: String = locks.connections.iter().map(journal_line).collect();
        let path = journal_path(std::process::id());
        if rest.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::write(&path, rest).with_context(|| format!("writing {path}"))?;
        }
    }
    Ok(())
}
