//! /proc/PID/smaps (and /proc/PID/maps) parsed from the lines crust reads: each area's first
//! line, Rss, AnonHugePages and VmFlags. The other twenty-odd lines of an area are passed over
//! without being looked into: a process of 16384 small areas has 13 MB of smaps, which procfs's
//! parser (a String and a hash-map entry per line), even fed only the lines used, took 1.1 us
//! per area to read; this takes about 0.3. The results are procfs's, field for field (the unit
//! tests compare them), so that the areas are described exactly as before.

use anyhow::{Context, Result, bail};
use procfs::process::{MMPermissions, MMapPath, VmFlags};

/// One area of /proc/PID/smaps: its first line, and what crust reads of its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Area {
    /// [start, end).
    pub address: (u64, u64),
    pub perms: MMPermissions,
    pub offset: u64,
    /// (major, minor), as procfs gives them.
    pub dev: (i32, i32),
    pub inode: u64,
    pub pathname: MMapPath,
    /// The VmFlags words procfs knows.
    pub vm_flags: VmFlags,
    /// The words procfs does not know that decide what crust can restore.
    pub extra: ExtraFlags,
    /// AnonHugePages, in bytes; None where the text has no such line (the BPF path leaves the
    /// count to the walk that finds the area's pages, see memory.rs `resident_runs`).
    pub anon_huge_pages: Option<u64>,
    /// Rss, in bytes: the area's present pages, other than the zero page (the kernel counts
    /// them page by page for smaps).
    pub rss: u64,
}

/// VmFlags words newer than procfs: `dp` (MAP_DROPPABLE), `sl` (sealed by mseal), `ss`
/// (a shadow stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraFlags {
    pub droppable: bool,
    pub sealed: bool,
    pub shadow_stack: bool,
}

impl Area {
    /// The same mapping as `other`: same range, protection, backing and offset.
    pub fn same_mapping(&self, other: &Area) -> bool {
        self.address == other.address
            && self.perms == other.perms
            && self.offset == other.offset
            && self.dev == other.dev
            && self.inode == other.inode
            && self.pathname == other.pathname
    }
}

/// Every area of `text` (smaps, or maps: areas without fields), in the kernel's order.
pub fn parse(text: &str) -> Result<Vec<Area>> {
    let mut parser = Parser::default();
    parser.feed(text)?;
    Ok(parser.finish())
}

/// A parse of text given in pieces of whole lines (as a reader gets them from the kernel, so
/// that the parse goes on while the kernel writes the rest).
#[derive(Default)]
pub struct Parser {
    areas: Vec<Area>,
    /// Lines parsed so far (for errors).
    lines: usize,
}

impl Parser {
    /// Parses the whole lines of `text` (its last line may lack its newline).
    pub fn feed(&mut self, text: &str) -> Result<()> {
        let bytes = text.as_bytes();
        let mut start = 0;
        // Each line's end found by SIMD over the whole text (13 MB for 16384 areas, 26 lines each).
        for end in memchr::memchr_iter(b'\n', bytes).chain([bytes.len()]) {
            if start >= bytes.len() {
                break;
            }
            // (Apart at a newline, an ASCII byte: on a boundary of UTF-8 characters.)
            let line = &text[start..end];
            start = end + 1;
            self.lines += 1;
            parse_line(&mut self.areas, line).with_context(|| format!("line {}: {line:?}", self.lines))?;
        }
        Ok(())
    }

    /// The areas parsed.
    pub fn finish(self) -> Vec<Area> {
        self.areas
    }
}

