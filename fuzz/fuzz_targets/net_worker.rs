//! Fuzz the virtio-net device's data path: TX chains the guest offers (headers, frames
//! split across any buffers, chains that loop or point outside memory) and RX delivery of
//! the frames the host sends (with and without MRG_RXBUF and checksum offload), into
//! rings the fuzzer lays out in guest memory, under an optional rate limit.
//!
//! Besides "no panic" and "no hang", it checks the counters: every TX frame is either sent
//! or dropped, no more frames reach the host than the guest offered chains, and no more
//! frames are delivered than the host sent.

#![no_main]

mod common;

use std::sync::Arc;

use common::{FakeTap, NoIrq};
use devices::rate_limiter::RateLimit;
use devices::virtio::net::fuzz_process;
use devices::virtio::worker::ActiveQueues;
use devices::virtio::{GuestMemoryMmap, VirtioInterrupt};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x10000;

#[derive(Arbitrary, Debug)]
struct Ring {
    size_log2: u8,
    desc: u16,
    avail: u16,
    used: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    features: u64,
    rx: Ring,
    tx: Ring,
    /// Guest memory contents (rings, descriptors, buffers), repeated to fill it.
    memory: Vec<u8>,
    /// Frames the host sends (capped in number and size).
    frames: Vec<Vec<u8>>,
    limit_bytes: Option<u16>,
}

fn queue(r: &Ring) -> Queue {
    let size = 1u16 << (r.size_log2 % 9);
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    // Aligned as the transport requires: 16 (descriptors), 2 (avail), 4 (used).
    q.set_desc_table_address(Some(u32::from(r.desc) & !15), Some(0));
    q.set_avail_ring_address(Some(u32::from(r.avail) & !1), Some(0));
    q.set_used_ring_address(Some(u32::from(r.used) & !3), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    if !input.memory.is_empty() {
        let fill: Vec<u8> = input.memory.iter().cycle().take(MEM).copied().collect();
        mem.write_slice(&fill, GuestAddress(0)).unwrap();
    }
    let (rx, tx) = (queue(&input.rx), queue(&input.tx));
    if !rx.is_valid(&mem) || !tx.is_valid(&mem) {
        // The transport refuses to activate such queues.
        return;
    }
    let tap = Arc::new(FakeTap::default());
    let host_frames = input.frames.len().min(64);
    for f in input.frames.iter().take(64) {
        tap.incoming
            .lock()
            .unwrap()
            .push_back(f[..f.len().min(70_000)].to_vec());
    }
    let queues = ActiveQueues {
        mem,
        acked_features: input.features,
        queues: vec![rx, tx],
        interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoIrq))),
    };
    let limit = RateLimit {
        bytes_per_sec: input.limit_bytes.map(|b| u64::from(b) + 1),
        ops_per_sec: None,
    };
    let stats = fuzz_process(queues, tap.clone(), limit);
    let sent = *tap.sent.lock().unwrap() as u64;
    assert!(stats.tx_frames <= sent);
    assert!(stats.rx_frames + stats.rx_dropped <= host_frames as u64 + 1);
});
