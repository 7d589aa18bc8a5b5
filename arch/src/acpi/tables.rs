//! The fixed-layout ACPI tables: RSDP, XSDT, FADT and MADT, as byte vectors.
//!
//! Every table but the RSDP starts with the same 36-byte *system description table
//! header* ([`sdt`]): a 4-character signature, the table's length, a revision, a checksum
//! byte that makes all the table's bytes sum to 0 (mod 256), and identifiers of the OEM
//! and of the tool that made it. Multi-byte fields are little-endian. Offsets below are
//! from the ACPI 6.5 specification, chapter 5.2.

use crate::layout::{IOAPIC_START, LAPIC_START};

/// Size of the common table header.
pub const SDT_HEADER_SIZE: usize = 36;
/// Size of an ACPI 2.0+ RSDP.
pub const RSDP_SIZE: usize = 36;
/// Size of the FADT minivmm writes (ACPI 6.x, with the hypervisor vendor field).
pub const FADT_SIZE: usize = 276;
/// OEM id in every table.
pub const OEM_ID: &[u8; 6] = b"MINIVM";
/// OEM table id in every table.
pub const OEM_TABLE_ID: &[u8; 8] = b"MINIVMM ";
/// OEM revision in every table.
pub const OEM_REVISION: u32 = 1;
/// "Creator" (the tool that made the table) id.
pub const CREATOR_ID: &[u8; 4] = b"MVMM";
/// Creator revision.
pub const CREATOR_REVISION: u32 = 1;

/// FADT flag: power button is a control-method device (in the DSDT), not a fixed feature.
pub const FADT_POWER_BUTTON: u32 = 1 << 4;
/// FADT flag: same for the sleep button (there is none).
pub const FADT_SLEEP_BUTTON: u32 = 1 << 5;
/// FADT flag: hardware-reduced ACPI (no PM1 blocks, GPEs, PM timer or SCI).
pub const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// FADT IA-PC boot architecture flag: it is not safe to probe for VGA.
pub const IAPC_NO_VGA: u16 = 1 << 2;
/// FADT IA-PC boot architecture flag: MSIs must not be enabled (there is no PCI).
pub const IAPC_NO_MSI: u16 = 1 << 3;
/// FADT IA-PC boot architecture flag: no CMOS real-time clock.
pub const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel irqchip has them).
pub const MADT_PCAT_COMPAT: u32 = 1;
/// MADT entry type: processor local APIC.
pub const MADT_LOCAL_APIC: u8 = 0;
/// MADT entry type: I/O APIC.
pub const MADT_IO_APIC: u8 = 1;
/// MADT entry type: local APIC NMI.
pub const MADT_LOCAL_APIC_NMI: u8 = 4;
/// Local APIC flag: the processor is enabled.
pub const MADT_LAPIC_ENABLED: u32 = 1;
/// "All processors" in a local APIC NMI entry.
pub const MADT_ALL_PROCESSORS: u8 = 0xff;

