//! The device manager: creates the devices, gives each an address and an interrupt line,
//! and wires them to KVM.
//!
//! - Legacy devices sit at their PC addresses on the port-I/O bus: COM1 at 0x3f8 (IRQ 4),
//!   the i8042 at 0x60/0x64. The boot timer sits at the start of the MMIO hole.
//! - Each virtio-mmio device gets the next 4 KiB window above the boot timer and the next
//!   free IRQ line; the ACPI DSDT (or, with `--no-acpi`, a `virtio_mmio.device=4K@ADDR:IRQ`
//!   entry on the kernel command line) tells Linux where it is.
//! - Interrupts are irqfds: a device writes an eventfd, KVM injects the interrupt into the
//!   in-kernel IOAPIC without a trip through the VMM. Queue notifications are ioeventfds:
//!   the guest's write to `QueueNotify` signals an eventfd inside KVM, so it costs no
//!   userspace exit at all.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arch::layout;
use devices::legacy::{AcpiPm, BootTimer, SerialDevice, I8042};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::worker::Control;
use devices::virtio::{GuestMemoryMmap, VirtioDevice, VirtioInterrupt};
use devices::{EventFdInterrupt, Interrupt};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::{Bus, BusError};

/// Why a device could not be added.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Creating an eventfd failed.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an irqfd.
    #[error("registering irqfd for IRQ {irq}: {source}")]
    Irqfd {
        /// The IRQ line.
        irq: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused an ioeventfd.
    #[error("registering ioeventfd at {addr:#x}: {source}")]
    Ioeventfd {
        /// The notify register address.
        addr: u64,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// No address window or IRQ line is left.
    #[error("too many devices: no {0} left")]
    Exhausted(&'static str),
    /// The bus refused the range.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A device's saved state cannot be used.
    #[error("restoring device state: {0}")]
    Snapshot(String),
    /// The transport could not be created.
    #[error("creating the virtio-mmio transport: {0}")]
    Transport(#[source] std::io::Error),
}

// The transport's register window is the window the layout (and so the ACPI DSDT) gives
// each device.
const _: () = assert!(devices::virtio::mmio::MMIO_SIZE == layout::VIRTIO_MMIO_SIZE);

// Every virtio-mmio window stays below the IOAPIC.
const _: () = assert!(
    layout::VIRTIO_MMIO_START + layout::VIRTIO_MMIO_MAX_DEVICES * layout::VIRTIO_MMIO_SIZE
        <= layout::IOAPIC_START
);

// The ACPI tables (arch) and the PM device (devices) must agree on the registers; devices
// cannot depend on arch, so the values are checked here, where both are visible.
const _: () = {
    use devices::legacy::acpi_pm;
    assert!(arch::acpi::S5_SLEEP_TYPE == acpi_pm::S5_SLEEP_TYPE);
    assert!(arch::acpi::GED_EVENT_POWER_BUTTON == acpi_pm::GED_EVENT_POWER_BUTTON);
    assert!(
        arch::acpi::GED_EVENT_PORT as u64
            == layout::ACPI_PM_PORT as u64 + acpi_pm::GED_EVENT_OFFSET
    );
    assert!(
        arch::acpi::SLEEP_CONTROL_PORT as u64
            == layout::ACPI_PM_PORT as u64 + acpi_pm::SLEEP_CONTROL_OFFSET
    );
    assert!(layout::ACPI_PM_PORT_SIZE == acpi_pm::PORT_COUNT);
};

/// Where a virtio-mmio device lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base address of its 4 KiB register window.
    pub base: u64,
    /// Its IRQ line (GSI).
    pub irq: u32,
}

/// Hands out virtio-mmio windows and IRQ lines from the layout constants.
#[derive(Debug)]
pub struct SlotAllocator {
    next_index: u64,
    next_irq: u32,
}

impl Default for SlotAllocator {
    fn default() -> Self {
        Self {
            next_index: 0,
            next_irq: layout::VIRTIO_IRQ_START,
        }
    }
}

impl SlotAllocator {
    /// The next free window and line.
    pub fn allocate(&mut self) -> Result<MmioSlot, DeviceError> {
        if self.next_index >= layout::VIRTIO_MMIO_MAX_DEVICES {
            return Err(DeviceError::Exhausted("virtio-mmio window"));
        }
        if self.next_irq > layout::VIRTIO_IRQ_END {
            return Err(DeviceError::Exhausted("IRQ line"));
        }
        let slot = MmioSlot {
            base: layout::VIRTIO_MMIO_START + self.next_index * layout::VIRTIO_MMIO_SIZE,
            irq: self.next_irq,
        };
        self.next_index += 1;
        self.next_irq += 1;
        Ok(slot)
    }
}

/// One virtio device as the rest of the VMM sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioDeviceInfo {
    /// `eth0`, `vda`, `rng0`, ...: what the guest will call it.
    pub name: String,
    /// The virtio device ID (1 net, 2 block, 4 entropy).
    pub device_type: u32,
    /// Its register window and IRQ line.
    pub slot: MmioSlot,
}

struct VirtioEntry {
    info: VirtioDeviceInfo,
    transport: Arc<Mutex<MmioTransport>>,
    worker: Option<Arc<Control>>,
}

/// All devices of a VM and the buses they sit on.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    reset_evt: EventFd,
    poweroff_evt: EventFd,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    i8042: Arc<Mutex<I8042>>,
    boot_timer: Arc<Mutex<BootTimer>>,
    slots: SlotAllocator,
    virtio: Vec<VirtioEntry>,
}

