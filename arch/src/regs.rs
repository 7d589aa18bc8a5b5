//! The register state of a vCPU at the first instruction of a 64-bit Linux kernel.
//!
//! # The hardware concept
//! A real x86 CPU starts in 16-bit *real mode*; firmware then switches it to 32-bit
//! *protected mode* and finally to 64-bit *long mode*. A VMM can skip all of that: KVM lets
//! user space set every register directly, so minivmm builds the end state and starts the
//! vCPU in it. That end state is what `Documentation/arch/x86/boot.rst` ("64-bit Boot
//! Protocol") asks of a boot loader:
//!
//! - 64-bit mode with paging on: CR0.PE (protection) + CR0.PG (paging), CR4.PAE (the page
//!   table format long mode uses), EFER.LME (enable long mode) + EFER.LMA (long mode
//!   active), and CR3 pointing at page tables that identity map the kernel, the zero page
//!   and the command line (see [`crate::paging`]);
//! - a GDT with flat `__BOOT_CS` (0x10) / `__BOOT_DS` (0x18) descriptors, CS = 0x10 and
//!   DS/ES/SS = 0x18 (see [`crate::gdt`]);
//! - interrupts disabled (RFLAGS.IF = 0; bit 1 of RFLAGS is reserved and always 1, hence
//!   `0x2`);
//! - RSI = the address of the zero page (`struct boot_params`), RIP = the 64-bit entry.
//!
//! The kernel sets up its own GDT, IDT, page tables and stack almost immediately, so these
//! only have to be valid for the first few hundred instructions.

