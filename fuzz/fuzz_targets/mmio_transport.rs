//! Fuzz the virtio-mmio transport's register interface.
//!
//! The input is a sequence of operations a guest (or a device worker) can perform: reads
//! and writes of any width at register offsets (known ones and raw ones), writes to guest
//! RAM (the rings' contents), a few "driver macros" that take the transport deep into its
//! state machine quickly (negotiate, set up a queue), interrupts raised by the device, and
//! a step of a dummy device that walks every queue it was given.
//!
//! Besides "no panic", the target checks invariants after every operation: the status
//! bits only appear in spec order, an activated device holds a context whose ready queues
//! lie inside guest memory and whose features were offered, and a reset stops the device.

#![no_main]

use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use devices::virtio::{
    ActivateContext, ActivateError, GuestMemoryMmap, VirtioDevice, VirtioInterrupt,
};
use devices::{BusDevice, Interrupt};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

/// Offered by the dummy device: VERSION_1, EVENT_IDX, RING_PACKED (masked by the
/// transport), a device bit and a high bit.
const FEATURES: u64 = (1 << 32) | (1 << 29) | (1 << 34) | (1 << 3) | (1 << 40);

/// Known register offsets, so most operations hit a real register.
const REGS: [u64; 28] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0c0, 0x0fc,
    0x100, 0x104,
];

#[derive(Arbitrary, Debug)]
enum Offset {
    Known(u8),
    Raw(u16),
}

