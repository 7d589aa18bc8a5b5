//! The ACPI power-management device: how a guest powers the VM off, and how the VMM
//! presses the guest's power button, on a *hardware-reduced* ACPI machine.
//!
//! A classic PC has a chipset PM block (PM1 event/control registers, an SCI interrupt)
//! that ACPI drives. Hardware-reduced ACPI (ACPI 5.0+, what minivmm's FADT declares)
//! replaces it with two small registers named in the FADT and with a *Generic Event
//! Device* (GED) described in the DSDT. This device implements all three, as 8-bit
//! I/O ports (the VMM registers it at `arch::layout::ACPI_PM_PORT`, 0x3c0, 4 ports):
//!
//! | offset | port  | register | guest access |
//! |--------|-------|----------|--------------|
//! | 0 | 0x3c0 | sleep control (`SLEEP_CONTROL_REG`) | write `SLP_EN` (bit 5) \| `SLP_TYP` (bits 4..2) to enter a sleep state; reads 0 |
//! | 1 | 0x3c1 | sleep status (`SLEEP_STATUS_REG`)   | bit 7 `WAK_STS`: set when the machine is awake again after a sleep request; write 1 to clear |
//! | 2 | 0x3c2 | GED event status                    | bit 0: the power button was pressed; reading returns the pending bits and clears them; writes are ignored |
//! | 3 | 0x3c3 | reserved                            | reads 0, writes ignored |
//!
//! # Power off
//! Linux's `poweroff` ends in `acpi_hw_extended_sleep(S5)`: write `WAK_STS` to the status
//! register (clearing it), write `SLP_EN | S5 << 2` to the control register, then poll the
//! status register for `WAK_STS`. When `SLP_TYP` equals [`S5_SLEEP_TYPE`] (the value the
//! DSDT's `\_S5_` package holds: `arch::acpi::S5_SLEEP_TYPE`), the device writes 1 to the
//! `poweroff_evt` it was given and the VMM ends the VM. Other sleep types (S1..S4; the
//! DSDT does not offer them, so a guest asking is confused or hostile) are logged and
//! ignored: the device sets `WAK_STS` at once, so the guest "wakes up" immediately
//! instead of polling forever.
//!
//! # The power button
//! [`AcpiPm::press_power_button`] sets bit 0 of the GED event register and raises the
//! GED's interrupt line (`arch::layout::ACPI_GED_IRQ`). Linux's GED driver then runs the
//! DSDT's `\_SB_.GED0._EVT` method, which reads the event register and, seeing bit 0, does
//! `Notify (PWRB, 0x80)`; the ACPI button driver reports `KEY_POWER`, and guest user space
//! (systemd-logind, acpid) decides to shut down. A guest without such a daemon ignores the
//! button, as a PC without one would.
//!
//! Every access is a plain byte operation: nothing the guest writes can make the device
//! fail, and a multi-byte access is handled byte by byte as consecutive registers.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{BusDevice, Interrupt};

/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the GED event status register.
pub const GED_EVENT_OFFSET: u64 = 2;
/// Number of ports the device occupies.
pub const PORT_COUNT: u64 = 4;

/// Sleep control: "enter the sleep state in `SLP_TYP` now" (bit 5).
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control: position of the 3-bit `SLP_TYP` field.
pub const SLP_TYP_SHIFT: u8 = 2;
/// Sleep control: mask of the `SLP_TYP` field.
pub const SLP_TYP_MASK: u8 = 0x7 << SLP_TYP_SHIFT;
/// Sleep status: the machine has woken up (bit 7).
pub const WAK_STS: u8 = 1 << 7;
/// The `SLP_TYP` of S5 (soft off). Must equal `arch::acpi::S5_SLEEP_TYPE`, the value in
/// the DSDT's `\_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// GED event bit: the power button was pressed. Must equal
/// `arch::acpi::GED_EVENT_POWER_BUTTON`, the bit the DSDT's `_EVT` method tests.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;

