//! The little of the kernel's own type information (BTF, /sys/kernel/btf/vmlinux) that crust
//! needs to load a BPF iterator: the id of a function, the byte offset of a structure's
//! member. The format is the kernel's (Documentation/bpf/btf.rst): a header, then the types
//! one after another (ids from 1), each a 12-byte common part and data whose size its kind
//! decides, then the strings.

use anyhow::{Context, Result, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;

/// One type: where its common part starts in the type section.
#[derive(Clone, Copy)]
struct TypeAt(usize);

pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Type id - 1 -> its offset in `types`.
    index: Vec<TypeAt>,
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    let b = bytes.get(at..at + 4).context("BTF: a type runs past the end of its section")?;
    Ok(u32::from_le_bytes(b.try_into().unwrap_or_default()))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn vmlinux() -> Result<Btf> {
        let bytes = std::fs::read("/sys/kernel/btf/vmlinux").context("reading /sys/kernel/btf/vmlinux")?;
        Btf::parse(&bytes).context("/sys/kernel/btf/vmlinux")
    }

    pub fn parse(bytes: &[u8]) -> Result<Btf> {
        if bytes.len() < 24 || u16::from_le_bytes([bytes[0], bytes[1]]) != MAGIC {
            bail!("not BTF of this byte order (magic)");
        }
        let header_len = u32_at(bytes, 4)? as usize;
        let section = |off: usize, len: usize| -> Result<Vec<u8>> {
            let start = header_len + u32_at(bytes, off)? as usize;
            let len = u32_at(bytes, len)? as usize;
            Ok(bytes.get(start..start + len).context("BTF: a section runs past the end")?.to_vec())
        };
        let (types, strings) = (section(8, 12)?, section(16, 20)?);
        let mut index = Vec::new();
        let mut at = 0;
        while at < types.len() {
            index.push(TypeAt(at));
            let info = u32_at(&types, at + 4)?;
            at += 12 + extra_len(info >> 24 & 0x1f, (info & 0xffff) as usize)?;
        }
        Ok(Btf { types, strings, index })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    fn kind_of(&self, t: TypeAt) -> Result<(u32, usize)> {
        let info = u32_at(&self.types, t.0 + 4)?;
        Ok((info >> 24 & 0x1f, (info & 0xffff) as usize))
    }

    fn find(&self, kind: u32, name: &str) -> Result<Option<(u32, TypeAt)>> {
        for (i, t) in self.index.iter().enumerate() {
            if self.kind_of(*t)?.0 == kind && self.name(u32_at(&self.types, t.0)?) == name.as_bytes() {
                return Ok(Some((i as u32 + 1, *t)));
            }
        }
        Ok(None)
    }

    /// The id of the function `name`.
    pub fn func_id(&self, name: &str) -> Result<u32> {
        Ok(self.find(KIND_FUNC, name)?.with_context(|| format!("BTF: no function {name}"))?.0)
    }

    /// The byte offset of member `member` in `struct name`, looking into its anonymous unions
    /// and structures.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u64> {
        let (_, t) = self.find(KIND_STRUCT, name)?.with_context(|| format!("BTF: no struct {name}"))?;
        self.member_in(t, member, 0)?.with_context(|| format!("BTF: struct {name} has no member {member}"))
    }

    fn member_in(&self, t: TypeAt, member: &str, base_bits: u64) -> Result<Option<u64>> {
        let info = u32_at(&self.types, t.0 + 4)?;
        let kind_flag = info >> 31 == 1;
        let (_, vlen) = self.kind_of(t)?;
        for m in 0..vlen {
            let at = t.0 + 12 + m * 12;
            let (name_off, type_id, offset) = (u32_at(&self.types, at)?, u32_at(&self.types, at + 4)?, u32_at(&self.types, at + 8)?);
            // With kind_flag the low 24 bits are the offset, the high 8 a bitfield's size.
            let bits = base_bits + u64::from(if kind_flag { offset & 0xff_ffff } else { offset });
            if self.name(name_off) == member.as_bytes() {
                return Ok(Some(bits / 8));
            }
            if name_off == 0
                && let Some(inner) = self.index.get((type_id as usize).wrapping_sub(1))
                && matches!(self.kind_of(*inner)?.0, KIND_STRUCT | KIND_UNION)
                && let Some(found) = self.member_in(*inner, member, bits)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

/// Bytes after the 12-byte common part of a type of `kind` with `vlen` entries.
fn extra_len(kind: u32, vlen: usize) -> Result<usize> {
    Ok(match kind {
        2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
        other => bail!("BTF: unknown kind {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's own BTF: the offsets crust's VMA iterator reads, as the kernel
    /// defines struct vm_area_struct (vm_start, vm_end first).
    #[test]
    fn finds_the_vma_fields_and_the_iterator_function_in_vmlinux() {
        let Ok(btf) = Btf::vmlinux() else { return };
        assert_eq!(btf.member_offset("vm_area_struct", "vm_start").unwrap(), 0);
        assert_eq!(btf.member_offset("vm_area_struct", "vm_end").unwrap(), 8);
        let flags = btf.member_offset("vm_area_struct", "vm_flags").unwrap();
        assert!((16..192).contains(&flags), "vm_flags at {flags}");
        assert!(btf.func_id("bpf_iter_task_vma").unwrap() > 0);
        assert!(btf.member_offset("vm_area_struct", "no_such_member").is_err());
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut truncated = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
        if truncated.len() > 100 {
            truncated.truncate(100);
            assert!(Btf::parse(&truncated).is_err());
        }
    }
}
