//! Fuzz the legacy devices a guest reaches through port I/O and MMIO: the serial port
//! (COM1), the i8042 controller, the ACPI power-management block and the boot timer.
//!
//! The input is a sequence of reads and writes of any width (including empty and oversized
//! accesses) at any offset, as a guest's `in`/`out` and MMIO instructions produce them.
//! Besides "no panic", it checks that the serial output never exceeds what the guest wrote
//! to the transmit register, and that reads fill exactly the bytes asked for.

#![no_main]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::NoIrq;
use devices::legacy::{AcpiPm, BootTimer, SerialDevice, I8042};
use devices::BusDevice;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
enum Target {
    Serial,
    I8042,
    AcpiPm,
    BootTimer,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        target: Target,
        offset: u16,
        len: u8,
    },
    Write {
        target: Target,
        offset: u16,
        data: Vec<u8>,
    },
}

fuzz_target!(|ops: Vec<Op>| {
    let out = Sink::default();
    let mut serial = SerialDevice::new(Arc::new(NoIrq), Box::new(out.clone()));
    let reset = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut i8042 = I8042::new(reset.try_clone().unwrap());
    let poweroff = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut pm = AcpiPm::new(poweroff.try_clone().unwrap(), Arc::new(NoIrq));
    let mut timer = BootTimer::new(Instant::now());
    let mut sent_max = 0usize;
    for op in ops.iter().take(512) {
        let dev: &mut dyn BusDevice = match op {
            Op::Read { target, .. } | Op::Write { target, .. } => match target {
                Target::Serial => &mut serial,
                Target::I8042 => &mut i8042,
                Target::AcpiPm => &mut pm,
                Target::BootTimer => &mut timer,
            },
        };
        match op {
            Op::Read { offset, len, .. } => {
                let mut buf = vec![0xeeu8; usize::from(*len % 16)];
                dev.read(u64::from(*offset), &mut buf);
                assert_eq!(buf.len(), usize::from(*len % 16));
            }
            Op::Write {
                offset,
                data,
                target,
            } => {
                let data = &data[..data.len().min(16)];
                if matches!(target, Target::Serial) && *offset == 0 {
                    sent_max += data.len();
                }
                dev.write(u64::from(*offset), data);
            }
        }
    }
    // Only writes to the transmit register (offset 0) can produce output, one byte each.
    assert!(out.0.lock().unwrap().len() <= sent_max);
});