/// The device's registers, as a snapshot stores them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcpiPmSnapshot {
    /// The sleep status register.
    pub sleep_status: u8,
    /// Pending GED events.
    pub ged_events: u8,
}

/// The ACPI power-management device (see the module documentation).
pub struct AcpiPm {
    poweroff_evt: EventFd,
    ged_interrupt: Arc<dyn Interrupt>,
    sleep_status: u8,
    /// Pending GED events; atomic so that the VMM can press the button through `&self`.
    ged_events: AtomicU8,
}

impl AcpiPm {
    /// A device that writes 1 to `poweroff_evt` when the guest enters S5 and raises
    /// `ged_interrupt` (the GED's IRQ line) when the VMM presses the power button.
    pub fn new(poweroff_evt: EventFd, ged_interrupt: Arc<dyn Interrupt>) -> Self {
        Self {
            poweroff_evt,
            ged_interrupt,
            sleep_status: 0,
            ged_events: AtomicU8::new(0),
        }
    }

    /// The registers as they are now, for a snapshot.
    pub fn save(&self) -> AcpiPmSnapshot {
        AcpiPmSnapshot {
            sleep_status: self.sleep_status,
            ged_events: self.ged_events.load(Ordering::Acquire),
        }
    }

    /// Put the registers in the state `snap` describes.
    pub fn restore(&mut self, snap: &AcpiPmSnapshot) {
        self.sleep_status = snap.sleep_status;
        self.ged_events.store(snap.ged_events, Ordering::Release);
    }

    /// Presses the power button: sets [`GED_EVENT_POWER_BUTTON`] in the GED event register
    /// and raises the GED interrupt. Errors are the interrupt line's (an eventfd write).
    pub fn press_power_button(&self) -> io::Result<()> {
        self.ged_events
            .fetch_or(GED_EVENT_POWER_BUTTON, Ordering::AcqRel);
        self.ged_interrupt.trigger()
    }

    /// The pending GED event bits, without clearing them (for the VMM and tests).
    pub fn pending_events(&self) -> u8 {
        self.ged_events.load(Ordering::Acquire)
    }

    fn write_sleep_control(&mut self, value: u8) {
        if value & SLP_EN == 0 {
            return;
        }
        let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if sleep_type == S5_SLEEP_TYPE {
            crate::log_ratelimited!(log::Level::Info, "acpi_pm: guest entered S5 (power off)");
            if let Err(e) = self.poweroff_evt.write(1) {
                crate::error_ratelimited!("acpi_pm: cannot signal power off: {e}");
            }
        } else {
            crate::warn_ratelimited!(
                "acpi_pm: guest asked for sleep type {sleep_type}, which minivmm does not offer; waking it at once"
            );
            self.sleep_status |= WAK_STS;
        }
    }

