//! The boot loader's memory map (Multiboot 0.6.96 §3.3, `mmap_*` fields) and
//! the choice of the heap region from it.

/// One entry of the firmware memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    pub base: u64,
    pub len: u64,
    /// Multiboot type: 1 = available RAM, anything else is reserved.
    pub kind: u32,
}

impl MemRegion {
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
    pub fn is_usable(&self) -> bool {
        self.kind == 1
    }
}

/// Iterates the raw multiboot mmap buffer. Each entry is `size: u32` followed
/// by `size` bytes holding `base: u64, len: u64, type: u32`. Truncated or
/// malformed entries end the iteration (never read past `buf`).
pub fn parse_mmap(buf: &[u8]) -> impl Iterator<Item = MemRegion> + '_ {
    let mut off = 0usize;
    core::iter::from_fn(move || {
        let size = u32::from_le_bytes(buf.get(off..off + 4)?.try_into().ok()?) as usize;
        let body = buf.get(off + 4..(off + 4).checked_add(size)?)?;
        if size < 20 {
            return None;
        }
        off += 4 + size;
        Some(MemRegion {
            base: u64::from_le_bytes(body[0..8].try_into().ok()?),
            len: u64::from_le_bytes(body[8..16].try_into().ok()?),
            kind: u32::from_le_bytes(body[16..20].try_into().ok()?),
        })
    })
}

/// Picks the heap: the largest usable range that lies above `floor` (end of
/// the kernel image and of the boot modules) and below `ceiling` (end of the
/// identity map), aligned to 4 KiB. Returns `(start, len)`.
pub fn choose_heap(
    regions: impl Iterator<Item = MemRegion>,
    floor: u64,
    ceiling: u64,
) -> Option<(u64, u64)> {
    const PAGE: u64 = 4096;
    regions
        .filter(MemRegion::is_usable)
        .filter_map(|r| {
            let start = r.base.max(floor).checked_add(PAGE - 1)? & !(PAGE - 1);
            let end = r.end().min(ceiling) & !(PAGE - 1);
            (end > start).then(|| (start, end - start))
        })
        .max_by_key(|&(_, len)| len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: u64, len: u64, kind: u32) -> Vec<u8> {
        let mut v = 20u32.to_le_bytes().to_vec();
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v
    }

    #[test]
    fn parses_entries_and_stops_on_truncation() {
        let mut buf = entry(0, 0x9fc00, 1);
        buf.extend(entry(0x100000, 0x7ee0000, 1));
        buf.extend(entry(0xfffc0000, 0x40000, 2));
        let all: Vec<_> = parse_mmap(&buf).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].base, 0x100000);
        assert!(!all[2].is_usable());
        let cut = &buf[..buf.len() - 3];
        assert_eq!(parse_mmap(cut).count(), 2);
    }

    #[test]
    fn bad_size_field_ends_iteration() {
        let mut buf = entry(0, 0x1000, 1);
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_mmap(&buf).count(), 0);
        let mut small = entry(0, 0x1000, 1);
        small[0..4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(parse_mmap(&small).count(), 0);
    }

    #[test]
    fn heap_is_largest_usable_region_above_floor() {
        let regions = [
            MemRegion {
                base: 0,
                len: 0x9fc00,
                kind: 1,
            },
            MemRegion {
                base: 0x100000,
                len: 0x0ff00000,
                kind: 1,
            },
            MemRegion {
                base: 0x2000_0000,
                len: 0x100_0000,
                kind: 2,
            },
        ];
        let (start, len) = choose_heap(regions.into_iter(), 0x300_123, 1 << 32).unwrap();
        assert_eq!(start, 0x301_000);
        assert_eq!(start + len, 0x1000_0000);
    }

    #[test]
    fn heap_respects_ceiling_and_reports_none() {
        let regions = [MemRegion {
            base: 0x1_0000_0000,
            len: 1 << 30,
            kind: 1,
        }];
        assert_eq!(choose_heap(regions.into_iter(), 0x200000, 1 << 32), None);
    }
}
