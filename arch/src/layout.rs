//! The guest physical address map: every fixed address minivmm uses, in one place.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BIOS data area (left zero)
//! 0x0000_0500  GDT (6 slots, see `gdt`) then IDT (one empty gate) at 0x530
//! 0x0000_7000  zero page (`struct boot_params`)
//! 0x0000_8ff0  initial stack pointer (grows down)
//! 0x0000_9000  PML4, then PDPT at 0xa000, then 4 page directories at 0xb000..0xf000
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX_SIZE bytes)
//! 0x0009_fc00  MP floating pointer + MP config table (EBDA, reserved in e820)
//! 0x000a_0000  legacy VGA/ROM hole (not RAM)
//! 0x000e_0000  ACPI RSDP, then the other ACPI tables, up to 1 MiB (BIOS area, not RAM)
//! 0x0010_0000  HIMEM_START: bzImage protected-mode code; vmlinux loads where its ELF says
//! ...          RAM up to min(memory, MMIO_HOLE_START)
//! 0xc000_0000  MMIO hole: boot timer, virtio-mmio devices, IOAPIC, LAPIC, KVM TSS
//! 0x1_0000_0000 RAM above 4 GiB, if memory > MMIO_HOLE_START
//! ```

/// Where the real-mode interrupt vector table would be; the bottom page is left zeroed.
pub const REAL_MODE_IVT_START: u64 = 0x0;
/// Global descriptor table used for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of 8-byte GDT slots minivmm writes: null, unused, code (0x10), data (0x18) and a
/// 16-byte TSS descriptor (0x20), the layout Linux's own boot GDT uses (see `gdt`).
pub const BOOT_GDT_MAX: usize = 6;
/// An empty interrupt descriptor table, loaded so that IDTR is well defined.
/// It follows the GDT: `BOOT_GDT_START + 8 * BOOT_GDT_MAX`.
pub const BOOT_IDT_START: u64 = 0x530;
/// The Linux zero page (`struct boot_params`); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial RSP/RBP for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of the page directories (2 MiB pages) of the identity map.
pub const PDE_START: u64 = 0xb000;
/// How many GiB the boot identity map covers (one page directory per GiB).
pub const IDENTITY_MAP_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line minivmm will write, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the Extended BIOS Data Area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// End of low RAM (the 640 KiB boundary).
pub const LOW_RAM_END: u64 = 0xa0000;
/// The ACPI Root System Description Pointer, in the BIOS area where Linux scans for it
/// (`0xE0000..0x100000`, 16-byte aligned); the other ACPI tables follow it. The area is
/// backed by the VMM's first RAM region but not listed as RAM in the e820 map, so the
/// kernel never reuses it.
pub const ACPI_RSDP_START: u64 = 0xe_0000;
/// End (exclusive) of the area the ACPI tables may use: the end of the BIOS area.
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// First byte above the legacy 1 MiB hole: where "high" RAM starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole. RAM that does not fit below it continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Firecracker-compatible boot timer: the guest writes 123 here when init starts.
pub const BOOT_TIMER_START: u64 = MMIO_HOLE_START;
/// Size of the boot timer's MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device window; the allocator hands out `VIRTIO_MMIO_SIZE` slots from here.
pub const VIRTIO_MMIO_START: u64 = BOOT_TIMER_START + BOOT_TIMER_SIZE;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Maximum number of virtio-mmio devices.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 32;
/// The IOAPIC (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC of every vCPU.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the TSS on Intel (`KVM_SET_TSS_ADDR`).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Highest address the 64-bit boot protocol lets minivmm put an initrd at, when
/// the kernel header does not say (`initrd_addr_max` of old headers).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Legacy COM1 port base and its IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ line on the IOAPIC/PIC.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port (the command/status port is `I8042_PORT + 4`).
pub const I8042_PORT: u16 = 0x60;
/// First IRQ line handed to virtio-mmio devices.
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last IRQ line (inclusive) handed to virtio-mmio devices: the one above is the GED's.
pub const VIRTIO_IRQ_END: u32 = ACPI_GED_IRQ - 1;
/// Last IRQ line (inclusive) usable by devices: the IOAPIC has 24 pins.
pub const IRQ_MAX: u32 = 23;
/// Base of the ACPI power-management device's I/O ports (see
/// `devices::legacy::acpi_pm`): sleep control at +0, sleep status at +1, GED event status
/// at +2. 0x3c0 is the VGA attribute controller's port on a PC; minivmm has no VGA (the
/// FADT says so), and the range is not one ACPICA refuses to access.
pub const ACPI_PM_PORT: u16 = 0x3c0;
/// Number of ports of the ACPI power-management device.
pub const ACPI_PM_PORT_SIZE: u64 = 4;
/// IRQ line (GSI) of the ACPI Generic Event Device, which the VMM raises for a power
/// button press, at any moment the host chooses (SIGTERM), even while the guest still
/// boots. So it is a GSI above 15: in KVM's default routing those reach only the IOAPIC,
/// where the pin stays masked until the guest's GED driver unmasks it. GSIs 0-15 also
/// reach the legacy PIC, which a hardware-reduced ACPI kernel never initialises: its
/// vector base stays 0 and, through the boot CPU's LINT0 (ExtINT), IRQ 3 would arrive as
/// vector 3, a breakpoint exception (seen: "int3: 0000 [#1]" and a panic on an early
/// SIGTERM). Virtio devices only interrupt once their driver has set them up.
pub const ACPI_GED_IRQ: u32 = IRQ_MAX;
