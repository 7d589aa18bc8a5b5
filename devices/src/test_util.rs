//! Test scaffolding shared by the device tests: an interrupt line that counts, the driver's
//! side of a split virtqueue written straight into guest memory, and waiting for a worker
//! thread.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::GuestMemoryMmap;
use crate::Interrupt;

/// An interrupt line that counts how often it was raised.
#[derive(Default)]
pub struct CountingInterrupt(AtomicUsize);

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl CountingInterrupt {
    /// How many times it was raised.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// The driver's side of a split virtqueue of `size` entries at `base` in guest memory.
#[derive(Clone, Copy)]
pub struct DriverQueue {
    /// Descriptor table address.
    pub desc: u64,
    /// Available (driver) ring address.
    pub avail: u64,
    /// Used (device) ring address.
    pub used: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl DriverQueue {
    /// A queue whose three parts follow each other from `base`.
    pub fn new(base: u64, size: u16) -> Self {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        DriverQueue {
            desc: base,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device's view, as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Publish a chain of (address, length, device-writable) buffers; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            let next = (idx + 1) % self.size;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let at = self.desc + 16 * u64::from(idx);
            mem.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
            mem.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
            mem.write_obj(next.to_le(), GuestAddress(at + 14)).unwrap();
            self.next_desc = next;
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    /// (head, length) of used entry `i`.
    pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }
}

/// Wait up to 10 s for `cond` (another thread's work); whether it came true.
pub fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}
