//! Device models for minivmm. Devices know nothing of KVM or of the `vmm` crate: a device
//! sees register offsets and data through [`BusDevice`], and raises its interrupt line
//! through [`Interrupt`]. The VMM decides where a device lives and wires the line to an
//! irqfd; tests wire it to a counter.
#![deny(missing_docs)]

use std::io;

/// The text of a caught panic's payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// A device on the port-I/O or MMIO bus. The bus has already subtracted the device's base
/// address: `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`. Fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An interrupt line a device can raise (edge: one call, one interrupt).
pub trait Interrupt: Send + Sync {
    /// Raise the interrupt.
    fn trigger(&self) -> io::Result<()>;
}

/// An [`Interrupt`] backed by an eventfd, which the VMM registers with KVM as an irqfd.
pub struct EventFdInterrupt(pub vmm_sys_util::eventfd::EventFd);

impl Interrupt for EventFdInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

pub mod legacy;
pub mod rate_limiter;
pub mod ratelimit;
#[cfg(test)]
pub(crate) mod test_util;
pub mod virtio;
