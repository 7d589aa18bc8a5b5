//! The port-I/O and MMIO buses: which device answers a guest access at an address.
//!
//! When the guest touches an I/O port or an MMIO address that KVM does not handle itself,
//! the vCPU thread gets a `KVM_EXIT_IO` or `KVM_EXIT_MMIO` and asks the bus. The bus finds
//! the range, subtracts its base and hands the device an offset: devices never see absolute
//! addresses, so the same device model can sit anywhere. Accesses nobody claims read as all
//! ones (like a floating bus on real hardware), writes to them are dropped; both are counted
//! and logged at debug level.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::BusDevice;

/// A device shared between the bus (vCPU threads) and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a range could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// Zero length or base + len overflows.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// Base of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
}

struct Range {
    len: u64,
    device: SharedDevice,
}

/// One address space (port I/O or MMIO).
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
    unclaimed_reads: AtomicU64,
    unclaimed_writes: AtomicU64,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        // The range starting at or before the new end must end at or before the new base.
        if let Some((&b, r)) = self.ranges.range(..end).next_back() {
            if b + r.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        // An empty access touches nothing (and at a range's end it would hand the device
        // an offset outside it: found by fuzz/fuzz_targets/bus.rs).
        if size == 0 {
            return None;
        }
        let (&base, r) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        let end = offset.checked_add(size as u64)?;
        (end <= r.len).then_some((&r.device, offset))
    }

    /// Serve a guest read. Returns false when no device claims the address (the data is
    /// then all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unclaimed_reads.fetch_add(1, Ordering::Relaxed);
                log::debug!("unclaimed read of {} bytes at {addr:#x}", data.len());
                false
            }
        }
    }

    /// Serve a guest write. Returns false when no device claims the address (the write is
    /// dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => {
                self.unclaimed_writes.fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "unclaimed write of {} bytes at {addr:#x}: {data:02x?}",
                    data.len()
                );
                false
            }
        }
    }

    /// How many reads and writes no device claimed.
    pub fn unclaimed(&self) -> (u64, u64) {
        (
            self.unclaimed_reads.load(Ordering::Relaxed),
            self.unclaimed_writes.load(Ordering::Relaxed),
        )
    }
}

/// Lock a device, carrying on if a previous holder panicked: device state is plain data,
/// and a VMM that stops serving its bus would hang the guest.
pub fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access, returns the offset as data.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_offset() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Probe::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(a.lock().unwrap().writes, vec![(0, vec![0x41])]);
        assert_eq!(bus.unclaimed(), (0, 0));
    }

    #[test]
    fn unclaimed_reads_all_ones() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x1000, 0x10)
            .unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0x2000, &mut d));
        assert_eq!(d, [0xff; 4]);
        // Straddling the end of a device is not claimed either.
        assert!(!bus.read(0x100e, &mut d));
        assert!(!bus.write(0xfff, &[1, 2]));
        assert_eq!(bus.unclaimed(), (2, 1));
        // An empty access just past a device's end reaches no device (fuzzing found it
        // handed the device an offset equal to its length).
        assert!(!bus.write(0x1010, &[]));
        assert!(!bus.read(0x1000, &mut []));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Probe::default()));
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x0, 0x1000),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(dev(), 0x110, 0x10).unwrap();
        bus.insert(dev(), 0xf0, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x200, 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
    }
}
