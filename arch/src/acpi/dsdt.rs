//! The DSDT (Differentiated System Description Table): the AML that describes the devices
//! the guest cannot discover by itself, built with [`super::aml`].
//!
//! The namespace minivmm builds, in ASL (the source form of AML; `iasl -d` on the table
//! prints the same thing):
//!
//! ```text
//! Name (_S5, Package (0x01) { 0x05 })        // S5 "soft off" = SLP_TYP 5
//! Scope (_SB) {                              // the system bus: all devices live here
//!     Device (COM1) {                        // the 16550 UART at 0x3f8, IRQ 4
//!         Name (_HID, EisaId ("PNP0501"))
//!         Name (_UID, One)
//!         Name (_CRS, ResourceTemplate () {
//!             IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
//!             IRQNoFlags () {4}
//!         })
//!     }
//!     Device (PWRB) {                        // the power button
//!         Name (_HID, EisaId ("PNP0C0C"))
//!         Name (_UID, Zero)
//!     }
//!     Device (GED0) {                        // Generic Event Device: the power button's IRQ
//!         Name (_HID, "ACPI0013")
//!         Name (_UID, Zero)
//!         Name (_CRS, ResourceTemplate () {
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 23 }
//!         })
//!         OperationRegion (GDST, SystemIO, 0x03C2, One)
//!         Field (GDST, ByteAcc, NoLock, Preserve) { GEVT, 8 }
//!         Method (_EVT, 1, NotSerialized) {  // run by the OS on each GED interrupt
//!             Local0 = GEVT                  // read (and so clear) the event bits
//!             If ((Local0 & One)) { Notify (PWRB, 0x80) }   // 0x80: button pressed
//!         }
//!     }
//!     Device (V000) {                        // one per virtio-mmio device
//!         Name (_HID, "LNRO0005")
//!         Name (_UID, Zero)
//!         Name (_CRS, ResourceTemplate () {
//!             Memory32Fixed (ReadWrite, 0xC0001000, 0x00001000)
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 5 }
//!         })
//!     }
//! }
//! ```
//!
//! Choices, and why:
//! - `_SB` and `_S5` are written without the root prefix `\`, as `iasl` optimizes them:
//!   the DSDT is loaded at the root, so they mean `\_SB_` and `\_S5_`.
//! - `_S5`'s package has one element; with one element Linux takes `SLP_TYPa` from its
//!   low byte (and `SLP_TYPb`, unused with the sleep control register, from the next).
//! - virtio-mmio interrupts are edge-triggered, active high and exclusive, as Firecracker
//!   describes them and as the MP table describes every line (ISA convention): minivmm
//!   raises them through irqfds, which pulse the line. Linux's virtio_mmio driver asks
//!   for the line with `IRQF_SHARED`, which an exclusive edge line grants.
//! - `LNRO0005` is the ACPI id Linux's virtio_mmio driver matches (`virtio_mmio_acpi_match`).
//! - The Generic Event Device (ACPI 6.1+, `ACPI0013`) is how a hardware-reduced machine
//!   delivers events: Linux's `evged` driver requests each interrupt of its `_CRS` and, when
//!   one fires, runs `_EVT` with the GSI as argument (after looking for an `_Exx` method,
//!   which there is not). `_EVT` reads the event register of the VMM's ACPI PM device
//!   (reading clears it) and, if the power-button bit is set, notifies `PWRB`, which
//!   Linux's button driver turns into a `KEY_POWER` input event for user space (systemd
//!   or acpid then shut the system down).
//!
//! Linux finds COM1 at 0x3f8 without ACPI too; describing it matters because with
//! hardware-reduced ACPI Linux does not set up legacy ISA IRQs, so the UART's IRQ must
//! come from a `_CRS` (through the `8250_pnp` driver).

use super::aml::{self, InterruptFlags, RegionSpace};
use super::tables::sdt;
use super::{GED_EVENT_PORT, GED_EVENT_POWER_BUTTON, S5_SLEEP_TYPE};
use crate::layout::{ACPI_GED_IRQ, COM1_IRQ, COM1_PORT, VIRTIO_MMIO_SIZE};

/// Revision of the DSDT: 2 means AML integers are 64 bits wide.
pub const DSDT_REVISION: u8 = 2;

/// Flags of every extended interrupt minivmm describes: edge, active high, exclusive.
pub const EDGE_HIGH_EXCLUSIVE: InterruptFlags = InterruptFlags {
    edge: true,
    active_low: false,
    shared: false,
};

/// `Name (_S5, Package (0x01) { S5_SLEEP_TYPE })`.
pub fn s5() -> Vec<u8> {
    aml::name(
        b"_S5_",
        &aml::package(&[aml::integer(S5_SLEEP_TYPE.into())]),
    )
}

