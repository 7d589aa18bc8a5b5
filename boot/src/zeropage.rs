//! The zero page (`struct boot_params`): the one structure a 64-bit Linux kernel receives
//! from its loader.
//!
//! # The boot-protocol concept
//! At the 64-bit entry RSI points at a 4 KiB `struct boot_params`
//! (`Documentation/arch/x86/zero-page.rst`), historically filled by the real-mode setup code
//! from BIOS calls. A loader that enters the kernel directly fills it itself. It embeds the
//! *setup header* (`hdr`, at offset 0x1f1), whose fields `Documentation/arch/x86/boot.rst`
//! documents one by one. minivmm sets:
//!
//! - `hdr`: for a bzImage, the kernel's own setup header as read from the image (boot.rst:
//!   the loader should copy it and then fill in the "write" fields); for an ELF vmlinux, a
//!   blank one;
//! - `hdr.boot_flag` = 0xAA55 and `hdr.header` = "HdrS": the magic numbers of a valid
//!   header;
//! - `hdr.type_of_loader` = 0xff: "undefined" boot loader (no assigned id);
//! - `hdr.loadflags`: `LOADED_HIGH` (the protected-mode kernel is at 1 MiB or above).
//!   `CAN_USE_HEAP` is *not* set: it tells the 16-bit setup code that `heap_end_ptr` is
//!   valid, and that code never runs with the 64-bit entry;
//! - `hdr.cmd_line_ptr` / `hdr.cmdline_size`: where the command line is and its length
//!   (without the NUL);
//! - `hdr.ramdisk_image` / `hdr.ramdisk_size`: the initrd, if any;
//! - `hdr.kernel_alignment` = 16 MiB when there is no header (what an ELF kernel built with
//!   the default `CONFIG_PHYSICAL_ALIGN` expects);
//! - `e820_entries` / `e820_table`: the memory map (see `crate::e820`), at most 128 entries;
//! - `alt_mem_k`: memory above 1 MiB in KiB (only consulted when there is no e820 map, kept
//!   for completeness).

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header, LOADED_HIGH};
use vm_memory::{Bytes, GuestAddress};

use arch::layout::{DEFAULT_INITRD_ADDR_MAX, HIMEM_START, ZERO_PAGE_START};

use crate::e820::E820Entry;
use crate::GuestMemoryMmap;

/// `hdr.boot_flag` of a valid header.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `hdr.header`: "HdrS" as a little-endian u32.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `hdr.type_of_loader` for a loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `hdr.kernel_alignment` written when the kernel has no setup header (16 MiB).
pub const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// The zero page holds at most this many e820 entries.
pub const MAX_E820_ENTRIES: usize = 128;

/// What goes into the zero page.
#[derive(Clone, Debug)]
pub struct ZeroPageParams {
    /// A bzImage's setup header (from `LoadedKernel::setup_header`), `None` for ELF.
    pub setup_header: Option<setup_header>,
    /// Where the NUL-terminated command line is.
    pub cmdline_addr: GuestAddress,
    /// Length of the command line without the NUL.
    pub cmdline_size: usize,
    /// Address and size of the initrd, if any.
    pub initrd: Option<(GuestAddress, usize)>,
    /// The memory map (see [`crate::e820::MemoryLayout::e820_map`]).
    pub e820: Vec<E820Entry>,
    /// Guest memory size in bytes.
    pub mem_size: u64,
    /// Where the ACPI RSDP is, if the VMM wrote ACPI tables (`acpi_rsdp_addr`, protocol
    /// 2.14: saves the kernel its scan of the BIOS area).
    pub acpi_rsdp: Option<GuestAddress>,
}

/// Errors from writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More e820 entries than the zero page holds.
    #[error("zero page: {0} e820 entries, at most {MAX_E820_ENTRIES} fit")]
    TooManyE820Entries(usize),
    /// A 32-bit field cannot hold an address or size.
    #[error("zero page: {what} {value:#x} does not fit the 32-bit field")]
    Above4G {
        /// Which field.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// Guest memory could not be written.
    #[error("cannot write the zero page at {ZERO_PAGE_START:#x}: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn fit_u32(what: &'static str, value: u64) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| Error::Above4G { what, value })
}

/// The highest address (inclusive) the initrd may occupy: the header's `initrd_addr_max`
/// (protocol 2.03+), or [`DEFAULT_INITRD_ADDR_MAX`] for older headers and ELF kernels.
pub fn initrd_addr_max(header: Option<&setup_header>) -> u64 {
    match header {
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        _ => DEFAULT_INITRD_ADDR_MAX,
    }
}

