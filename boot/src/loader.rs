//! Copying the kernel image into guest memory and finding its 64-bit entry point.
//!
//! # The boot-protocol concept
//! Two kernel formats are accepted, told apart by their magic numbers:
//!
//! - **ELF `vmlinux`** (starts with `\x7fELF`): the uncompressed kernel straight out of the
//!   build. Its program headers say at which *physical* addresses its segments go
//!   (`p_paddr`, normally 16 MiB = `CONFIG_PHYSICAL_START`) and its entry point `e_entry` is
//!   the physical address of `startup_64`, the 64-bit entry. An ELF note may also announce a
//!   PVH entry (a 32-bit entry used by the Xen/PVH boot protocol), reported as `pvh: true`;
//!   minivmm itself enters at `e_entry` with the 64-bit Linux boot protocol.
//! - **bzImage** (has `HdrS` at offset 0x202): a small real-mode setup program (the first
//!   `(setup_sects + 1) * 512` bytes, which start with the *setup header*) followed by the
//!   compressed kernel and its decompressor. The loader copies everything after the setup
//!   part to `code32_start` (here `HIMEM_START`, 1 MiB) and keeps the setup header for the
//!   zero page. `Documentation/arch/x86/boot.rst`: "the 64-bit entry point is at the load
//!   address + 0x200", available when `xloadflags` has `XLF_KERNEL_64` (protocol 2.12+).
//!   The decompressor needs `init_size` bytes from the load address, so that is where the
//!   kernel ends as far as the initrd is concerned.
//!
//! Everything must fit in the RAM below the MMIO hole.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{GuestAddress, ReadVolatile};

use arch::layout::HIMEM_START;

use crate::{low_ram_end, GuestMemoryMmap};

/// Offset of the setup header's `header` field ("HdrS") in a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// The setup header's magic, "HdrS".
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// The ELF magic.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// ELF class byte (e_ident[4]) of 64-bit files.
const ELFCLASS64: u8 = 2;
/// ELF e_machine of x86_64.
const EM_X86_64: u16 = 62;
/// Offset of the 64-bit entry from a bzImage's load address.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Oldest boot protocol with the 64-bit entry (`xloadflags`).
pub const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;

/// The kind of kernel image that was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux`; `pvh` says whether it also has a PVH entry note.
    Elf {
        /// The image announces a PVH (32-bit, Xen-style) entry point.
        pvh: bool,
    },
    /// A bzImage.
    BzImage,
}

/// Where the kernel went and how to start it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The 64-bit entry point (RIP at start).
    pub entry: GuestAddress,
    /// The image format.
    pub format: KernelFormat,
    /// A bzImage's setup header, to be copied into the zero page (`None` for ELF).
    pub setup_header: Option<setup_header>,
    /// First byte after the kernel (for a bzImage: after the decompressor's working area,
    /// `init_size`). The initrd must go above this.
    pub end: GuestAddress,
}

/// Errors from loading the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is neither ELF nor bzImage.
    #[error("kernel image is in an unknown format: neither an ELF vmlinux (\\x7fELF magic) nor a bzImage (HdrS at 0x202)")]
    UnknownFormat,
    /// An ELF file that is not for x86_64.
    #[error("kernel image is an ELF file but not a 64-bit x86_64 one")]
    WrongElf,
    /// A bzImage too old to have a 64-bit entry point.
    #[error("bzImage has boot protocol {version:#x} and xloadflags {xloadflags:#x}: minivmm needs protocol 2.12+ with XLF_KERNEL_64")]
    No64BitEntry {
        /// The header's `version`.
        version: u16,
        /// The header's `xloadflags`.
        xloadflags: u16,
    },
    /// Reading the file failed.
    #[error("cannot read the kernel image: {0}")]
    Read(#[source] std::io::Error),
    /// linux-loader failed to load an ELF image.
    #[error("cannot load the ELF kernel: {0}")]
    Elf(#[source] linux_loader::loader::Error),
    /// linux-loader failed to load a bzImage.
    #[error("cannot load the bzImage kernel: {0}")]
    BzImage(#[source] linux_loader::loader::Error),
    /// The kernel ends beyond the RAM below the MMIO hole.
    #[error("kernel ends at {end:#x}, beyond the guest's low RAM which ends at {ram_end:#x}: give the guest more memory")]
    DoesNotFit {
        /// First byte after the kernel.
        end: u64,
        /// First byte after low RAM.
        ram_end: u64,
    },
}

/// Reads `buf.len()` bytes at `offset`; `Ok(false)` if the file is shorter.
fn read_at<F: Read + Seek>(file: &mut F, offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
    file.seek(SeekFrom::Start(offset)).map_err(Error::Read)?;
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::Read(e)),
    }
}

