//! Placing the initial RAM disk (initrd / initramfs) in guest memory.
//!
//! # The boot-protocol concept
//! The initrd is an archive the kernel unpacks into its first root file system. The loader
//! copies it anywhere in RAM and stores its address and size in the zero page
//! (`ramdisk_image`, `ramdisk_size`). `Documentation/arch/x86/boot.rst` asks for it to end
//! at or below the kernel's `initrd_addr_max` ("the highest address that may be occupied
//! by the initial ramdisk/ramfs contents") and recommends putting it *as high as possible*,
//! so it stays out of the way of the kernel, which decompresses and grows upward from its
//! load address. minivmm does exactly that: the highest page-aligned address such that the
//! initrd ends below both `initrd_addr_max` and the end of low RAM, and starts above the
//! kernel.

use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, ReadVolatile};

use crate::{low_ram_end, GuestMemoryMmap};

/// Alignment of the initrd's start (one page).
pub const INITRD_ALIGN: u64 = 0x1000;

/// Errors from loading the initrd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be sized or read.
    #[error("cannot read the initrd: {0}")]
    Read(#[source] std::io::Error),
    /// The file is empty.
    #[error("the initrd file is empty")]
    Empty,
    /// Not enough room between the kernel and the highest allowed address.
    #[error("initrd of {size} bytes does not fit between the kernel end {kernel_end:#x} and {limit:#x}: give the guest more memory or use a smaller initrd")]
    TooBig {
        /// Size of the initrd.
        size: u64,
        /// First byte after the kernel.
        kernel_end: u64,
        /// First byte the initrd may not touch.
        limit: u64,
    },
    /// Copying into guest memory failed.
    #[error("cannot copy the initrd into guest memory at {addr:#x}: {source}")]
    Copy {
        /// Where it was going.
        addr: u64,
        /// What vm-memory said.
        source: vm_memory::GuestMemoryError,
    },
}

/// Copies `initrd` into `mem` as high as allowed (see the module docs) and returns its
/// address and size. `initrd_addr_max` is inclusive, as in the setup header (see
/// `zeropage::initrd_addr_max`). `initrd` is usually a `std::fs::File`.
pub fn load_initrd<F>(
    mem: &GuestMemoryMmap,
    initrd: &mut F,
    kernel_end: GuestAddress,
    initrd_addr_max: u64,
) -> Result<(GuestAddress, usize), Error>
where
    F: ReadVolatile + Seek,
{
    let size = initrd.seek(SeekFrom::End(0)).map_err(Error::Read)?;
    initrd.seek(SeekFrom::Start(0)).map_err(Error::Read)?;
    if size == 0 {
        return Err(Error::Empty);
    }
    let limit = initrd_addr_max.saturating_add(1).min(low_ram_end(mem));
    let too_big = || Error::TooBig {
        size,
        kernel_end: kernel_end.0,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !(INITRD_ALIGN - 1);
    if addr < kernel_end.0 {
        return Err(too_big());
    }
    // Below `low_ram_end`, so the size fits usize (the region was mapped).
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(|source| Error::Copy { addr, source })?;
    log::info!("initrd: {size} bytes at {addr:#x}");
    Ok((GuestAddress(addr), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn placed_at_top_of_ram() {
        let mem = mem(64 * MIB);
        let data = vec![0x5a; 12345];
        let (addr, len) = load_initrd(
            &mem,
            &mut Cursor::new(&data),
            GuestAddress(0x200_0000),
            0x7fff_ffff,
        )
        .unwrap();
        assert_eq!(len, 12345);
        assert_eq!(addr.0 % INITRD_ALIGN, 0);
        assert!(addr.0 + len as u64 <= 64 * MIB);
        assert!(
            64 * MIB - (addr.0 + len as u64) < INITRD_ALIGN,
            "as high as possible"
        );
        let mut back = vec![0; len];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn respects_initrd_addr_max() {
        let mem = mem(64 * MIB);
        let max = 0x1ff_ffff; // inclusive: must end by 32 MiB
        let (addr, len) = load_initrd(
            &mem,
            &mut Cursor::new(vec![1u8; 8192]),
            GuestAddress(0x100_0000),
            max,
        )
        .unwrap();
        assert_eq!(addr.0, 0x200_0000 - 8192);
        assert!(addr.0 + len as u64 - 1 <= max);
    }

    #[test]
    fn respects_the_mmio_hole() {
        // A guest bigger than the hole: the initrd stays below it.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 3 << 30)]).unwrap();
        let (addr, _) = load_initrd(
            &mem,
            &mut Cursor::new(vec![1u8; 4096]),
            GuestAddress(0x200_0000),
            u64::from(u32::MAX),
        )
        .unwrap();
        assert_eq!(addr.0, arch::layout::MMIO_HOLE_START - 4096);
    }

    #[test]
    fn too_big() {
        let mem = mem(32 * MIB);
        // Would have to start below the kernel end.
        let err = load_initrd(
            &mem,
            &mut Cursor::new(vec![0u8; (20 * MIB) as usize]),
            GuestAddress(0x100_0000),
            u64::MAX,
        )
        .unwrap_err();
        assert!(matches!(err, Error::TooBig { .. }), "{err}");
        assert!(err.to_string().contains("does not fit"));
        // Larger than all memory.
        let err = load_initrd(
            &mem,
            &mut Cursor::new(vec![0u8; (33 * MIB) as usize]),
            GuestAddress(0),
            u64::MAX,
        )
        .unwrap_err();
        assert!(matches!(err, Error::TooBig { .. }));
        // Exactly fills the space above the kernel: fine.
        load_initrd(
            &mem,
            &mut Cursor::new(vec![0u8; (16 * MIB) as usize]),
            GuestAddress(0x100_0000),
            u64::MAX,
        )
        .unwrap();
    }

    #[test]
    fn empty() {
        let err = load_initrd(
            &mem(32 * MIB),
            &mut Cursor::new(Vec::new()),
            GuestAddress(0),
            0,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Empty));
    }
}
