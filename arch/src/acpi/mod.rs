//! ACPI tables: how a guest OS discovers the machine it runs on, written by minivmm into
//! guest memory before the first instruction runs.
//!
//! # How a guest discovers its machine through ACPI
//! A PC cannot be probed completely: nothing on the processor bus says "there are four
//! CPUs, the I/O APIC is at 0xfec00000, a virtio disk answers at 0xc0001000 on IRQ 5, and
//! writing 0x34 to port 0x3c0 turns the machine off". Firmware writes that description into
//! memory as ACPI (Advanced Configuration and Power Interface) tables, and the OS reads it:
//!
//! 1. **RSDP** (Root System Description Pointer, signature `"RSD PTR "`). The OS has to find
//!    this first structure without help, so its place is fixed by convention: on a
//!    BIOS PC it lies on a 16-byte boundary in `0xE0000..0xFFFFF` (or the first KiB of the
//!    EBDA), and the OS scans for the signature and a valid checksum. Linux also accepts
//!    its address from the boot loader (`boot_params.acpi_rsdp_addr`), which saves the scan.
//!    minivmm puts it at [`ACPI_RSDP_START`] (0xE0000). It holds the address of:
//! 2. **XSDT** (Extended System Description Table): a standard table header followed by
//!    the 64-bit addresses of all other top-level tables. The OS walks the list and picks
//!    tables by their 4-character signature. minivmm lists two:
//! 3. **FADT** (Fixed ACPI Description Table, signature `FACP`): the machine's power
//!    management hardware. minivmm declares a *hardware-reduced* ACPI platform (no legacy
//!    PM blocks, timer or SCI) whose only registers are the *sleep control/status
//!    registers*: I/O ports of the VMM's ACPI PM device (`devices::legacy::acpi_pm`).
//!    The FADT also holds the address of the DSDT.
//! 4. **MADT** (Multiple APIC Description Table, signature `APIC`): one local APIC per CPU
//!    (this is how the OS counts CPUs), the I/O APIC and its first GSI, and the NMI wiring.
//!    It says the same as the MP table ([`crate::mptable`]), which Linux reads only when
//!    ACPI is off.
//! 5. **DSDT** (Differentiated System Description Table): not a fixed structure but AML
//!    bytecode ([`aml`]). The OS's AML interpreter loads it into a namespace of devices:
//!    each device has an id (`_HID`, which selects the driver: `LNRO0005` = virtio-mmio,
//!    `PNP0501` = 16550 UART), and current resources (`_CRS`: its MMIO window or ports and
//!    its interrupt). The DSDT also names the sleep states (`\_S5_`: the value to write to
//!    the sleep control register to power off) and carries small methods the OS runs on
//!    events (the Generic Event Device's `_EVT`, which reports a power-button press).
//!
//! Every table carries a checksum byte that makes its bytes sum to 0 (mod 256); the OS
//! rejects a table whose sum is not 0.
//!
//! # Power off and the power button
//! `poweroff` in the guest ends in Linux's `acpi_power_off()`: it evaluates `\_S5_`
//! ([`S5_SLEEP_TYPE`]) and, hardware-reduced, writes `SLP_EN | SLP_TYP << 2` to the sleep
//! control register ([`SLEEP_CONTROL_PORT`]); the ACPI PM device turns that into a VMM
//! exit. In the other direction the VMM can press the power button: the PM device sets
//! the power-button bit of its event register ([`GED_EVENT_PORT`]) and raises
//! [`ACPI_GED_IRQ`]; Linux runs `\_SB_.GED0._EVT`, which notifies the `PNP0C0C` power
//! button device, and guest user space (systemd-logind, acpid) shuts down cleanly.
//!
//! # Where the tables live
//! RSDP at [`ACPI_RSDP_START`], then DSDT, FADT, MADT and XSDT, each 16-byte aligned,
//! all inside `[ACPI_RSDP_START, ACPI_TABLES_END)` = `0xE0000..0x100000`. That range is
//! backed by the first RAM region but the e820 map does not offer it as RAM, so the kernel
//! leaves it alone. With 32 virtio devices and 254 CPUs the tables take under 6 KiB of
//! the 128 KiB.
//!
//! # Why not the `acpi_tables` crate
//! rust-vmm's `acpi_tables` (0.2.1) would build with minivmm's dependencies (it does not
//! use vm-memory), but it brings `zerocopy` and its derive macros into the workspace and
//! 10,000 lines covering dozens of tables and architectures, while minivmm needs five
//! tables and a dozen AML constructs. Writing them here takes a few hundred lines whose
//! every byte is explained, which is the point of minivmm, and keeps `Cargo.lock` as it is.

pub mod aml;
pub mod dsdt;
pub mod tables;

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    ACPI_GED_IRQ, ACPI_PM_PORT, ACPI_RSDP_START, ACPI_TABLES_END, COM1_IRQ, IRQ_MAX, MMIO_HOLE_END,
    VIRTIO_MMIO_MAX_DEVICES, VIRTIO_MMIO_SIZE,
};
use crate::GuestMemoryMmap;