/// Recognises the image format (without loading anything).
fn detect<F: Read + Seek>(file: &mut F) -> Result<KernelFormat, Error> {
    let mut ident = [0u8; 20];
    if read_at(file, 0, &mut ident)? && &ident[..4] == ELF_MAGIC {
        let machine = u16::from_le_bytes([ident[18], ident[19]]);
        if ident[4] != ELFCLASS64 || machine != EM_X86_64 {
            return Err(Error::WrongElf);
        }
        return Ok(KernelFormat::Elf { pvh: false });
    }
    let mut magic = [0u8; 4];
    if read_at(file, BZIMAGE_MAGIC_OFFSET, &mut magic)? && &magic == BZIMAGE_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    Err(Error::UnknownFormat)
}

/// Loads an ELF vmlinux or a bzImage into `mem` (see the module docs) and returns where
/// to enter it. `kernel` is usually a `std::fs::File`.
pub fn load_kernel<F>(mem: &GuestMemoryMmap, kernel: &mut F) -> Result<LoadedKernel, Error>
where
    F: Read + ReadVolatile + Seek,
{
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded = match detect(kernel)? {
        KernelFormat::Elf { .. } => {
            let r = Elf::load(mem, None, kernel, himem).map_err(Error::Elf)?;
            LoadedKernel {
                entry: r.kernel_load,
                format: KernelFormat::Elf {
                    pvh: matches!(r.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(_)),
                },
                setup_header: None,
                end: GuestAddress(r.kernel_end),
            }
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, himem, kernel, himem).map_err(Error::BzImage)?;
            // linux-loader checked the magic, so the header is there.
            let hdr = r.setup_header.ok_or(Error::UnknownFormat)?;
            let (version, xloadflags) = (hdr.version, hdr.xloadflags);
            if version < MIN_BZIMAGE_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::No64BitEntry {
                    version,
                    xloadflags,
                });
            }
            let load = r.kernel_load.0;
            let end = r
                .kernel_end
                .max(load.saturating_add(u64::from(hdr.init_size)));
            LoadedKernel {
                entry: GuestAddress(load + BZIMAGE_64BIT_ENTRY_OFFSET),
                format: KernelFormat::BzImage,
                setup_header: Some(hdr),
                end: GuestAddress(end),
            }
        }
    };
    let ram_end = low_ram_end(mem);
    if loaded.end.0 > ram_end {
        return Err(Error::DoesNotFit {
            end: loaded.end.0,
            ram_end,
        });
    }
    log::info!(
        "kernel: {:?}, entry {:#x}, ends at {:#x}",
        loaded.format,
        loaded.entry.0,
        loaded.end.0
    );
    Ok(loaded)
}