    fn read_register(&mut self, offset: u64) -> u8 {
        match offset {
            SLEEP_STATUS_OFFSET => self.sleep_status,
            GED_EVENT_OFFSET => self.ged_events.swap(0, Ordering::AcqRel),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u8) {
        match offset {
            SLEEP_CONTROL_OFFSET => self.write_sleep_control(value),
            SLEEP_STATUS_OFFSET => self.sleep_status &= !value,
            _ => {}
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .map_or(0, |o| self.read_register(o));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(o) = offset.checked_add(i as u64) {
                self.write_register(o, *byte);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::CountingInterrupt;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> (AcpiPm, EventFd, Arc<CountingInterrupt>) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        let pm = AcpiPm::new(evt.try_clone().unwrap(), irq.clone());
        (pm, evt, irq)
    }

    fn read1(pm: &mut AcpiPm, offset: u64) -> u8 {
        let mut b = [0xaa];
        pm.read(offset, &mut b);
        b[0]
    }

    /// What Linux writes to power off: 0x34 = SLP_EN | 5 << 2.
    const LINUX_S5_WRITE: u8 = SLP_EN | (S5_SLEEP_TYPE << SLP_TYP_SHIFT);

    #[test]
    fn s5_signals_poweroff() {
        let (mut pm, evt, _) = device();
        assert_eq!(LINUX_S5_WRITE, 0x34);
        // Linux's sequence: clear WAK_STS, write the control register.
        pm.write(SLEEP_STATUS_OFFSET, &[WAK_STS]);
        assert!(evt.read().is_err(), "nothing signalled yet");
        pm.write(SLEEP_CONTROL_OFFSET, &[LINUX_S5_WRITE]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_not_power_off() {
        let (mut pm, evt, _) = device();
        // S5's type without SLP_EN, SLP_EN with other types, stray writes elsewhere.
        pm.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]);
        for typ in (0..8u8).filter(|&t| t != S5_SLEEP_TYPE) {
            pm.write(SLEEP_CONTROL_OFFSET, &[SLP_EN | (typ << SLP_TYP_SHIFT)]);
        }
        pm.write(SLEEP_STATUS_OFFSET, &[0xff]);
        pm.write(GED_EVENT_OFFSET, &[0xff]);
        pm.write(3, &[LINUX_S5_WRITE]);
        pm.write(u64::MAX, &[LINUX_S5_WRITE, LINUX_S5_WRITE]);
        assert!(evt.read().is_err(), "no power off");
    }

    #[test]
    fn unsupported_sleep_wakes_the_guest() {
        let (mut pm, _, _) = device();
        assert_eq!(read1(&mut pm, SLEEP_STATUS_OFFSET), 0);
        pm.write(SLEEP_CONTROL_OFFSET, &[SLP_EN | (3 << SLP_TYP_SHIFT)]); // S3
        assert_eq!(read1(&mut pm, SLEEP_STATUS_OFFSET), WAK_STS);
        // Write-1-to-clear: writing 0 keeps it, writing WAK_STS clears it.
        pm.write(SLEEP_STATUS_OFFSET, &[0]);
        assert_eq!(read1(&mut pm, SLEEP_STATUS_OFFSET), WAK_STS);
        pm.write(SLEEP_STATUS_OFFSET, &[WAK_STS]);
        assert_eq!(read1(&mut pm, SLEEP_STATUS_OFFSET), 0);
    }

    #[test]
    fn power_button_sets_the_event_and_raises_the_irq() {
        let (mut pm, evt, irq) = device();
        assert_eq!(read1(&mut pm, GED_EVENT_OFFSET), 0);
        pm.press_power_button().unwrap();
        assert_eq!(irq.count(), 1);
        assert_eq!(pm.pending_events(), GED_EVENT_POWER_BUTTON);
        // _EVT's read returns the bit and clears it.
        assert_eq!(read1(&mut pm, GED_EVENT_OFFSET), GED_EVENT_POWER_BUTTON);
        assert_eq!(read1(&mut pm, GED_EVENT_OFFSET), 0);
        // Two presses before the guest looks: two interrupts, one pending bit.
        pm.press_power_button().unwrap();
        pm.press_power_button().unwrap();
        assert_eq!(irq.count(), 3);
        assert_eq!(read1(&mut pm, GED_EVENT_OFFSET), GED_EVENT_POWER_BUTTON);
        assert!(
            evt.read().is_err(),
            "the button does not power off by itself"
        );
    }

    #[test]
    fn control_and_reserved_read_zero_and_wide_accesses_are_bytewise() {
        let (mut pm, _, _) = device();
        pm.write(SLEEP_CONTROL_OFFSET, &[SLP_EN | (1 << SLP_TYP_SHIFT)]); // S1: sets WAK_STS
        pm.press_power_button().unwrap();
        let mut all = [0xaa; 4];
        pm.read(0, &mut all);
        assert_eq!(all, [0, WAK_STS, GED_EVENT_POWER_BUTTON, 0]);
        // Reads past the device or at the end of the address space are zero, not a panic.
        let mut far = [0xaa; 4];
        pm.read(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
        // A 16-bit write at offset 0 reaches control and status.
        pm.write(SLEEP_CONTROL_OFFSET, &[0, WAK_STS]);
        assert_eq!(read1(&mut pm, SLEEP_STATUS_OFFSET), 0);
    }
}
