//! Fuzz the real devices behind the virtio-mmio transport, with their worker threads:
//! virtio-blk on a scratch image, virtio-net on an in-memory "tap", virtio-rng. The guest
//! negotiates, sets up queues anywhere, writes guest RAM (descriptors, rings, requests),
//! notifies, resets and starts over, in any order; the workers serve the queues meanwhile.
//!
//! Besides "no panic" (on the fuzzing thread or a worker: libFuzzer's panic hook aborts
//! either way), every input must finish: a reset waits for nothing, and the workers are
//! joined when the devices are dropped at the end. The device is paused and resumed too,
//! as the VMM does, and each pause must be acknowledged.

#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{FakeTap, NoIrq};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{MmioTransport, STATUS_DRIVER_OK};
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::{GuestMemoryMmap, VirtioDevice, VirtioInterrupt};
use devices::BusDevice;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x2_0000;

fn image() -> PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("minivmm-fuzz-real-{}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; 64 << 10]).unwrap();
        p
    })
    .clone()
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Block,
    Net,
    Rng,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Reset, ACKNOWLEDGE, DRIVER, the features, FEATURES_OK.
    Negotiate {
        features: u64,
    },
    SetupQueue {
        index: u8,
        size_log2: u8,
        desc: u16,
        driver: u16,
        device: u16,
    },
    DriverOk,
    Notify {
        queue: u8,
    },
    /// The guest writes its RAM (descriptors, rings, request headers).
    Memory {
        addr: u16,
        bytes: [u8; 16],
    },
    Reset,
    PauseResume,
    /// Any register, any value.
    Write {
        offset: u16,
        value: u32,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    kind: Kind,
    ops: Vec<Op>,
}

fn wr32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let device: Box<dyn VirtioDevice> = match input.kind {
        Kind::Block => Box::new(
            Block::new(BlockConfig {
                path: image(),
                read_only: false,
                serial: None,
                limit: Default::default(),
            })
            .unwrap(),
        ),
        Kind::Net => {
            let frames = (0..4).map(|i| vec![i as u8; 60 + 12]).collect();
            {
                let tap = FakeTap::default();
                *tap.incoming.lock().unwrap() = frames;
                Box::new(Net::with_backend(Arc::new(tap), [2, 0, 0, 0, 0, 1]).unwrap())
            }
        }
        Kind::Rng => Box::new(Rng::new(std::path::Path::new("/dev/urandom")).unwrap()),
    };
    let control = device.worker();
    let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(NoIrq)));
    let mut t = MmioTransport::new(mem.clone(), device, interrupt).unwrap();
    for op in input.ops.iter().take(64) {
        match op {
            Op::Negotiate { features } => {
                wr32(&mut t, 0x70, 0);
                wr32(&mut t, 0x70, 1);
                wr32(&mut t, 0x70, 3);
                wr32(&mut t, 0x24, 0);
                wr32(&mut t, 0x20, *features as u32);
                wr32(&mut t, 0x24, 1);
                wr32(&mut t, 0x20, ((features >> 32) as u32) | 1);
                wr32(&mut t, 0x70, 11);
            }
            Op::SetupQueue {
                index,
                size_log2,
                desc,
                driver,
                device,
            } => {
                wr32(&mut t, 0x30, u32::from(*index % 2));
                wr32(&mut t, 0x38, 1 << (size_log2 % 9));
                for (lo, hi, a) in [
                    (0x80, 0x84, desc),
                    (0x90, 0x94, driver),
                    (0xa0, 0xa4, device),
                ] {
                    wr32(&mut t, lo, u32::from(*a) & !15);
                    wr32(&mut t, hi, 0);
                }
                wr32(&mut t, 0x44, 1);
            }
            Op::DriverOk => {
                let status = t.status() | STATUS_DRIVER_OK;
                wr32(&mut t, 0x70, status);
            }
            Op::Notify { queue } => wr32(&mut t, 0x50, u32::from(*queue % 2)),
            Op::Memory { addr, bytes } => {
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(*addr)));
            }
            Op::Reset => wr32(&mut t, 0x70, 0),
            Op::PauseResume => {
                if let Some(c) = &control {
                    assert!(
                        c.pause(Duration::from_secs(10)).unwrap(),
                        "a worker did not park"
                    );
                    c.resume().unwrap();
                }
            }
            Op::Write { offset, value } => wr32(&mut t, u64::from(*offset) & 0x1fc, *value),
        }
    }
    // Dropping the transport drops the device: its worker is stopped and joined.
    drop(t);
});