/// The events devices raise that end the VM, and the devices the VMM thread drives.
pub struct DeviceHandles {
    /// COM1, for console input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Signalled by the i8042 when the guest asks for a CPU reset.
    pub reset_evt: EventFd,
    /// Signalled by the ACPI PM device when the guest enters S5 (power off).
    pub poweroff_evt: EventFd,
    /// The ACPI power-management device, to press the power button.
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    /// The i8042, for snapshots.
    pub i8042: Arc<Mutex<I8042>>,
    /// The boot timer, for the boot time.
    pub boot_timer: Arc<Mutex<BootTimer>>,
    /// The virtio devices' workers, to pause and resume.
    pub workers: Vec<Arc<Control>>,
    /// The virtio devices, for their counters.
    pub virtio: Vec<(VirtioDeviceInfo, Arc<Mutex<MmioTransport>>)>,
    /// COM1's output thread, told when the VM ends (set by the builder).
    pub console: Option<Arc<crate::console_out::ConsoleDrain>>,
}

fn irq_line(vm: &VmFd, irq: u32) -> Result<Arc<dyn Interrupt>, DeviceError> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&evt, irq)
        .map_err(|source| DeviceError::Irqfd { irq, source })?;
    Ok(Arc::new(EventFdInterrupt(evt)))
}