/// One line: a field of the last area (its name starts with an ASCII capital letter, as
/// procfs decides), or the first line of a new one.
fn parse_line(areas: &mut Vec<Area>, line: &str) -> Result<()> {
    let field = match line.as_bytes().first() {
        Some(c) if !c.is_ascii_uppercase() => {
            areas.push(header(line)?);
            return Ok(());
        }
        // Most lines are fields crust does not read: one byte looked at.
        Some(b'V') if starts_with(line, b"VmFlags:") => Field::VmFlags,
        Some(b'A') if starts_with(line, b"AnonHugePages:") => Field::AnonHugePages,
        Some(b'R') if starts_with(line, b"Rss:") => Field::Rss,
        Some(_) => Field::Other,
        None => bail!("an empty line"),
    };
    let Some(area) = areas.last_mut() else { bail!("a field before the first area") };
    match field {
        Field::VmFlags => (area.vm_flags, area.extra) = vm_flags(&line["VmFlags:".len()..]),
        Field::AnonHugePages => area.anon_huge_pages = Some(size(line)?),
        Field::Rss => area.rss = size(line)?,
        Field::Other => {}
    }
    Ok(())
}

/// `line` starts with `prefix`, compared as one array of known length (no call to memcmp).
fn starts_with<const N: usize>(line: &str, prefix: &[u8; N]) -> bool {
    line.as_bytes().first_chunk::<N>() == Some(prefix)
}

enum Field {
    VmFlags,
    AnonHugePages,
    Rss,
    Other,
}

/// An area's first line (`start-end perms offset major:minor inode name`, as in
/// /proc/PID/maps): five fields each ended by one space, then the name (trimmed, as procfs
/// does) after the padding; its fields left empty.
pub fn header(line: &str) -> Result<Area> {
    let mut rest = line;
    let mut next = |what: &str| -> Result<&str> {
        let space = rest.bytes().position(|b| b == b' ').with_context(|| format!("the line ends at the {what}"))?;
        let field = &rest[..space];
        rest = &rest[space + 1..];
        Ok(field)
    };
    let (address, perms, offset, dev, inode) =
        (next("address range")?, next("permissions")?, next("offset")?, next("device")?, next("inode")?);
    Ok(Area {
        address: pair(address, b'-').context("address range")?,
        perms: perms.parse().unwrap_or_else(|never| match never {}),
        offset: u64::from_str_radix(offset, 16).context("offset")?,
        dev: pair(dev, b':').context("device")?,
        inode: inode.parse().context("inode")?,
        pathname: MMapPath::from(rest).context("name")?,
        vm_flags: VmFlags::NONE,
        extra: ExtraFlags::default(),
        anon_huge_pages: None,
        rss: 0,
    })
}

/// Two hexadecimal numbers apart by `separator` (what follows a second separator ignored,
/// as procfs does).
fn pair<T: FromHex>(text: &str, separator: u8) -> Result<(T, T)> {
    let at = text.bytes().position(|b| b == separator).with_context(|| format!("no {:?} in {text:?}", separator as char))?;
    let (first, second) = (&text[..at], &text[at + 1..]);
    let second = second.bytes().position(|b| b == separator).map_or(second, |end| &second[..end]);
    let hex = |part: &str| T::from_hex(part).with_context(|| format!("{part:?} is not a hexadecimal number"));
    Ok((hex(first)?, hex(second)?))
}

trait FromHex: Sized {
    fn from_hex(text: &str) -> Option<Self>;
}

impl FromHex for u64 {
    fn from_hex(text: &str) -> Option<u64> {
        u64::from_str_radix(text, 16).ok()
    }
}

impl FromHex for i32 {
    fn from_hex(text: &str) -> Option<i32> {
        i32::from_str_radix(text, 16).ok()
    }
}

/// `Key:   N kB`: N KiB in bytes (N bytes without a unit, as procfs reads it).
fn size(line: &str) -> Result<u64> {
    let mut parts = line.split_ascii_whitespace().skip(1);
    let value = parts.next().context("no value")?;
    let value: u64 = value.parse().with_context(|| format!("{value:?} is not a number"))?;
    Ok(if parts.next().is_some() { value * 1024 } else { value })
}

/// The words of a VmFlags line: those procfs knows as its flags, the others crust decides on.
pub fn vm_flags(words: &str) -> (VmFlags, ExtraFlags) {
    let mut flags = VmFlags::NONE;
    let mut extra = ExtraFlags::default();
    for word in words.split_ascii_whitespace() {
        let Ok(&[a, b]) = <&[u8; 2]>::try_from(word.as_bytes()) else { continue };
        match &[a, b] {
            b"dp" => extra.droppable = true,
            b"sl" => extra.sealed = true,
            b"ss" => extra.shadow_stack = true,
            _ => flags |= known_flag(a, b),
        }
    }
    (flags, extra)
}