/// I/O port of the sleep control register (`SLEEP_CONTROL_REG` in the FADT).
pub const SLEEP_CONTROL_PORT: u16 = ACPI_PM_PORT;
/// I/O port of the sleep status register (`SLEEP_STATUS_REG` in the FADT).
pub const SLEEP_STATUS_PORT: u16 = ACPI_PM_PORT + 1;
/// I/O port of the Generic Event Device's event register, read by `GED0._EVT`.
pub const GED_EVENT_PORT: u16 = ACPI_PM_PORT + 2;
/// Bit of the GED event register that means "the power button was pressed".
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;
/// The `SLP_TYP` value of S5 (soft off) in `\_S5_`. Any 3-bit value would do with the
/// sleep control register; 5 is easy to recognise. The ACPI PM device must use the same.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Largest number of vCPUs the MADT describes: APIC ids are 8 bits, 0xff is the
/// broadcast id and the I/O APIC takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;
/// Alignment of each table in guest memory.
const TABLE_ALIGN: u64 = 16;

/// What the ACPI tables describe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; local APIC id = vCPU index, as in the MP table.
    pub num_cpus: u8,
    /// The virtio-mmio devices: base of each 4 KiB register window and its IRQ (GSI), in
    /// the order the VMM created them (the DSDT names them `V000`, `V001`, ...).
    pub virtio_devices: Vec<(u64, u32)>,
}

/// Errors from writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Zero or too many vCPUs.
    #[error("ACPI tables: {0} vCPUs cannot be described (1 to {MAX_CPUS})")]
    CpuCount(u8),
    /// More virtio devices than the layout has windows for.
    #[error("ACPI tables: {count} virtio-mmio devices, at most {VIRTIO_MMIO_MAX_DEVICES}")]
    TooManyDevices {
        /// How many were given.
        count: usize,
    },
    /// A virtio window that a 32-bit memory descriptor cannot describe.
    #[error("ACPI tables: virtio-mmio window at {0:#x} does not end below 4 GiB")]
    DeviceAbove4G(u64),
    /// A virtio IRQ beyond the I/O APIC or on a line minivmm uses for something else.
    #[error("ACPI tables: virtio-mmio IRQ {0} is not free (lines 0..={IRQ_MAX}, except COM1's {COM1_IRQ} and the GED's {ACPI_GED_IRQ})")]
    BadIrq(u32),
    /// The tables do not fit the BIOS area.
    #[error("ACPI tables: {size} bytes do not fit in {ACPI_RSDP_START:#x}..{ACPI_TABLES_END:#x}")]
    TooLarge {
        /// Bytes needed from `ACPI_RSDP_START`.
        size: u64,
    },
    /// Guest memory could not be written.
    #[error("ACPI tables: cannot write guest memory at {addr:#x}: {source}")]
    Write {
        /// Where the write failed.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

fn check(cfg: &AcpiConfig) -> Result<Vec<(u32, u32)>, Error> {
    if cfg.num_cpus == 0 || cfg.num_cpus > MAX_CPUS {
        return Err(Error::CpuCount(cfg.num_cpus));
    }
    if cfg.virtio_devices.len() as u64 > VIRTIO_MMIO_MAX_DEVICES {
        return Err(Error::TooManyDevices {
            count: cfg.virtio_devices.len(),
        });
    }
    cfg.virtio_devices
        .iter()
        .map(|&(base, irq)| {
            let end = base.checked_add(VIRTIO_MMIO_SIZE);
            if end.is_none_or(|end| end > MMIO_HOLE_END) {
                return Err(Error::DeviceAbove4G(base));
            }
            if irq > IRQ_MAX || irq == COM1_IRQ || irq == ACPI_GED_IRQ {
                return Err(Error::BadIrq(irq));
            }
            Ok((base as u32, irq)) // base + 4 KiB <= 4 GiB, so it fits
        })
        .collect()
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Builds the RSDP, XSDT, FADT, MADT and DSDT for `cfg` and writes them at
/// [`ACPI_RSDP_START`] and after (see the module documentation). Returns the RSDP's
/// address, for `boot_params.acpi_rsdp_addr`.
pub fn setup_acpi(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<GuestAddress, Error> {
    let virtio = check(cfg)?;
    let mut next = align_up(ACPI_RSDP_START + tables::RSDP_SIZE as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next = align_up(addr + bytes.len() as u64);
        (addr, bytes)
    };

    let dsdt = place(dsdt::dsdt(&virtio));
    let fadt = place(tables::fadt(
        dsdt.0,
        tables::Gas::io_byte(SLEEP_CONTROL_PORT),
        tables::Gas::io_byte(SLEEP_STATUS_PORT),
    ));
    let madt = place(tables::madt(cfg.num_cpus));
    let xsdt = place(tables::xsdt(&[fadt.0, madt.0]));
    let rsdp = (ACPI_RSDP_START, tables::rsdp(xsdt.0));

    let end = xsdt.0 + xsdt.1.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(Error::TooLarge {
            size: end - ACPI_RSDP_START,
        });
    }
    for (addr, bytes) in [&rsdp, &dsdt, &fadt, &madt, &xsdt] {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|source| Error::Write {
                addr: *addr,
                source,
            })?;
    }
    log::debug!(
        "ACPI: RSDP at {ACPI_RSDP_START:#x}, {} CPUs, {} virtio devices, {} bytes",
        cfg.num_cpus,
        virtio.len(),
        end - ACPI_RSDP_START
    );
    Ok(GuestAddress(ACPI_RSDP_START))
}

#[cfg(test)]
mod tests;