/// A minimal x86_64 ELF executable, the smallest "kernel" minivmm loads: one PT_LOAD
/// segment of `payload` at guest physical `paddr` (at least 1 MiB), `memsz` bytes in
/// memory, entered at `paddr` in 64-bit mode. Tests and benchmarks build tiny guests with
/// it: hand-assembled code that needs no Linux.
pub fn elf_image(paddr: u64, payload: &[u8], memsz: u64) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&paddr.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let data_off = 64 + 56u64;
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // RWX
    f.extend_from_slice(&data_off.to_le_bytes()); // p_offset
    f.extend_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes()); // p_vaddr
    f.extend_from_slice(&paddr.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(payload.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&memsz.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x20_0000u64.to_le_bytes()); // p_align
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use vm_memory::Bytes;

    fn fake_elf(paddr: u64, payload: &[u8], memsz: u64) -> Vec<u8> {
        elf_image(paddr, payload, memsz)
    }

    /// A minimal bzImage: one setup sector after the boot sector, then `payload`.
    fn fake_bzimage(version: u16, xloadflags: u16, init_size: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 1024];
        f[0x1f1] = 1; // setup_sects: the setup part is (1 + 1) * 512 bytes
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        f[0x211] = 1; // loadflags: LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn loads_elf() {
        let mem = mem(32 << 20);
        let image = fake_elf(0x100_0000, b"kernel code", 0x20_0000);
        let k = load_kernel(&mem, &mut Cursor::new(image)).unwrap();
        assert_eq!(k.entry, GuestAddress(0x100_0000));
        assert_eq!(k.format, KernelFormat::Elf { pvh: false });
        assert!(k.setup_header.is_none());
        assert_eq!(k.end, GuestAddress(0x120_0000));
        let mut buf = [0u8; 11];
        mem.read_slice(&mut buf, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(&buf, b"kernel code");
    }

    #[test]
    fn elf_too_big_for_memory() {
        let mem = mem(32 << 20);
        // The file part fits, the BSS (memsz) does not.
        let image = fake_elf(0x100_0000, b"x", 0x200_0000);
        let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::DoesNotFit {
                    end: 0x300_0000,
                    ..
                }
            ),
            "{err}"
        );
        // The file part itself is outside memory.
        let image = fake_elf(0x300_0000, b"x", 1);
        assert!(matches!(
            load_kernel(&mem, &mut Cursor::new(image)),
            Err(Error::Elf(_))
        ));
    }

    #[test]
    fn rejects_32bit_elf() {
        let mut image = fake_elf(0x100_0000, b"x", 1);
        image[4] = 1; // ELFCLASS32
        let err = load_kernel(&mem(32 << 20), &mut Cursor::new(image)).unwrap_err();
        assert!(matches!(err, Error::WrongElf));
    }

    #[test]
    fn loads_bzimage() {
        let mem = mem(32 << 20);
        let image = fake_bzimage(0x020f, XLF_KERNEL_64, 0x80_0000, b"compressed");
        let k = load_kernel(&mem, &mut Cursor::new(image)).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.entry, GuestAddress(HIMEM_START + 0x200));
        // init_size is larger than the payload: it decides the end.
        assert_eq!(k.end, GuestAddress(HIMEM_START + 0x80_0000));
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.cmdline_size }, 2047);
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
        let mut buf = [0u8; 10];
        mem.read_slice(&mut buf, GuestAddress(HIMEM_START)).unwrap();
        assert_eq!(&buf, b"compressed");
    }

    #[test]
    fn bzimage_needs_64bit_entry() {
        let mem = mem(32 << 20);
        for (version, xlf) in [(0x020f, 0), (0x020b, XLF_KERNEL_64)] {
            let image = fake_bzimage(version, xlf, 0x1000, b"x");
            let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
            assert!(matches!(err, Error::No64BitEntry { .. }), "{err}");
        }
    }

    #[test]
    fn bzimage_init_size_must_fit() {
        let mem = mem(16 << 20);
        let image = fake_bzimage(0x020f, XLF_KERNEL_64, 0x100_0000, b"x");
        let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
        assert!(err.to_string().contains("more memory"), "{err}");
    }

    #[test]
    fn unknown_format() {
        let mem = mem(32 << 20);
        for image in [
            b"#!/bin/sh\necho this is a text file\n".repeat(40),
            b"short".to_vec(),
            Vec::new(),
        ] {
            let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
            assert!(matches!(err, Error::UnknownFormat));
            assert!(err.to_string().contains("unknown format"), "{err}");
        }
    }

    #[test]
    fn loads_from_a_file() {
        let path =
            std::env::temp_dir().join(format!("minivmm-boot-test-{}.txt", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"just some text\n")
            .unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let err = load_kernel(&mem(32 << 20), &mut file).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, Error::UnknownFormat));
    }
}
