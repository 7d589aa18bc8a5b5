//! Fuzz the kernel and initrd loaders and the zero page against hostile images.
//!
//! The input is a kernel image (often starting with an ELF or bzImage header, so that the
//! parsers get past their magic checks), an initrd and a memory size. Loading must fail
//! cleanly or place everything inside guest memory; the zero page is then written from
//! what was loaded.

#![no_main]

use std::io::Cursor;

use boot::e820::MemoryLayout;
use boot::zeropage::{initrd_addr_max, write_zero_page, ZeroPageParams};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[derive(Arbitrary, Debug)]
enum Header {
    Raw,
    Elf,
    BzImage,
}

#[derive(Arbitrary, Debug)]
struct Input {
    header: Header,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    /// Guest RAM in MiB (16 to 79).
    mem_mib: u8,
}

fuzz_target!(|input: Input| {
    let mem_size = (16 + u64::from(input.mem_mib % 64)) << 20;
    let Ok(layout) = MemoryLayout::new(mem_size) else {
        return;
    };
    let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&layout.ram_regions()).unwrap();
    let mut image = match input.header {
        Header::Raw => Vec::new(),
        Header::Elf => b"\x7fELF\x02\x01\x01\x00".to_vec(),
        // A bzImage's "HdrS" magic at 0x202, the boot flag at 0x1fe.
        Header::BzImage => {
            let mut v = vec![0u8; 0x206];
            v[0x1fe] = 0x55;
            v[0x1ff] = 0xaa;
            v[0x202..0x206].copy_from_slice(b"HdrS");
            v
        }
    };
    image.extend_from_slice(&input.kernel);
    let Ok(kernel) = boot::loader::load_kernel(&mem, &mut Cursor::new(image)) else {
        return;
    };
    assert!(mem.address_in_range(kernel.entry) || kernel.entry.0 == 0);
    let initrd = if input.initrd.is_empty() {
        None
    } else {
        match boot::initrd::load_initrd(
            &mem,
            &mut Cursor::new(input.initrd.clone()),
            kernel.end,
            initrd_addr_max(kernel.setup_header.as_ref()),
        ) {
            Ok((addr, size)) => {
                assert_eq!(size, input.initrd.len());
                assert!(addr >= kernel.end);
                assert!(mem.address_in_range(GuestAddress(addr.0 + size as u64 - 1)));
                Some((addr, size))
            }
            Err(_) => None,
        }
    };
    let _ = write_zero_page(
        &mem,
        ZeroPageParams {
            setup_header: kernel.setup_header,
            cmdline_addr: GuestAddress(0x20000),
            cmdline_size: 64,
            initrd,
            e820: layout.e820_map(),
            mem_size,
            acpi_rsdp: None,
        },
    );
});
