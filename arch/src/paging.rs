//! The identity-mapped page tables a 64-bit kernel is entered with.
//!
//! # The hardware concept
//! Long mode (64-bit mode) cannot run without paging: every address the CPU uses is a
//! *virtual* address translated by a tree of page tables rooted at CR3. With 4-level paging
//! a 48-bit virtual address is split into four 9-bit indices and a page offset:
//! ```text
//! 47..39 PML4 index | 38..30 PDPT index | 29..21 PD index | 20..0 offset in a 2 MiB page
//! ```
//! Each table is one 4 KiB page of 512 8-byte entries. An entry holds the physical address
//! of the next table (or of the page) plus flag bits: bit 0 Present, bit 1 Writable, and in a
//! page directory entry bit 7 "Page Size" (PS), which makes it map a 2 MiB page directly
//! instead of pointing at a 4 KiB-page table.
//!
//! The 64-bit boot protocol (`Documentation/arch/x86/boot.rst`) asks the loader to
//! *identity map* (virtual address == physical address) the kernel, the zero page and the
//! command line. minivmm maps the whole first [`IDENTITY_MAP_GIB`] GiB with 2 MiB pages:
//! one PML4 entry -> one PDPT -> `IDENTITY_MAP_GIB` page directories of 512 entries each.
//! The kernel builds its own page tables early and never uses these again.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{IDENTITY_MAP_GIB, PDE_START, PDPTE_START, PML4_START};
use crate::GuestMemoryMmap;

/// Entry flag: the entry is valid.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry flag: writes are allowed.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-directory entry flag: the entry maps a 2 MiB page.
pub const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Size of one large page mapped by a page-directory entry.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Entries per table (4 KiB / 8 bytes).
pub const ENTRIES_PER_TABLE: u64 = 512;

/// Mask of the physical-address bits of an entry (bits 51..12).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

// The tables sit between the boot stack and the command line (checked at compile time).
const _: () = assert!(PML4_START > crate::layout::BOOT_STACK_POINTER);
const _: () = assert!(PDE_START + IDENTITY_MAP_GIB * 0x1000 <= crate::layout::CMDLINE_START);

/// Errors from writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry could not be written to guest memory.
    #[error("cannot write page table entry at guest address {addr:#x}: {source}")]
    WriteEntry {
        /// Where the entry belongs.
        addr: u64,
        /// What vm-memory said.
        source: vm_memory::GuestMemoryError,
    },
}

fn write_entry(mem: &GuestMemoryMmap, addr: u64, entry: u64) -> Result<(), Error> {
    mem.write_obj(entry, GuestAddress(addr))
        .map_err(|source| Error::WriteEntry { addr, source })
}

/// Writes the identity map of `[0, IDENTITY_MAP_GIB GiB)` and returns the value for CR3
/// (the address of the PML4).
pub fn setup_identity_map(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    // PML4[0] covers virtual 0..512 GiB and points to the single PDPT.
    write_entry(mem, PML4_START, PDPTE_START | PTE_PRESENT | PTE_WRITABLE)?;
    for gib in 0..IDENTITY_MAP_GIB {
        // PDPT[gib] covers one GiB and points to its page directory.
        let pd = PDE_START + gib * 0x1000;
        write_entry(mem, PDPTE_START + gib * 8, pd | PTE_PRESENT | PTE_WRITABLE)?;
        for i in 0..ENTRIES_PER_TABLE {
            // PD[i] maps the 2 MiB page at the same physical address.
            let phys = (gib * ENTRIES_PER_TABLE + i) * LARGE_PAGE_SIZE;
            write_entry(
                mem,
                pd + i * 8,
                phys | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE,
            )?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// Translates `virt` the way the MMU would, reading the tables from guest memory.
    fn walk(mem: &GuestMemoryMmap, cr3: u64, virt: u64) -> Option<u64> {
        let read = |table: u64, index: u64| -> u64 {
            mem.read_obj::<u64>(GuestAddress((table & PTE_ADDR_MASK) + index * 8))
                .unwrap()
        };
        let pml4e = read(cr3, (virt >> 39) & 0x1ff);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read(pml4e, (virt >> 30) & 0x1ff);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = read(pdpte, (virt >> 21) & 0x1ff);
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        assert_ne!(pde & PTE_PAGE_SIZE, 0, "expected a 2 MiB page");
        assert_ne!(pde & PTE_WRITABLE, 0);
        Some((pde & PTE_ADDR_MASK & !(LARGE_PAGE_SIZE - 1)) | (virt & (LARGE_PAGE_SIZE - 1)))
    }

    #[test]
    fn identity_map_walks() {
        let mem = mem();
        let cr3 = setup_identity_map(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        let top = IDENTITY_MAP_GIB << 30;
        for virt in [
            0,
            0x7000,
            0x1234_5678,
            0x100_0000,
            0xbfff_ffff,
            0xfee0_0000,
            top - 1,
        ] {
            assert_eq!(walk(&mem, cr3, virt), Some(virt), "virt {virt:#x}");
        }
        // Nothing past the mapped range.
        assert_eq!(walk(&mem, cr3, top), None);
        assert_eq!(walk(&mem, cr3, 1 << 39), None);
    }

    #[test]
    fn fails_without_memory() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = setup_identity_map(&small).unwrap_err();
        assert!(err.to_string().contains("0x9000"), "{err}");
    }
}
