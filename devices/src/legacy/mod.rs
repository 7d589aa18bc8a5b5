//! Legacy PC devices on the port-I/O bus: what a Linux guest expects to find on an x86
//! machine even when everything else is virtio.
//!
//! - [`serial`]: the COM1 UART, the guest's console.
//! - [`i8042`]: the PS/2 controller, probed by Linux and used by it to reboot.
//! - [`boot_timer`]: a Firecracker-compatible "boot complete" marker for boot-time stats.
//! - [`acpi_pm`]: ACPI sleep control/status registers (guest power off) and the Generic
//!   Event Device register behind the power button.

pub mod acpi_pm;
pub mod boot_timer;
pub mod i8042;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use boot_timer::BootTimer;
pub use i8042::I8042;
pub use serial::SerialDevice;