/// procfs's flags and their words.
const KNOWN: [(&[u8; 2], VmFlags); 32] = [
    (b"rd", VmFlags::RD),
    (b"wr", VmFlags::WR),
    (b"ex", VmFlags::EX),
    (b"sh", VmFlags::SH),
    (b"mr", VmFlags::MR),
    (b"mw", VmFlags::MW),
    (b"me", VmFlags::ME),
    (b"ms", VmFlags::MS),
    (b"gd", VmFlags::GD),
    (b"pf", VmFlags::PF),
    (b"dw", VmFlags::DW),
    (b"lo", VmFlags::LO),
    (b"io", VmFlags::IO),
    (b"sr", VmFlags::SR),
    (b"rr", VmFlags::RR),
    (b"dc", VmFlags::DC),
    (b"de", VmFlags::DE),
    (b"ac", VmFlags::AC),
    (b"nr", VmFlags::NR),
    (b"ht", VmFlags::HT),
    (b"sf", VmFlags::SF),
    (b"nl", VmFlags::NL),
    (b"ar", VmFlags::AR),
    (b"wf", VmFlags::WF),
    (b"dd", VmFlags::DD),
    (b"sd", VmFlags::SD),
    (b"mm", VmFlags::MM),
    (b"hg", VmFlags::HG),
    (b"nh", VmFlags::NH),
    (b"mg", VmFlags::MG),
    (b"um", VmFlags::UM),
    (b"uw", VmFlags::UW),
];

/// The flag bits of every two-letter word, by [`slot`] (one load per word, not 32 compares).
const BY_SLOT: [u32; 26 * 26] = {
    let mut table = [0u32; 26 * 26];
    let mut i = 0;
    while i < KNOWN.len() {
        let (w, flag) = KNOWN[i];
        table[slot(w[0], w[1]).unwrap()] = flag.bits();
        i += 1;
    }
    table
};

/// The place of a word of two lower-case letters in [`BY_SLOT`].
const fn slot(a: u8, b: u8) -> Option<usize> {
    if a.is_ascii_lowercase() && b.is_ascii_lowercase() { Some((a - b'a') as usize * 26 + (b - b'a') as usize) } else { None }
}

