//! The reference tool's permission options, as given to dump and restore.
//!
//! Options such as `--tcp-established` *permit* a kind of object (a TCP connection): without
//! them crust refuses such an object at dump by pid, fd and kind. Their values are recorded
//! here, in the dump and restore options; the kinds that honour them read them here
//! (`--tcp-established`, `--skip-in-flight`, `--ghost-limit` and `--link-remap` so far: see
//! `kinds::ghost` for the last two), and any object crust cannot restore exactly is refused
//! whatever the options say.

/// The permission options given to `crust dump` or `crust restore`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Permits {
    /// `--tcp-established`: established TCP connections may be checkpointed.
    pub tcp_established: bool,
    /// `--tcp-close`: TCP connections are dumped without their state / restored closed.
    pub tcp_close: bool,
    /// `--skip-in-flight`: TCP connections not yet accepted may be left out.
    pub skip_in_flight: bool,
    /// `--link-remap`: a file unlinked by its open name but linked elsewhere is linked back to
    /// a hidden name at dump (otherwise refused).
    pub link_remap: bool,
    /// `--ghost-limit SIZE`: largest deleted file whose contents go into the image, in bytes
    /// (None: 1 MiB, as the reference tool).
    pub ghost_limit: Option<u64>,
    /// `--ghost-fiemap`: deleted files may be saved through their extent map (crust always
    /// skips their holes).
    pub ghost_fiemap: bool,
    /// `-x/--ext-unix-sk[=IDS]`: UNIX sockets connected outside the tree (these inodes only,
    /// when IDS are given).
    pub ext_unix_sk: Option<Vec<String>>,
    /// `--force-irmap` / `--irmap-scan-path`: inotify watches may be found by path.
    pub force_irmap: bool,
    pub irmap_scan_paths: Vec<String>,
    /// `--skip-mnt`, `--enable-fs`, `--enable-external-sharing`, `--enable-external-masters`:
    /// mount namespace liberties.
    pub skip_mnt: Vec<String>,
    pub enable_fs: Vec<String>,
    pub enable_external_sharing: bool,
    pub enable_external_masters: bool,
    /// `--allow-uprobes`: a `[uprobes]` mapping may be left out.
    pub allow_uprobes: bool,
    /// `--network-lock METHOD`: how the network of TCP connections would be locked.
    pub network_lock: Option<String>,
    /// `--skip-file-rwx-check` (restore): files may be reopened whatever their permissions.
    pub skip_file_rwx_check: bool,
}

/// A size as the reference tool writes it: a number with an optional K, M or G suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(format!("{text:?} is not a size (a number with an optional K, M or G)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (a number with an optional K, M or G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_the_reference_tools_suffixes() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("3G"), Ok(3 << 30));
        assert!(parse_size("1T").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