/// Builds the zero page (see the module docs) and writes it at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemoryMmap, params: ZeroPageParams) -> Result<(), Error> {
    if params.e820.len() > MAX_E820_ENTRIES {
        return Err(Error::TooManyE820Entries(params.e820.len()));
    }
    let mut bp = boot_params::default();
    match params.setup_header {
        Some(hdr) => bp.hdr = hdr,
        None => bp.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT,
    }
    bp.hdr.boot_flag = BOOT_FLAG_MAGIC;
    bp.hdr.header = HDRS_MAGIC;
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    bp.hdr.loadflags |= LOADED_HIGH;
    bp.hdr.cmd_line_ptr = fit_u32("command line address", params.cmdline_addr.0)?;
    bp.hdr.cmdline_size = fit_u32("command line size", params.cmdline_size as u64)?;
    if let Some((addr, size)) = params.initrd {
        bp.hdr.ramdisk_image = fit_u32("initrd address", addr.0)?;
        bp.hdr.ramdisk_size = fit_u32("initrd size", size as u64)?;
    }
    if let Some(rsdp) = params.acpi_rsdp {
        bp.acpi_rsdp_addr = rsdp.0;
    }
    let above_1m_kib = params.mem_size.saturating_sub(HIMEM_START) >> 10;
    bp.alt_mem_k = u32::try_from(above_1m_kib).unwrap_or(u32::MAX);
    for (slot, e) in bp.e820_table.iter_mut().zip(&params.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.raw(),
        };
    }
    bp.e820_entries = params.e820.len() as u8; // <= 128, checked above
    mem.write_obj(bp, GuestAddress(ZERO_PAGE_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::{E820Kind, MemoryLayout};
    use linux_loader::bootparam::{CAN_USE_HEAP, XLF_KERNEL_64};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read_back(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    fn params(header: Option<setup_header>) -> ZeroPageParams {
        ZeroPageParams {
            setup_header: header,
            cmdline_addr: GuestAddress(0x20000),
            cmdline_size: 30,
            initrd: Some((GuestAddress(0x3f00_0000), 0x12_3456)),
            acpi_rsdp: Some(GuestAddress(0xe0000)),
            e820: MemoryLayout::new(1 << 30).unwrap().e820_map(),
            mem_size: 1 << 30,
        }
    }

    #[test]
    fn elf_zero_page() {
        let mem = mem();
        write_zero_page(&mem, params(None)).unwrap();
        let bp = read_back(&mem);
        let h = bp.hdr;
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.header }, u32::from_le_bytes(*b"HdrS"));
        assert_eq!(h.type_of_loader, 0xff);
        assert_eq!(h.loadflags, LOADED_HIGH);
        assert_eq!(h.loadflags & CAN_USE_HEAP, 0);
        assert_eq!({ h.cmd_line_ptr }, 0x20000);
        assert_eq!({ h.cmdline_size }, 30);
        assert_eq!({ h.ramdisk_image }, 0x3f00_0000);
        assert_eq!({ h.ramdisk_size }, 0x12_3456);
        assert_eq!({ bp.acpi_rsdp_addr }, 0xe0000);
        assert_eq!({ h.kernel_alignment }, 0x100_0000);
        assert_eq!({ bp.alt_mem_k }, ((1 << 30) - (1 << 20)) >> 10);
        assert_eq!(bp.e820_entries, 3);
        let table = bp.e820_table;
        let e: Vec<(u64, u64, u32)> = table[..3]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect();
        assert_eq!(
            e,
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0x10_0000, (1 << 30) - 0x10_0000, 1)
            ]
        );
        assert_eq!({ table[3].size }, 0);
    }

    #[test]
    fn bzimage_header_is_kept() {
        let mem = mem();
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            loadflags: LOADED_HIGH | 0x2,
            xloadflags: XLF_KERNEL_64,
            kernel_alignment: 0x20_0000,
            init_size: 0x123_0000,
            cmdline_size: 2047,
            ..Default::default()
        };
        let mut p = params(Some(hdr));
        p.initrd = None;
        write_zero_page(&mem, p).unwrap();
        let h = read_back(&mem).hdr;
        assert_eq!(h.setup_sects, 27);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.xloadflags }, XLF_KERNEL_64);
        assert_eq!({ h.init_size }, 0x123_0000);
        assert_eq!({ h.kernel_alignment }, 0x20_0000, "kernel's value kept");
        assert_eq!(h.loadflags, LOADED_HIGH | 0x2);
        assert_eq!({ h.cmdline_size }, 30, "the actual length is written");
        assert_eq!(({ h.ramdisk_image }, { h.ramdisk_size }), (0, 0));
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!(h.type_of_loader, 0xff);
    }

    #[test]
    fn limits() {
        let mem = mem();
        let mut p = params(None);
        p.e820 = vec![
            E820Entry {
                addr: 0,
                size: 4096,
                kind: E820Kind::Ram
            };
            129
        ];
        assert!(matches!(
            write_zero_page(&mem, p),
            Err(Error::TooManyE820Entries(129))
        ));
        let mut p = params(None);
        p.initrd = Some((GuestAddress(1 << 32), 10));
        let err = write_zero_page(&mem, p).unwrap_err();
        assert!(err.to_string().contains("initrd address"), "{err}");
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_zero_page(&tiny, params(None)),
            Err(Error::Write(_))
        ));
    }

    #[test]
    fn initrd_limit() {
        assert_eq!(initrd_addr_max(None), DEFAULT_INITRD_ADDR_MAX);
        let new = setup_header {
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_addr_max(Some(&new)), 0x7fff_ffff);
        let old = setup_header {
            version: 0x0202,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_addr_max(Some(&old)), DEFAULT_INITRD_ADDR_MAX);
    }
}
