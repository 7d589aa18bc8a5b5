//! The guest's physical memory map: which ranges the VMM backs with RAM, and the e820
//! table that tells the kernel about them.
//!
//! # The hardware concept
//! On a PC the firmware reports usable memory through BIOS call `int 0x15, eax=0xe820`,
//! which returns a list of `(address, size, type)` ranges: type 1 is usable RAM, type 2 is
//! reserved. Linux booted through the boot protocol gets the same list in the zero page
//! (`e820_table`, at most 128 entries; `Documentation/arch/x86/zero-page.rst`). Memory not
//! listed as RAM is never used by the kernel.
//!
//! minivmm's map (see `arch::layout`):
//! ```text
//! [0, EBDA_START)                RAM      (real-mode area, zero page, page tables, cmdline)
//! [EBDA_START, LOW_RAM_END)      reserved (the MP table lives here)
//! [LOW_RAM_END, HIMEM_START)     not listed: the legacy VGA/BIOS hole
//! [HIMEM_START, min(size, hole)) RAM
//! [4 GiB, 4 GiB + rest)          RAM, if the guest has more than MMIO_HOLE_START bytes
//! ```
//! The VMM maps one RAM region from 0 (the legacy hole included: it is simply not offered to
//! the kernel) and, for large guests, a second one from 4 GiB, leaving the 32-bit MMIO hole
//! `[MMIO_HOLE_START, 4 GiB)` for devices.

use vm_memory::GuestAddress;

use arch::layout::{EBDA_START, HIMEM_START, LOW_RAM_END, MMIO_HOLE_END, MMIO_HOLE_START};

/// Smallest guest memory minivmm accepts: 16 MiB. Below that there is hardly room for a
/// kernel image (a vmlinux usually loads at 16 MiB itself) and an initrd.
pub const MIN_MEM_SIZE: u64 = 16 << 20;
/// Guest memory sizes must be a multiple of this (4 KiB pages).
pub const MEM_ALIGN: u64 = 0x1000;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The type of an e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (e820 type 1).
    Ram,
    /// Reserved (e820 type 2): the kernel leaves it alone.
    Reserved,
}

impl E820Kind {
    /// The number the zero page uses for this type.
    pub fn raw(self) -> u32 {
        match self {
            E820Kind::Ram => E820_RAM,
            E820Kind::Reserved => E820_RESERVED,
        }
    }
}

/// One range of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// Errors about the guest memory size.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Smaller than [`MIN_MEM_SIZE`].
    #[error(
        "guest memory of {0} bytes is too small: minivmm needs at least {MIN_MEM_SIZE} (16 MiB)"
    )]
    TooSmall(u64),
    /// Not a whole number of pages.
    #[error("guest memory of {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// So large that the part above 4 GiB overflows the address space or `usize`.
    #[error("guest memory of {0} bytes is too large to map")]
    TooLarge(u64),
}

/// A guest memory size, checked once (at least [`MIN_MEM_SIZE`], whole pages, mappable):
/// the RAM regions to map and the e820 map follow from it without further checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    size: u64,
}