/// The COM1 device (`PNP0501`, ports 0x3f8..0x3ff, ISA IRQ 4).
pub fn com1() -> Vec<u8> {
    let crs = aml::resource_template(&[
        aml::io(COM1_PORT, COM1_PORT, 0, 8),
        aml::irq_no_flags(COM1_IRQ as u8),
    ]);
    let body = [
        aml::name(b"_HID", &aml::eisa_id(b"PNP0501")),
        aml::name(b"_UID", &aml::integer(1)),
        aml::name(b"_CRS", &crs),
    ]
    .concat();
    aml::device(b"COM1", &body)
}

/// The power button device `PWRB` (`PNP0C0C`): no resources, it only receives `Notify`.
pub fn power_button() -> Vec<u8> {
    let body = [
        aml::name(b"_HID", &aml::eisa_id(b"PNP0C0C")),
        aml::name(b"_UID", &aml::integer(0)),
    ]
    .concat();
    aml::device(b"PWRB", &body)
}

/// The Generic Event Device `GED0` (`ACPI0013`) on [`ACPI_GED_IRQ`], whose `_EVT` method
/// reads the event register at [`GED_EVENT_PORT`] and notifies `PWRB` (0x80) when the
/// [`GED_EVENT_POWER_BUTTON`] bit is set.
pub fn ged() -> Vec<u8> {
    let crs = aml::resource_template(&[aml::interrupt(EDGE_HIGH_EXCLUSIVE, ACPI_GED_IRQ)]);
    let evt_body = [
        aml::store(&aml::name_seg(b"GEVT"), &[aml::LOCAL0]),
        aml::if_then(
            &aml::and(&[aml::LOCAL0], &aml::integer(GED_EVENT_POWER_BUTTON.into())),
            &aml::notify(&aml::name_seg(b"PWRB"), 0x80),
        ),
    ]
    .concat();
    let body = [
        aml::name(b"_HID", &aml::string("ACPI0013")),
        aml::name(b"_UID", &aml::integer(0)),
        aml::name(b"_CRS", &crs),
        aml::operation_region(b"GDST", RegionSpace::SystemIo, GED_EVENT_PORT.into(), 1),
        aml::field(b"GDST", aml::FIELD_BYTE_ACC, &[(b"GEVT", 8)]),
        aml::method(b"_EVT", 1, false, &evt_body),
    ]
    .concat();
    aml::device(b"GED0", &body)
}

/// The NameSeg of the `index`th virtio-mmio device: `V000`, `V001`, ... (`index` < 1000).
pub fn virtio_name(index: usize) -> [u8; 4] {
    let digit = |d: usize| b'0' + (d % 10) as u8;
    [b'V', digit(index / 100), digit(index / 10), digit(index)]
}

/// A virtio-mmio device (`LNRO0005`) with its 4 KiB register window at `base` and its
/// interrupt on GSI `irq`; `_UID` is `index`.
pub fn virtio_device(index: usize, base: u32, irq: u32) -> Vec<u8> {
    let crs = aml::resource_template(&[
        aml::memory32_fixed(true, base, VIRTIO_MMIO_SIZE as u32),
        aml::interrupt(EDGE_HIGH_EXCLUSIVE, irq),
    ]);
    let body = [
        aml::name(b"_HID", &aml::string("LNRO0005")),
        aml::name(b"_UID", &aml::integer(index as u64)),
        aml::name(b"_CRS", &crs),
    ]
    .concat();
    aml::device(&virtio_name(index), &body)
}

/// The AML of the whole DSDT, without the table header: `\_S5_`, then `\_SB_` holding
/// COM1, the power button, the GED and one device per `(base, irq)` in `virtio`.
pub fn dsdt_aml(virtio: &[(u32, u32)]) -> Vec<u8> {
    let mut sb = [com1(), power_button(), ged()].concat();
    for (index, (base, irq)) in virtio.iter().enumerate() {
        sb.extend(virtio_device(index, *base, *irq));
    }
    [s5(), aml::scope(&aml::name_seg(b"_SB_"), &sb)].concat()
}

