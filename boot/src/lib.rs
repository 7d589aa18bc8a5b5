//! Loading a Linux kernel into guest memory: ELF vmlinux and bzImage (through linux-loader),
//! the command line, the initrd, the zero page and the e820 map. Pure code over guest memory.
//!
//! The order a VMM uses them in:
//! 1. [`e820::MemoryLayout::ram_regions`] says which guest RAM to map; [`e820::MemoryLayout::e820_map`] describes it to
//!    the guest.
//! 2. [`loader::load_kernel`] copies the kernel and says where to enter it.
//! 3. [`initrd::load_initrd`] places the initrd above the kernel.
//! 4. [`cmdline::build`] / [`cmdline::write_cmdline`] put the command line at
//!    `CMDLINE_START`.
//! 5. [`zeropage::write_zero_page`] ties it all together in `struct boot_params`, whose
//!    address goes in RSI (see `arch::regs`).
//!
//! [`partition`] reads a disk image's partition table (GPT or MBR) the way Linux does, to
//! choose the `root=` of a guest that boots from a partitioned image.
#![deny(missing_docs)]

pub mod cmdline;
pub mod e820;
pub mod initrd;
pub mod loader;
pub mod partition;
pub mod zeropage;

pub use arch::GuestMemoryMmap;

/// The end of the RAM region that starts at address 0 and lies below the MMIO hole: where
/// the kernel, initrd and command line must fit.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
    mem.find_region(GuestAddress(0))
        .map(|r| {
            r.last_addr()
                .raw_value()
                .saturating_add(1)
                .min(arch::layout::MMIO_HOLE_START)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress};

    /// The whole boot preparation on a 64 MiB guest with an ELF kernel, in the order a VMM
    /// does it, checked through what the kernel would read.
    #[test]
    fn full_boot_setup() {
        let size = 64 << 20;
        let mem =
            GuestMemoryMmap::from_ranges(&e820::MemoryLayout::new(size).unwrap().ram_regions())
                .unwrap();

        // A tiny "vmlinux": one segment at 16 MiB.
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
        elf.extend_from_slice(&[0; 8]);
        for v in [2u16, 62] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
        elf.extend_from_slice(&1u32.to_le_bytes());
        for v in [0x100_0000u64, 64, 0] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
        elf.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, 1, 0, 0, 0] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&5u32.to_le_bytes());
        for v in [120u64, 0x100_0000, 0x100_0000, 4, 0x10_0000, 0x1000] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
        elf.extend_from_slice(b"\x90\x90\xf4\xf4");

        let kernel = loader::load_kernel(&mem, &mut Cursor::new(elf)).unwrap();
        let max = zeropage::initrd_addr_max(kernel.setup_header.as_ref());
        let initrd =
            initrd::load_initrd(&mem, &mut Cursor::new(vec![7u8; 5000]), kernel.end, max).unwrap();
        let line = cmdline::build(&[cmdline::DEFAULT_CMDLINE, "root=/dev/vda"]).unwrap();
        cmdline::check_fits(&line, kernel.setup_header.as_ref()).unwrap();
        let (cmdline_addr, cmdline_size) = cmdline::write_cmdline(&mem, &line).unwrap();
        zeropage::write_zero_page(
            &mem,
            zeropage::ZeroPageParams {
                setup_header: kernel.setup_header,
                cmdline_addr,
                cmdline_size,
                initrd: Some(initrd),
                acpi_rsdp: None,
                e820: e820::MemoryLayout::new(size).unwrap().e820_map(),
                mem_size: size,
            },
        )
        .unwrap();
        arch::mptable::setup_mptable(&mem, 2, arch::layout::IRQ_MAX).unwrap();
        let sregs = arch::regs::boot_sregs(&mem, Default::default()).unwrap();
        let regs = arch::regs::boot_regs(kernel.entry.0, arch::layout::ZERO_PAGE_START);

        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(sregs.cr3, arch::layout::PML4_START);
        let bp: linux_loader::bootparam::boot_params =
            mem.read_obj(GuestAddress(regs.rsi)).unwrap();
        assert_eq!({ bp.hdr.ramdisk_image }, initrd.0 .0 as u32);
        assert!(u64::from(bp.hdr.ramdisk_image) >= kernel.end.0);
        let mut text = vec![0u8; line.len() + 1];
        mem.read_slice(&mut text, GuestAddress(u64::from(bp.hdr.cmd_line_ptr)))
            .unwrap();
        assert_eq!(&text[..line.len()], line.as_bytes());
        assert_eq!(text[line.len()], 0);
        assert_eq!(bp.e820_entries, 3);
        // None of the fixed structures overlap what the kernel and initrd occupy.
        assert!(arch::layout::EBDA_START < kernel.entry.0);
    }
}