impl DeviceManager {
    /// Create the legacy devices: COM1 writing to `serial_out` (in the state `serial_state`
    /// describes, for a restored VM), the i8042, the boot timer.
    pub fn new(
        vm: &VmFd,
        serial_out: Box<dyn std::io::Write + Send>,
        start: Instant,
        serial_state: Option<&devices::legacy::serial::SerialSnapshot>,
    ) -> Result<Self, DeviceError> {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();

        let line = irq_line(vm, layout::COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(match serial_state {
            Some(s) => SerialDevice::restore(line, serial_out, s).map_err(DeviceError::Snapshot)?,
            None => SerialDevice::new(line, serial_out),
        }));
        pio.insert(serial.clone(), layout::COM1_PORT.into(), 8)?;

        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(
            reset_evt.try_clone().map_err(DeviceError::EventFd)?,
        )));
        pio.insert(i8042.clone(), layout::I8042_PORT.into(), 5)?;

        // ACPI sleep control/status and GED registers. Harmless without ACPI: nothing
        // tells the guest it is there.
        let poweroff_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(
            poweroff_evt.try_clone().map_err(DeviceError::EventFd)?,
            irq_line(vm, layout::ACPI_GED_IRQ)?,
        )));
        pio.insert(
            acpi_pm.clone(),
            layout::ACPI_PM_PORT.into(),
            layout::ACPI_PM_PORT_SIZE,
        )?;

        let boot_timer = Arc::new(Mutex::new(BootTimer::new(start)));
        mmio.insert(
            boot_timer.clone(),
            layout::BOOT_TIMER_START,
            layout::BOOT_TIMER_SIZE,
        )?;

        Ok(Self {
            pio,
            mmio,
            serial,
            reset_evt,
            poweroff_evt,
            acpi_pm,
            i8042,
            boot_timer,
            slots: SlotAllocator::default(),
            virtio: Vec::new(),
        })
    }

    /// Put a virtio device, which the guest will call `name`, behind a new virtio-mmio
    /// transport: allocate its window and IRQ, wire the irqfd and one ioeventfd per queue.
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        name: String,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioSlot, DeviceError> {
        let slot = self.slots.allocate()?;
        let interrupt = Arc::new(VirtioInterrupt::new(irq_line(vm, slot.irq)?));
        let device_type = device.device_type();
        let worker = device.worker();
        let transport =
            MmioTransport::new(mem.clone(), device, interrupt).map_err(DeviceError::Transport)?;
        let notify = slot.base + devices::virtio::mmio::QUEUE_NOTIFY_OFFSET;
        for (index, evt) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), index as u32)
                .map_err(|source| DeviceError::Ioeventfd {
                    addr: notify,
                    source,
                })?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(
            transport.clone(),
            slot.base,
            devices::virtio::mmio::MMIO_SIZE,
        )?;
        self.virtio.push(VirtioEntry {
            info: VirtioDeviceInfo {
                name,
                device_type,
                slot,
            },
            transport,
            worker,
        });
        Ok(slot)
    }

    /// Where each virtio device lives, in the order they were added.
    pub fn virtio_slots(&self) -> Vec<MmioSlot> {
        self.virtio.iter().map(|v| v.info.slot).collect()
    }

    /// `virtio_mmio.device=4K@ADDR:IRQ`, one per virtio device: how a kernel without ACPI
    /// finds them.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.virtio
            .iter()
            .map(|v| {
                format!(
                    "virtio_mmio.device=4K@{:#x}:{}",
                    v.info.slot.base, v.info.slot.irq
                )
            })
            .collect()
    }

    /// Hand everything over: the two buses (to the vCPUs) and the handles the VMM thread
    /// keeps.
    pub fn finish(self) -> (Bus, Bus, DeviceHandles) {
        let handles = DeviceHandles {
            serial: self.serial,
            reset_evt: self.reset_evt,
            poweroff_evt: self.poweroff_evt,
            acpi_pm: self.acpi_pm,
            i8042: self.i8042,
            boot_timer: self.boot_timer,
            workers: self
                .virtio
                .iter()
                .filter_map(|v| v.worker.clone())
                .collect(),
            virtio: self
                .virtio
                .into_iter()
                .map(|v| (v.info, v.transport))
                .collect(),
            console: None,
        };
        (self.pio, self.mmio, handles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_hands_out_windows_and_irqs_in_order() {
        let mut a = SlotAllocator::default();
        let s0 = a.allocate().unwrap();
        let s1 = a.allocate().unwrap();
        assert_eq!(s0.base, layout::VIRTIO_MMIO_START);
        assert_eq!(s0.irq, layout::VIRTIO_IRQ_START);
        assert_eq!(
            s1.base,
            layout::VIRTIO_MMIO_START + layout::VIRTIO_MMIO_SIZE
        );
        assert_eq!(s1.irq, layout::VIRTIO_IRQ_START + 1);
    }

    #[test]
    fn allocator_runs_out_of_irqs() {
        let mut a = SlotAllocator::default();
        let lines = layout::VIRTIO_IRQ_END - layout::VIRTIO_IRQ_START + 1;
        for _ in 0..lines {
            a.allocate().unwrap();
        }
        assert!(matches!(
            a.allocate(),
            Err(DeviceError::Exhausted("IRQ line"))
        ));
    }
}