/// The complete DSDT table (header and AML). The caller has checked that there are at
/// most 1000 devices (their names have three digits).
pub fn dsdt(virtio: &[(u32, u32)]) -> Vec<u8> {
    sdt(b"DSDT", DSDT_REVISION, &dsdt_aml(virtio))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::tables::SDT_HEADER_SIZE;

    /// What `iasl` (20200925) produced, once, for the `Device (V000)` of the module
    /// documentation (base 0xC0001000, IRQ 5): `iasl -p dsdt dsdt.asl; xxd dsdt.aml`.
    const IASL_V000: &[u8] = &[
        0x5b, 0x82, 0x3a, 0x56, 0x30, 0x30, 0x30, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x4c, 0x4e,
        0x52, 0x4f, 0x30, 0x30, 0x30, 0x35, 0x00, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x00, 0x08, 0x5f,
        0x43, 0x52, 0x53, 0x11, 0x1a, 0x0a, 0x17, 0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xc0,
        0x00, 0x10, 0x00, 0x00, 0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00, 0x79, 0x00,
    ];

    /// The whole AML body `iasl` produced for the module documentation's ASL (one virtio
    /// device), i.e. `dsdt.aml` without its 36-byte header.
    const IASL_DSDT_BODY: &[u8] = &[
        0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x04, 0x01, 0x0a, 0x05, 0x10, 0x49, 0x0e, 0x5f, 0x53,
        0x42, 0x5f, 0x5b, 0x82, 0x2b, 0x43, 0x4f, 0x4d, 0x31, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c,
        0x41, 0xd0, 0x05, 0x01, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x01, 0x08, 0x5f, 0x43, 0x52, 0x53,
        0x11, 0x10, 0x0a, 0x0d, 0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00,
        0x79, 0x00, 0x5b, 0x82, 0x15, 0x50, 0x57, 0x52, 0x42, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c,
        0x41, 0xd0, 0x0c, 0x0c, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x00, 0x5b, 0x82, 0x41, 0x06, 0x47,
        0x45, 0x44, 0x30, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x41, 0x43, 0x50, 0x49, 0x30, 0x30,
        0x31, 0x33, 0x00, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x00, 0x08, 0x5f, 0x43, 0x52, 0x53, 0x11,
        0x0e, 0x0a, 0x0b, 0x89, 0x06, 0x00, 0x03, 0x01, 0x17, 0x00, 0x00, 0x00, 0x79, 0x00, 0x5b,
        0x80, 0x47, 0x44, 0x53, 0x54, 0x01, 0x0b, 0xc2, 0x03, 0x01, 0x5b, 0x81, 0x0b, 0x47, 0x44,
        0x53, 0x54, 0x01, 0x47, 0x45, 0x56, 0x54, 0x08, 0x14, 0x19, 0x5f, 0x45, 0x56, 0x54, 0x01,
        0x70, 0x47, 0x45, 0x56, 0x54, 0x60, 0xa0, 0x0c, 0x7b, 0x60, 0x01, 0x00, 0x86, 0x50, 0x57,
        0x52, 0x42, 0x0a, 0x80, 0x5b, 0x82, 0x3a, 0x56, 0x30, 0x30, 0x30, 0x08, 0x5f, 0x48, 0x49,
        0x44, 0x0d, 0x4c, 0x4e, 0x52, 0x4f, 0x30, 0x30, 0x30, 0x35, 0x00, 0x08, 0x5f, 0x55, 0x49,
        0x44, 0x00, 0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x1a, 0x0a, 0x17, 0x86, 0x09, 0x00, 0x01,
        0x00, 0x10, 0x00, 0xc0, 0x00, 0x10, 0x00, 0x00, 0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00,
        0x00, 0x00, 0x79, 0x00,
    ];

    #[test]
    fn virtio_device_matches_iasl() {
        assert_eq!(virtio_device(0, 0xc000_1000, 5), IASL_V000);
    }

    #[test]
    fn whole_dsdt_matches_iasl() {
        let t = dsdt(&[(0xc000_1000, 5)]);
        assert_eq!(&t[SDT_HEADER_SIZE..], IASL_DSDT_BODY);
        assert_eq!(&t[0..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t[8], DSDT_REVISION);
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }

    #[test]
    fn virtio_names_and_uids() {
        assert_eq!(&virtio_name(0), b"V000");
        assert_eq!(&virtio_name(31), b"V031");
        assert_eq!(&virtio_name(999), b"V999");
        let d = virtio_device(12, 0xc000_d000, 17);
        assert_eq!(&d[3..7], b"V012");
        // _UID 12 is `0A 0C`; IRQ 17 is the last 4 bytes before the end tag.
        let uid = [b'_', b'U', b'I', b'D', 0x0a, 12];
        assert!(d.windows(uid.len()).any(|w| w == uid));
        assert_eq!(&d[d.len() - 6..], &[17, 0, 0, 0, 0x79, 0]);
    }

    #[test]
    fn many_devices_use_longer_pkg_lengths() {
        // 32 devices make the _SB_ scope about 2 KiB long: a multi-byte PkgLength.
        let devs: Vec<(u32, u32)> = (0..32).map(|i| (0xc000_1000 + i * 0x1000, 5)).collect();
        let body = dsdt_aml(&devs);
        let scope_at = s5().len();
        assert_eq!(body[scope_at], aml::SCOPE_OP);
        let lead = body[scope_at + 1];
        let follow = usize::from(lead >> 6);
        assert!(follow >= 1);
        let mut len = usize::from(lead & 0xf);
        for i in 0..follow {
            len |= usize::from(body[scope_at + 2 + i]) << (4 + 8 * i);
        }
        assert_eq!(
            len,
            body.len() - scope_at - 1,
            "scope covers the rest of the table"
        );
    }
}