/// The byte that makes `bytes` (with the checksum byte still 0) sum to zero.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// A table: the 36-byte header, then `body`. Header layout: signature (0), length (4,
/// u32), revision (8), checksum (9), OEM id (10, 6 bytes), OEM table id (16, 8 bytes),
/// OEM revision (24, u32), creator id (28, 4 bytes), creator revision (32, u32).
pub fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = SDT_HEADER_SIZE + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The Root System Description Pointer, ACPI 2.0 form (revision 2, 36 bytes): signature
/// `"RSD PTR "` (0), checksum of the first 20 bytes (8), OEM id (9), revision (15), the
/// 32-bit RSDT address (16; 0: minivmm has no RSDT, only the XSDT), length (20), the XSDT
/// address (24, u64), an extended checksum over all 36 bytes (32), 3 reserved bytes.
pub fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_SIZE);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // RSDT address
    r.extend_from_slice(&(RSDP_SIZE as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The Extended System Description Table (`XSDT`, revision 1): the header, then the
/// 64-bit physical address of every other top-level table.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// A Generic Address Structure (12 bytes): where a register lives. Address space id (0:
/// memory, 1: port I/O), register width and offset in bits, access size (1: byte), address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gas {
    /// Address space id.
    pub space_id: u8,
    /// Width of the register in bits.
    pub bit_width: u8,
    /// Offset of the register in bits.
    pub bit_offset: u8,
    /// Access size: 1 byte, 2 word, 3 dword, 4 qword.
    pub access_size: u8,
    /// Address in that space.
    pub address: u64,
}

/// GAS address space id of port I/O.
pub const GAS_SYSTEM_IO: u8 = 1;
/// GAS access size "byte".
pub const GAS_ACCESS_BYTE: u8 = 1;

impl Gas {
    /// An 8-bit register at I/O port `port`.
    pub fn io_byte(port: u16) -> Self {
        Self {
            space_id: GAS_SYSTEM_IO,
            bit_width: 8,
            bit_offset: 0,
            access_size: GAS_ACCESS_BYTE,
            address: port.into(),
        }
    }

    /// The 12 bytes of the structure.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.space_id;
        b[1] = self.bit_width;
        b[2] = self.bit_offset;
        b[3] = self.access_size;
        b[4..].copy_from_slice(&self.address.to_le_bytes());
        b
    }
}

/// Offsets of the FADT fields minivmm sets (ACPI 6.5, table 5.9).
pub mod fadt_offset {
    /// 32-bit physical address of the DSDT.
    pub const DSDT: usize = 40;
    /// IA-PC boot architecture flags (u16).
    pub const IAPC_BOOT_ARCH: usize = 109;
    /// Fixed feature flags (u32).
    pub const FLAGS: usize = 112;
    /// FADT minor version.
    pub const MINOR_VERSION: usize = 131;
    /// 64-bit physical address of the DSDT.
    pub const X_DSDT: usize = 140;
    /// Sleep control register (GAS).
    pub const SLEEP_CONTROL_REG: usize = 244;
    /// Sleep status register (GAS).
    pub const SLEEP_STATUS_REG: usize = 256;
    /// Hypervisor vendor identity (u64).
    pub const HYPERVISOR_VENDOR: usize = 268;
}