impl MemoryLayout {
    /// Check `mem_size` bytes of guest memory.
    pub fn new(mem_size: u64) -> Result<Self, Error> {
        if mem_size < MIN_MEM_SIZE {
            return Err(Error::TooSmall(mem_size));
        }
        if !mem_size.is_multiple_of(MEM_ALIGN) {
            return Err(Error::Unaligned(mem_size));
        }
        let high = mem_size.saturating_sub(MMIO_HOLE_START);
        if MMIO_HOLE_END.checked_add(high).is_none() || usize::try_from(mem_size).is_err() {
            return Err(Error::TooLarge(mem_size));
        }
        Ok(Self { size: mem_size })
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RAM regions the VMM maps: `[0, min(size, hole))` and, if anything is left, the
    /// rest from 4 GiB up.
    pub fn ram_regions(&self) -> Vec<(GuestAddress, usize)> {
        let low = self.size.min(MMIO_HOLE_START);
        // `new` made sure the size (and so every part of it) fits in usize.
        let mut regions = vec![(GuestAddress(0), low as usize)];
        if self.size > MMIO_HOLE_START {
            regions.push((
                GuestAddress(MMIO_HOLE_END),
                (self.size - MMIO_HOLE_START) as usize,
            ));
        }
        regions
    }

    /// The e820 map (see the module docs).
    pub fn e820_map(&self) -> Vec<E820Entry> {
        let low = self.size.min(MMIO_HOLE_START);
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: EBDA_START,
                size: LOW_RAM_END - EBDA_START,
                kind: E820Kind::Reserved,
            },
            E820Entry {
                addr: HIMEM_START,
                size: low - HIMEM_START,
                kind: E820Kind::Ram,
            },
        ];
        if self.size > MMIO_HOLE_START {
            map.push(E820Entry {
                addr: MMIO_HOLE_END,
                size: self.size - MMIO_HOLE_START,
                kind: E820Kind::Ram,
            });
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn e820_map(size: u64) -> Result<Vec<E820Entry>, Error> {
        MemoryLayout::new(size).map(|l| l.e820_map())
    }

    fn ram_regions(size: u64) -> Result<Vec<(GuestAddress, usize)>, Error> {
        MemoryLayout::new(size).map(|l| l.ram_regions())
    }

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum()
    }

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Ram,
        }
    }

    #[test]
    fn small_guest_256m() {
        let map = e820_map(256 * MIB).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[0], ram(0, 0x9fc00));
        assert_eq!(
            map[1],
            E820Entry {
                addr: 0x9fc00,
                size: 0x400,
                kind: E820Kind::Reserved
            }
        );
        assert_eq!(map[2], ram(0x10_0000, 256 * MIB - 0x10_0000));
        assert_eq!(
            ram_regions(256 * MIB).unwrap(),
            vec![(GuestAddress(0), (256 * MIB) as usize)]
        );
    }

    #[test]
    fn exactly_the_hole_3g() {
        let map = e820_map(3 * GIB).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[2], ram(HIMEM_START, 3 * GIB - HIMEM_START));
        assert_eq!(
            ram_regions(3 * GIB).unwrap(),
            vec![(GuestAddress(0), (3 * GIB) as usize)]
        );
    }

    #[test]
    fn split_4g_and_6g() {
        for size in [4 * GIB, 6 * GIB] {
            let map = e820_map(size).unwrap();
            assert_eq!(map.len(), 4);
            assert_eq!(map[2], ram(HIMEM_START, MMIO_HOLE_START - HIMEM_START));
            assert_eq!(map[3], ram(4 * GIB, size - 3 * GIB));
            // All RAM but the legacy hole and the EBDA is offered.
            assert_eq!(ram_total(&map), size - (HIMEM_START - EBDA_START));
            let regions = ram_regions(size).unwrap();
            assert_eq!(
                regions,
                vec![
                    (GuestAddress(0), (3 * GIB) as usize),
                    (GuestAddress(4 * GIB), (size - 3 * GIB) as usize)
                ]
            );
            let mapped: u64 = regions.iter().map(|r| r.1 as u64).sum();
            assert_eq!(mapped, size);
        }
    }

    #[test]
    fn entries_sorted_and_disjoint() {
        for size in [16 * MIB, 256 * MIB, 3 * GIB, 6 * GIB] {
            let map = e820_map(size).unwrap();
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{w:?}");
            }
        }
    }

    #[test]
    fn bad_sizes() {
        assert!(matches!(e820_map(16 * MIB - 4096), Err(Error::TooSmall(_))));
        assert!(matches!(ram_regions(0), Err(Error::TooSmall(0))));
        assert!(matches!(e820_map(256 * MIB + 1), Err(Error::Unaligned(_))));
        assert!(matches!(
            ram_regions(0xffff_ffff_ffff_f000),
            Err(Error::TooLarge(_))
        ));
        let err = e820_map(MIB).unwrap_err().to_string();
        assert!(err.contains("too small"), "{err}");
    }
}