use kvm_bindings::{kvm_dtable, kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::gdt::{boot_gdt, kvm_segment_from_gdt, BOOT_CS, BOOT_DS, BOOT_TSS};
use crate::layout::{BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};
use crate::{paging, GuestMemoryMmap};

/// CR0 bit 0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0 bit 4: extension type (always 1 on modern CPUs: an x87 FPU is present).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0 bit 31: paging enable.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4 bit 5: physical address extension (64-bit page table entries).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER bit 8: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER bit 10: long mode active (set by the CPU when LME and PG are both on).
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one reserved bit 1 set (interrupts off).
pub const RFLAGS_RESERVED: u64 = 0x2;

/// Size of the (empty) IDT minivmm loads: one 16-byte gate that is not present.
const IDT_SIZE: u16 = 16;

/// Errors from building the special registers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GDT could not be written.
    #[error("cannot write the boot GDT at {BOOT_GDT_START:#x}: {0}")]
    WriteGdt(#[source] vm_memory::GuestMemoryError),
    /// The IDT could not be written.
    #[error("cannot write the boot IDT at {BOOT_IDT_START:#x}: {0}")]
    WriteIdt(#[source] vm_memory::GuestMemoryError),
    /// The page tables could not be written.
    #[error("cannot write the boot page tables: {0}")]
    PageTables(#[from] paging::Error),
}

/// General-purpose registers for the 64-bit entry at `entry` with the zero page at
/// `zero_page`.
pub fn boot_regs(entry: u64, zero_page: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// Writes the boot GDT, an empty IDT and the identity page tables into `mem`, and returns
/// `base` (the vCPU's current special registers, from `KVM_GET_SREGS`) switched to long
/// mode with those tables loaded.
///
/// Fields not listed in the module docs (CR2, CR8, APIC base, LDT, pending interrupts)
/// keep the values from `base`.
pub fn boot_sregs(mem: &GuestMemoryMmap, base: kvm_sregs) -> Result<kvm_sregs, Error> {
    let mut sregs = base;

    // GDT: write the table, point GDTR at it, and load the segment registers' hidden
    // parts from the same descriptors.
    let gdt = boot_gdt();
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(Error::WriteGdt)?;
    }
    sregs.gdt = kvm_dtable {
        base: BOOT_GDT_START,
        limit: (8 * BOOT_GDT_MAX - 1) as u16,
        padding: [0; 3],
    };
    let code = kvm_segment_from_gdt(gdt[usize::from(BOOT_CS / 8)], (BOOT_CS / 8) as u8);
    let data = kvm_segment_from_gdt(gdt[usize::from(BOOT_DS / 8)], (BOOT_DS / 8) as u8);
    let tss = kvm_segment_from_gdt(gdt[usize::from(BOOT_TSS / 8)], (BOOT_TSS / 8) as u8);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // IDT: one zeroed (not present) gate. Any exception before Linux loads its own IDT
    // escalates to a triple fault, which KVM reports as KVM_EXIT_SHUTDOWN.
    mem.write_slice(&[0u8; IDT_SIZE as usize], GuestAddress(BOOT_IDT_START))
        .map_err(Error::WriteIdt)?;
    sregs.idt = kvm_dtable {
        base: BOOT_IDT_START,
        limit: IDT_SIZE - 1,
        padding: [0; 3],
    };

    // Paging and long mode.
    sregs.cr3 = paging::setup_identity_map(mem)?;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// The x87/SSE state at entry: the values `FNINIT` and the SSE reset give (FCW 0x37f: all
/// x87 exceptions masked, 64-bit precision; MXCSR 0x1f80: all SSE exceptions masked).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{PML4_START, ZERO_PAGE_START};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn regs() {
        let r = boot_regs(0x100_0200, ZERO_PAGE_START);
        assert_eq!(r.rip, 0x100_0200);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!((r.rsp, r.rbp), (BOOT_STACK_POINTER, BOOT_STACK_POINTER));
        assert_eq!(r.rflags, 2);
        assert_eq!((r.rax, r.rdi), (0, 0));
    }

    #[test]
    fn sregs_long_mode() {
        let mem = mem();
        let base = kvm_sregs {
            apic_base: 0xfee0_0900,
            cr4: 1 << 9, // something KVM might have set: kept
            ..Default::default()
        };
        let s = boot_sregs(&mem, base).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG | X86_CR0_ET), 0x8000_0011);
        assert_eq!(s.cr4, X86_CR4_PAE | 1 << 9);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), 0x500);
        assert_eq!(s.apic_base, 0xfee0_0900);

        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db, s.cs.type_),
            (0x10, 1, 0, 0xb)
        );
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(
                (seg.selector, seg.type_, seg.present, seg.s),
                (0x18, 3, 1, 1)
            );
            assert_eq!((seg.base, seg.limit), (0, 0xffff_ffff));
        }
        assert_eq!(
            (s.tr.selector, s.tr.type_, s.tr.s, s.tr.present),
            (0x20, 0xb, 0, 1)
        );

        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 47));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 15));
        // The IDT does not overlap the GDT.
        assert!(BOOT_GDT_START + u64::from(s.gdt.limit) < BOOT_IDT_START);
    }

    #[test]
    fn sregs_tables_in_memory() {
        let mem = mem();
        // Dirty the IDT area first: boot_sregs must clear it.
        mem.write_obj(u64::MAX, GuestAddress(BOOT_IDT_START + 8))
            .unwrap();
        let s = boot_sregs(&mem, kvm_sregs::default()).unwrap();
        let cs: u64 = mem
            .read_obj(GuestAddress(s.gdt.base + u64::from(s.cs.selector)))
            .unwrap();
        assert_eq!(cs, 0x00af_9b00_0000_ffff);
        let ds: u64 = mem
            .read_obj(GuestAddress(s.gdt.base + u64::from(s.ds.selector)))
            .unwrap();
        assert_eq!(ds, 0x00cf_9300_0000_ffff);
        let mut idt = [0xffu8; 16];
        mem.read_slice(&mut idt, GuestAddress(BOOT_IDT_START))
            .unwrap();
        assert_eq!(idt, [0u8; 16]);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & 1, 1);
    }

    #[test]
    fn sregs_error_names_the_gdt() {
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        let err = boot_sregs(&tiny, kvm_sregs::default()).unwrap_err();
        assert!(err.to_string().contains("GDT"), "{err}");
    }

    #[test]
    fn fpu() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr, f.fsw), (0x37f, 0x1f80, 0));
    }
}