impl Offset {
    fn get(&self) -> u64 {
        match self {
            Offset::Known(i) => REGS[usize::from(*i) % REGS.len()],
            Offset::Raw(o) => u64::from(*o),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Width {
    One,
    Two,
    Four,
    Eight,
}

impl Width {
    fn len(&self) -> usize {
        match self {
            Width::One => 1,
            Width::Two => 2,
            Width::Four => 4,
            Width::Eight => 8,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum QueueSize {
    /// 1 << (n % 16): a power of two, often a valid size.
    Pow2(u8),
    Raw(u16),
}

impl QueueSize {
    fn get(&self) -> u32 {
        match self {
            QueueSize::Pow2(n) => 1 << (n % 16),
            QueueSize::Raw(n) => u32::from(*n),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        at: Offset,
        width: Width,
    },
    Write {
        at: Offset,
        width: Width,
        value: u64,
    },
    /// A 32-bit register write with a value likely to be meaningful.
    WriteSmall {
        at: Offset,
        value: u16,
    },
    /// The guest writes its RAM.
    Memory {
        addr: u32,
        bytes: [u8; 8],
    },
    /// Reset, ACKNOWLEDGE, DRIVER, ack `features`, FEATURES_OK. With `honest`, the
    /// features are cut down to the offered ones plus VERSION_1, as a real driver does.
    Negotiate {
        features: u64,
        honest: bool,
    },
    /// Configure queue `index` and set it ready.
    SetupQueue {
        index: u8,
        size: QueueSize,
        desc: u16,
        driver: u16,
        device: u16,
    },
    /// Set DRIVER_OK.
    DriverOk,
    SignalUsed,
    SignalConfig,
    /// The driver writes descriptor `index` of an active queue's table.
    Descriptor {
        queue: u8,
        index: u16,
        addr: u32,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// The driver makes `count` (up to 4) chains available on an active queue.
    Publish {
        queue: u8,
        heads: [u16; 4],
        count: u8,
    },
    /// The dummy device processes its queues.
    RunDevice,
}

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

type Shared = Arc<Mutex<Option<ActivateContext>>>;

struct Dummy {
    active: Shared,
    sizes: [u16; 2],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        assert_eq!(ctx.acked_features & !FEATURES, 0, "unoffered feature acked");
        assert_eq!(ctx.acked_features & (1 << 34), 0, "packed ring acked");
        assert_ne!(ctx.acked_features & (1 << 32), 0, "VERSION_1 missing");
        assert_eq!(ctx.queues.len(), 2);
        assert_eq!(ctx.queue_events.len(), 2);
        for q in ctx.queues.iter().filter(|q| q.ready()) {
            assert!(
                q.is_valid(&ctx.mem),
                "transport handed over an invalid queue"
            );
        }
        let mut active = self.active.lock().unwrap();
        assert!(active.is_none(), "activated twice without reset");
        *active = Some(ctx);
        Ok(())
    }
    fn reset(&mut self) {
        *self.active.lock().unwrap() = None;
    }
}

fn wr32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// A dummy device step: walk every ready queue and complete what it finds.
fn run_device(active: &Shared) {
    let mut guard = active.lock().unwrap();
    let Some(ctx) = guard.as_mut() else {
        return;
    };
    let mem = ctx.mem.clone();
    for q in ctx.queues.iter_mut().filter(|q| q.ready()) {
        for _ in 0..16 {
            let Some(chain) = q.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let mut total = 0u32;
            for desc in chain.take(32) {
                let len = (desc.len() as usize).min(256);
                let mut buf = vec![0u8; len];
                if mem.read_slice(&mut buf, desc.addr()).is_ok() {
                    total = total.saturating_add(len as u32);
                }
            }
            let _ = q.add_used(&mem, head, total);
        }
        let _ = q.needs_notification(&mem);
    }
}

/// The ring addresses of active queue `queue % 2` (the driver knows them: it chose them).
fn active_rings(active: &Shared, queue: u8) -> Option<(u64, u64, u16)> {
    let guard = active.lock().unwrap();
    let q = guard.as_ref()?.queues.get(usize::from(queue % 2))?;
    q.ready()
        .then(|| (q.desc_table(), q.avail_ring(), q.size()))
}

fn write_descriptor(mem: &GuestMemoryMmap, active: &Shared, op: &Op) {
    let Op::Descriptor {
        queue,
        index,
        addr,
        len,
        flags,
        next,
    } = op
    else {
        return;
    };
    let Some((desc, _, size)) = active_rings(active, *queue) else {
        return;
    };
    let at = desc + u64::from(index % size) * 16;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&u64::from(*addr).to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    let _ = mem.write_slice(&raw, GuestAddress(at));
}

fn publish(mem: &GuestMemoryMmap, active: &Shared, queue: u8, heads: &[u16; 4], count: u8) {
    let Some((_, avail, size)) = active_rings(active, queue) else {
        return;
    };
    let Ok(idx) = mem.read_obj::<u16>(GuestAddress(avail + 2)) else {
        return;
    };
    let mut idx = idx;
    for head in heads.iter().take(usize::from(count % 5)) {
        let slot = avail + 4 + u64::from(idx % size) * 2;
        let _ = mem.write_obj(*head, GuestAddress(slot));
        idx = idx.wrapping_add(1);
    }
    let _ = mem.write_obj(idx, GuestAddress(avail + 2));
}

fn check_invariants(t: &MmioTransport, active: &Shared) {
    let s = t.status();
    if s & STATUS_DRIVER_OK != 0 {
        assert_ne!(
            s & STATUS_FEATURES_OK,
            0,
            "DRIVER_OK without FEATURES_OK: {s:#x}"
        );
    }
    if s & STATUS_FEATURES_OK != 0 {
        assert_eq!(
            s & (STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            3,
            "bad status {s:#x}"
        );
    }
    if t.is_activated() {
        assert!(
            active.lock().unwrap().is_some(),
            "activated without a context"
        );
    }
    if s == 0 {
        assert!(
            active.lock().unwrap().is_none(),
            "reset did not stop the device"
        );
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x8000),
        (GuestAddress(0x1_0000), 0x8000),
    ])
    .unwrap();
    let active: Shared = Arc::default();
    let dev = Dummy {
        active: active.clone(),
        sizes: [256, 8],
    };
    let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(NoIrq)));
    let mut t = MmioTransport::new(mem.clone(), Box::new(dev), interrupt.clone()).unwrap();

    for op in ops.iter().take(512) {
        match op {
            Op::Read { at, width } => {
                let mut buf = [0u8; 8];
                t.read(at.get(), &mut buf[..width.len()]);
            }
            Op::Write { at, width, value } => {
                t.write(at.get(), &value.to_le_bytes()[..width.len()]);
            }
            Op::WriteSmall { at, value } => wr32(&mut t, at.get(), u32::from(*value)),
            Op::Memory { addr, bytes } => {
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(*addr) % 0x2_0000));
            }
            Op::Negotiate { features, honest } => {
                let features = if *honest {
                    (features & FEATURES) | (1 << 32)
                } else {
                    *features
                };
                wr32(&mut t, 0x70, 0);
                wr32(&mut t, 0x70, 1);
                wr32(&mut t, 0x70, 3);
                wr32(&mut t, 0x24, 0);
                wr32(&mut t, 0x20, features as u32);
                wr32(&mut t, 0x24, 1);
                wr32(&mut t, 0x20, (features >> 32) as u32);
                wr32(&mut t, 0x70, 11);
            }
            Op::SetupQueue {
                index,
                size,
                desc,
                driver,
                device,
            } => {
                wr32(&mut t, 0x30, u32::from(*index % 3));
                wr32(&mut t, 0x38, size.get());
                for (lo, hi, a) in [
                    (0x80, 0x84, desc),
                    (0x90, 0x94, driver),
                    (0xa0, 0xa4, device),
                ] {
                    wr32(&mut t, lo, u32::from(*a) * 2);
                    wr32(&mut t, hi, 0);
                }
                wr32(&mut t, 0x44, 1);
            }
            Op::DriverOk => {
                let status = t.status() | STATUS_DRIVER_OK;
                wr32(&mut t, 0x70, status);
            }
            Op::SignalUsed => interrupt.signal_used_queue(),
            Op::SignalConfig => interrupt.signal_config_change(),
            Op::Descriptor { .. } => write_descriptor(&mem, &active, op),
            Op::Publish {
                queue,
                heads,
                count,
            } => publish(&mem, &active, *queue, heads, *count),
            Op::RunDevice => run_device(&active),
        }
        check_invariants(&t, &active);
    }
});