/// The Fixed ACPI Description Table (signature `FACP`, revision 6, minor version 5) of a
/// *hardware-reduced* ACPI machine.
///
/// A PC's classic ACPI hardware (PM1 event/control blocks, the PM timer, general-purpose
/// event blocks, the SCI interrupt) is all absent: [`FADT_HW_REDUCED_ACPI`] tells the OS
/// so, and every legacy block field stays 0. What is left is:
/// - the DSDT's address (both the 32-bit and the 64-bit field);
/// - the *sleep control* and *sleep status* registers (ACPI 5.0+), 8-bit I/O ports:
///   to enter sleep state *Sx* the OS writes `SLP_EN | SLP_TYP << 2` (bit 5, bits 4..2)
///   to the control register, `SLP_TYP` coming from the `\_Sx_` object of the DSDT; S5 is
///   "soft off";
/// - flags: power and sleep buttons are control-method devices (so the OS adds no fixed
///   buttons), no VGA, no MSI, no CMOS RTC; the 8042 flag is clear, so Linux skips its
///   i8042 driver (minivmm's i8042 only serves `reboot=k`, which pokes it directly).
///
/// There is no FACS (firmware waking vector): optional with hardware-reduced ACPI.
pub fn fadt(dsdt_addr: u64, sleep_control: Gas, sleep_status: Gas) -> Vec<u8> {
    let mut body = vec![0u8; FADT_SIZE - SDT_HEADER_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        let at = offset - SDT_HEADER_SIZE;
        body[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // A DSDT above 4 GiB cannot be in the 32-bit field; the 64-bit one is what counts.
    let dsdt32 = u32::try_from(dsdt_addr).unwrap_or(0);
    put(fadt_offset::DSDT, &dsdt32.to_le_bytes());
    put(
        fadt_offset::IAPC_BOOT_ARCH,
        &(IAPC_NO_VGA | IAPC_NO_MSI | IAPC_NO_CMOS_RTC).to_le_bytes(),
    );
    put(
        fadt_offset::FLAGS,
        &(FADT_HW_REDUCED_ACPI | FADT_POWER_BUTTON | FADT_SLEEP_BUTTON).to_le_bytes(),
    );
    put(fadt_offset::MINOR_VERSION, &[5]);
    put(fadt_offset::X_DSDT, &dsdt_addr.to_le_bytes());
    put(fadt_offset::SLEEP_CONTROL_REG, &sleep_control.to_bytes());
    put(fadt_offset::SLEEP_STATUS_REG, &sleep_status.to_bytes());
    put(fadt_offset::HYPERVISOR_VENDOR, b"MINIVMM\0");
    sdt(b"FACP", 6, &body)
}

/// The Multiple APIC Description Table (signature `APIC`, revision 5): where the
/// interrupt controllers are and which CPUs exist.
///
/// Body: the local APIC address (u32) and flags ([`MADT_PCAT_COMPAT`]), then entries,
/// each starting with a type byte and a length byte:
/// - one *processor local APIC* (type 0, 8 bytes: ACPI processor UID, APIC id, flags u32)
///   per vCPU, UID = APIC id = vCPU index, enabled; the first one is the boot CPU;
/// - one *I/O APIC* (type 1, 12 bytes: id, reserved, address u32, first GSI u32) with id
///   `num_cpus` at `IOAPIC_START`, GSI base 0: its pin *n* is GSI *n*;
/// - a *local APIC NMI* (type 4, 6 bytes: processor UID 0xff = all, flags u16 0 =
///   conforming, LINT 1): NMI arrives on every local APIC's LINT1 pin.
///
/// There are no *interrupt source overrides* (type 2): without one, ISA IRQ *n* is GSI
/// *n* (edge, active high), which is exactly what the MP table says and how KVM's default
/// routing wires the in-kernel PIT (GSI 0 -> IOAPIC pin 0). QEMU routes the PIT to pin 2
/// and so needs an `IRQ0 -> GSI 2` override; minivmm must not add one. No SCI override
/// either: hardware-reduced ACPI has no SCI. IDs match the MP table's, so both
/// descriptions agree whichever one the kernel reads.
pub fn madt(num_cpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..num_cpus {
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        body.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, num_cpus, 0]);
    body.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, MADT_ALL_PROCESSORS]);
    body.extend_from_slice(&0u16.to_le_bytes()); // flags: conforming
    body.push(1); // LINT1
    sdt(b"APIC", 5, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::{le32, sum};

    #[test]
    fn header_fields() {
        let t = sdt(b"TEST", 3, &[1, 2, 3]);
        assert_eq!(&t[0..4], b"TEST");
        assert_eq!(le32(&t, 4) as usize, t.len());
        assert_eq!(t.len(), 39);
        assert_eq!(t[8], 3);
        assert_eq!(sum(&t), 0);
        assert_eq!(&t[10..16], OEM_ID);
        assert_eq!(&t[16..24], OEM_TABLE_ID);
        assert_eq!(&t[28..32], CREATOR_ID);
        assert_eq!(&t[36..], &[1, 2, 3]);
    }

    #[test]
    fn rsdp_checksums() {
        let r = rsdp(0x1234_5678_9abc);
        assert_eq!(r.len(), RSDP_SIZE);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&r), 0, "extended checksum");
        assert_eq!(r[15], 2);
        assert_eq!(le32(&r, 16), 0);
        assert_eq!(le32(&r, 20), 36);
        assert_eq!(
            u64::from_le_bytes(r[24..32].try_into().unwrap()),
            0x1234_5678_9abc
        );
    }

    #[test]
    fn gas_layout() {
        assert_eq!(
            Gas::io_byte(0x3c1).to_bytes(),
            [1, 8, 0, 1, 0xc1, 0x03, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn fadt_high_dsdt_leaves_the_32_bit_field_zero() {
        let f = fadt(0x1_0000_0000, Gas::io_byte(1), Gas::io_byte(2));
        assert_eq!(le32(&f, fadt_offset::DSDT), 0);
        assert_eq!(sum(&f), 0);
    }
}
