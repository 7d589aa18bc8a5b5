//! Fuzz the bus that routes port I/O and MMIO exits to devices.
//!
//! The input inserts devices at arbitrary ranges (overlapping, empty and wrapping ones
//! must be refused) and then reads and writes anywhere. Each device records the offsets it
//! sees: the bus must hand a device only offsets inside its own range, and must claim an
//! access exactly when some inserted range holds all of it.

#![no_main]

use std::sync::{Arc, Mutex};

use devices::BusDevice;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmm::bus::Bus;

struct Recorder {
    len: u64,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        assert!(
            offset < self.len,
            "offset {offset} outside a {}-byte device",
            self.len
        );
        data.fill(0xab);
    }
    fn write(&mut self, offset: u64, _data: &[u8]) {
        assert!(
            offset < self.len,
            "offset {offset} outside a {}-byte device",
            self.len
        );
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    ranges: Vec<(u64, u64)>,
    accesses: Vec<(u64, u8, bool)>,
}

fuzz_target!(|input: Input| {
    let mut bus = Bus::new();
    let mut inserted: Vec<(u64, u64)> = Vec::new();
    for &(base, len) in input.ranges.iter().take(32) {
        // Small lengths most of the time, so that accesses hit devices.
        let len = if len % 4 == 0 { len } else { len % 0x1000 };
        let dev = Arc::new(Mutex::new(Recorder { len }));
        let ok = bus.insert(dev, base, len).is_ok();
        let valid = len > 0
            && base.checked_add(len).is_some()
            && inserted
                .iter()
                .all(|&(b, l)| base + len <= b || b + l <= base);
        assert_eq!(ok, valid, "insert({base:#x}, {len:#x}) among {inserted:x?}");
        if ok {
            inserted.push((base, len));
        }
    }
    for &(addr, width, write) in input.accesses.iter().take(256) {
        let mut data = vec![0u8; usize::from(width % 9)];
        let claimed = if write {
            bus.write(addr, &data)
        } else {
            bus.read(addr, &mut data)
        };
        // Claimed exactly when one device's range holds the whole (non-empty) access.
        let size = data.len() as u64;
        let inside = size > 0
            && inserted
                .iter()
                .any(|&(b, l)| addr >= b && addr - b < l && addr - b + size <= l);
        assert_eq!(claimed, inside, "access at {addr:#x} among {inserted:x?}");
    }
});