/// procfs's flag for a VmFlags word (NONE for a word it does not know).
fn known_flag(a: u8, b: u8) -> VmFlags {
    slot(a, b).map_or(VmFlags::NONE, |i| VmFlags::from_bits_retain(BY_SLOT[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// procfs's full parse of `text`, the reference.
    fn procfs_parse(text: &str) -> procfs::process::MemoryMaps {
        <procfs::process::MemoryMaps as procfs::FromBufRead>::from_buf_read(text.as_bytes()).unwrap()
    }

    /// Every area of `text` is procfs's, field for field.
    fn assert_as_procfs(text: &str) -> Vec<Area> {
        let ours = parse(text).unwrap();
        let theirs = procfs_parse(text);
        assert_eq!(ours.len(), theirs.len());
        for (o, t) in ours.iter().zip(theirs.iter()) {
            assert_eq!((o.address, o.perms, o.offset, o.dev, o.inode), (t.address, t.perms, t.offset, t.dev, t.inode), "{t:?}");
            assert_eq!(o.pathname, t.pathname, "{t:?}");
            assert_eq!(o.vm_flags, t.extension.vm_flags, "{t:?}");
            assert_eq!(o.anon_huge_pages, t.extension.map.get("AnonHugePages").copied(), "{t:?}");
            assert_eq!(o.rss, t.extension.map.get("Rss").copied().unwrap_or(0), "{t:?}");
        }
        ours
    }

    /// An area's smaps entry as the kernel writes it (the name after padding to column 73).
    fn entry(header: &str, name: &str, huge_kib: u64, flags: &str) -> String {
        let mut text = format!("{header:<72} {name}\n");
        if name.is_empty() {
            // The kernel writes no padding before an empty name.
            text = format!("{header} \n");
        }
        for (key, kib) in
            [("Size", 64), ("Rss", 60), ("Pss", 64), ("Referenced", 64), ("Anonymous", 64), ("AnonHugePages", huge_kib), ("Swap", 0)]
        {
            text.push_str(&format!("{:<16}{kib:>8} kB\n", format!("{key}:")));
        }
        text.push_str(&format!("THPeligible:    0\nProtectionKey:         0\nVmFlags: {flags} \n"));
        text
    }

    #[test]
    fn odd_names_are_read_as_procfs_reads_them() {
        let areas = [
            ("00400000-00401000 r-xp 00000000 fe:00 1234", "/usr/bin/with space", "rd ex mr mw me"),
            ("00401000-00402000 rw-p 00001000 fe:00 1234", "/tmp/gone file (deleted)", "rd wr mr mw me ac"),
            ("00402000-00403000 rw-p 00000000 00:00 0", "", "rd wr mr mw me ac dp"),
            ("00403000-00404000 rw-p 00000000 00:00 0", "[anon:my name]", "rd wr mr mw me ac"),
            ("00404000-00405000 rw-s 00000000 00:01 98304", "/SYSV0000162e (deleted)", "rd wr sh mr mw me ms sd sl"),
            ("00405000-00406000 rw-s 00000000 00:01 7", "/dev/zero (deleted)", "rd wr sh mr mw me ms"),
            ("00406000-00407000 rw-p 00000000 00:00 0", "[heap]", "rd wr mr mw me ac"),
            ("00407000-00408000 rw-p 00000000 00:00 0", "  leading and trailing spaces  ", "rd wr mr mw me gd ac ss zz xyz"),
            ("7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0", "[stack]", "rd wr mr mw me gd ac"),
            ("7ffc00100000-7ffc00104000 r--p 00000000 00:00 0", "[vvar]", "rd mr pf io de dd sd"),
            ("7ffc00104000-7ffc00106000 r--p 00000000 00:00 0", "[vvar_vclock]", "rd mr pf io de dd sd"),
            ("7ffc00106000-7ffc00108000 r-xp 00000000 00:00 0", "[vdso]", "rd ex mr mw me de sd"),
            ("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0", "[vsyscall]", "ex"),
        ];
        let text: String = areas.iter().enumerate().map(|(i, (h, n, f))| entry(h, n, if i == 2 { 2048 } else { 0 }, f)).collect();
        let got = assert_as_procfs(&text);
        let name = |i: usize| got[i].pathname.clone();
        assert_eq!(name(0), MMapPath::Path("/usr/bin/with space".into()));
        assert_eq!(name(1), MMapPath::Path("/tmp/gone file (deleted)".into()));
        assert_eq!(name(2), MMapPath::Anonymous);
        assert_eq!(name(3), MMapPath::Other("anon:my name".into()));
        assert_eq!(name(4), MMapPath::Vsys(0x162e));
        assert_eq!(name(5), MMapPath::Path("/dev/zero (deleted)".into()));
        assert_eq!(name(6), MMapPath::Heap);
        // procfs trims a name: its spaces at either end are lost (the kernel does not escape them).
        assert_eq!(name(7), MMapPath::Path("leading and trailing spaces".into()));
        assert_eq!(
            (name(9), name(10), name(11), name(12)),
            (MMapPath::Vvar, MMapPath::Other("vvar_vclock".into()), MMapPath::Vdso, MMapPath::Vsyscall)
        );
        assert_eq!(got[0].address, (0x40_0000, 0x40_1000));
        assert_eq!(got[8].address, (0x7ffc_0000_0000, 0x7ffc_0002_1000));
        assert_eq!((got[1].offset, got[1].dev, got[1].inode), (0x1000, (0xfe, 0), 1234));
        assert_eq!(got[2].anon_huge_pages, Some(2048 * 1024));
        assert!(got.iter().all(|a| a.rss == 60 * 1024));
        assert_eq!(got[2].extra, ExtraFlags { droppable: true, ..Default::default() });
        assert_eq!(got[4].extra, ExtraFlags { sealed: true, ..Default::default() });
        assert_eq!(got[7].extra, ExtraFlags { shadow_stack: true, ..Default::default() });
        assert_eq!(got[7].vm_flags, VmFlags::RD | VmFlags::WR | VmFlags::MR | VmFlags::MW | VmFlags::ME | VmFlags::GD | VmFlags::AC);
        assert!(got[4].perms.contains(MMPermissions::SHARED) && !got[4].perms.contains(MMPermissions::EXECUTE));
        assert_eq!(got[12].perms, MMPermissions::EXECUTE | MMPermissions::PRIVATE);
    }

    /// Text fed in pieces of whole lines is parsed as the whole text, line numbers included.
    #[test]
    fn pieces_parse_as_the_whole() {
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let whole = parse(&text).unwrap();
        let mut parser = Parser::default();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            // Pieces of about 1000 bytes, each ended at a newline.
            let end = rest.get(1000..).and_then(|t| t.find('\n')).map_or(rest.len(), |i| 1000 + i + 1);
            parser.feed(&rest[..end]).unwrap();
            rest = &rest[end..];
        }
        assert_eq!(parser.finish(), whole);
        let mut parser = Parser::default();
        parser.feed("00400000-00401000 r-xp 00000000 fe:00 12 \nSize:  4 kB\n").unwrap();
        let e = format!("{:#}", parser.feed("Rss: x kB\n").unwrap_err());
        assert!(e.contains("line 3"), "{e}");
    }

    /// Every two-letter word (and a few others) gives procfs's flag.
    #[test]
    fn every_flag_word_is_procfs_s() {
        let letters = b'a'..=b'z';
        let words: Vec<String> = letters
            .clone()
            .flat_map(|a| letters.clone().map(move |b| String::from_utf8(vec![a, b]).unwrap()))
            .chain(["r", "rdx", "R1"].map(String::from))
            .collect();
        for w in words {
            let text = format!("00400000-00401000 r-xp 00000000 fe:00 1 \nVmFlags: {w} \n");
            assert_as_procfs(&text);
        }
    }

    /// /proc/PID/maps has the same first lines and no fields.
    #[test]
    fn maps_text_gives_the_areas_without_fields() {
        let text = "00400000-00401000 r-xp 00000000 fe:00 1234                       /bin/x\n00402000-00403000 rw-p 00000000 00:00 0 \n";
        let got = assert_as_procfs(text);
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].pathname.clone(), got[1].vm_flags, got[1].anon_huge_pages), (MMapPath::Anonymous, VmFlags::NONE, None));
    }

    /// A malformed line is refused with its number, never skipped.
    #[test]
    fn malformed_lines_are_refused_by_number() {
        let bad = [
            ("Size:  4 kB\n", "line 1"),
            ("00400000-00401000 r-xp 00000000 fe:00 12\n", "ends at the inode"),
            ("\n", "an empty line"),
            ("00400000 r-xp 00000000 fe:00 12 x\n", "address range"),
            ("00400000-00401000 r-xp zz fe:00 12 x\n", "offset"),
            ("00400000-00401000 r-xp 00000000 fe:00 12 \nAnonHugePages: many kB\n", "line 2"),
        ];
        for (text, says) in bad {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    /// This test's own smaps, with huge pages in one area so that AnonHugePages is not
    /// always 0: as procfs reads it.
    #[test]
    fn own_smaps_is_read_as_procfs_reads_it() {
        let mut region = crate::sys::region::AnonRegion::new(8 << 20, true).unwrap();
        region.as_mut_slice().iter_mut().step_by(4096).for_each(|b| *b = 1);
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let got = assert_as_procfs(&text);
        assert!(got.len() > 10, "{} areas", got.len());
        drop(region);
    }
}
