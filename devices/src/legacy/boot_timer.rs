//! The boot timer: how long the guest took to boot, measured the way Firecracker does.
//!
//! The guest's init writes the byte [`BOOT_COMPLETE_MAGIC`] (123) at offset 0 of this
//! device once it considers boot complete. The device logs `guest boot time: N ms` (since
//! the `start` instant the VMM gave it, normally when it began setting up the VM) and keeps
//! the value for `--stats` and tests. Reads return zeros. Because the write format matches
//! Firecracker's, guest images built for Firecracker's boot-time tests work unchanged.

use std::time::{Duration, Instant};

use crate::BusDevice;

/// The byte the guest writes at offset 0 to say "boot complete".
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// The boot timer device.
pub struct BootTimer {
    start: Instant,
    boot_time: Option<Duration>,
}

impl BootTimer {
    /// A timer measuring from `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            boot_time: None,
        }
    }

    /// The boot time, once the guest has signalled it (the first signal counts).
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_COMPLETE_MAGIC) {
            return;
        }
        let elapsed = self.start.elapsed();
        // Rate-limited: the guest decides how often it writes the magic.
        crate::log_ratelimited!(
            log::Level::Info,
            "guest boot time: {} ms",
            elapsed.as_millis()
        );
        if self.boot_time.is_none() {
            self.boot_time = Some(elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_time_since_start() {
        let start = Instant::now() - Duration::from_millis(250);
        let mut t = BootTimer::new(start);
        assert_eq!(t.boot_time(), None);
        let before = start.elapsed();
        t.write(0, &[BOOT_COMPLETE_MAGIC]);
        let after = start.elapsed();
        let got = t.boot_time().expect("boot time recorded");
        assert!(
            got >= before && got <= after,
            "{got:?} not in [{before:?}, {after:?}]"
        );
        assert!(got >= Duration::from_millis(250));
    }

    #[test]
    fn first_signal_counts() {
        let mut t = BootTimer::new(Instant::now());
        t.write(0, &[BOOT_COMPLETE_MAGIC]);
        let first = t.boot_time().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        t.write(0, &[BOOT_COMPLETE_MAGIC]);
        assert_eq!(t.boot_time(), Some(first));
    }

    #[test]
    fn other_writes_ignored_reads_zero() {
        let mut t = BootTimer::new(Instant::now());
        t.write(0, &[122]);
        t.write(1, &[BOOT_COMPLETE_MAGIC]);
        t.write(0, &[]);
        assert_eq!(t.boot_time(), None);
        let mut buf = [0xffu8; 4];
        t.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn word_write_with_magic_low_byte_counts() {
        // Firecracker's guest writes one byte; a guest writing the value as a 32-bit word
        // (low byte first) is accepted too.
        let mut t = BootTimer::new(Instant::now());
        t.write(0, &u32::from(BOOT_COMPLETE_MAGIC).to_le_bytes());
        assert!(t.boot_time().is_some());
    }
}
