//! The COM1 serial port: a 16550A UART, the guest's console.
//!
//! The UART's register model (divisor latch, interrupt identification, line status, the
//! 64-byte receive FIFO, loopback) is vm-superio's [`Serial`]; this module only adapts it
//! to minivmm: it exposes the UART on the [`BusDevice`] interface (8 one-byte registers),
//! raises the guest interrupt through an [`Interrupt`], and lets the VMM feed console input
//! with [`SerialDevice::enqueue_input`]. Guest output goes to a `Write` that vm-superio
//! flushes after every byte, so an interactive console shows each character at once.

use std::io::{self, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::{BusDevice, Interrupt};

/// Number of one-byte registers of a 16550A (the port range the VMM registers).
pub const SERIAL_REGISTERS: u64 = 8;

/// Adapts minivmm's [`Interrupt`] line to vm-superio's [`Trigger`].
pub struct SerialTrigger(Arc<dyn Interrupt>);

impl Trigger for SerialTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// The output a serial port writes the guest's bytes to.
pub type SerialOutput = Box<dyn Write + Send>;

/// The UART's registers and unread input, as a snapshot stores them (the names are the
/// 16550A's registers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SerialSnapshot {
    pub divisor_low: u8,
    pub divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Bytes received and not yet read by the guest (at most the 64-byte FIFO).
    pub fifo: Vec<u8>,
}

/// A 16550A UART on the port-I/O bus.
pub struct SerialDevice {
    uart: Serial<SerialTrigger, NoEvents, SerialOutput>,
}

impl SerialDevice {
    /// A UART raising `interrupt` and writing guest output to `out`.
    pub fn new(interrupt: Arc<dyn Interrupt>, out: SerialOutput) -> Self {
        Self {
            uart: Serial::new(SerialTrigger(interrupt), out),
        }
    }

    /// The UART as it is now, for a snapshot.
    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            divisor_low: s.baud_divisor_low,
            divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            fifo: s.in_buffer,
        }
    }

    /// A UART in the state `snap` describes. Fails if the FIFO holds more than it can.
    pub fn restore(
        interrupt: Arc<dyn Interrupt>,
        out: SerialOutput,
        snap: &SerialSnapshot,
    ) -> Result<Self, String> {
        let state = SerialState {
            baud_divisor_low: snap.divisor_low,
            baud_divisor_high: snap.divisor_high,
            interrupt_enable: snap.interrupt_enable,
            interrupt_identification: snap.interrupt_identification,
            line_control: snap.line_control,
            line_status: snap.line_status,
            modem_control: snap.modem_control,
            modem_status: snap.modem_status,
            scratch: snap.scratch,
            in_buffer: snap.fifo.clone(),
        };
        let uart = Serial::from_state(&state, SerialTrigger(interrupt), NoEvents, out)
            .map_err(|e| format!("serial port: {e:?}"))?;
        Ok(Self { uart })
    }

    /// Queue console input for the guest. Returns how many bytes of `bytes` the receive
    /// FIFO accepted (0 when it is full, or when the guest put the UART in loopback mode);
    /// the caller keeps the rest and retries once the guest has read some.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let before = self.uart.fifo_capacity();
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                // The bytes are in the FIFO; only the interrupt failed. Report what was
                // accepted so the caller does not send them twice.
                crate::error_ratelimited!("serial: failed to signal received data: {e:?}");
                before.saturating_sub(self.uart.fifo_capacity())
            }
        }
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_free(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The output the guest writes to.
    pub fn output(&self) -> &SerialOutput {
        self.uart.writer()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte registers only; other widths read as zeros.
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) if offset < SERIAL_REGISTERS => *byte = self.uart.read(off),
            (_, data) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if offset >= SERIAL_REGISTERS {
            return;
        }
        if let Err(e) = self.uart.write(off, *value) {
            // Output errors (a closed terminal) or a failed interrupt: the guest cannot do
            // anything about them, and it must not be able to flood the log with them.
            crate::error_ratelimited!("serial: write to register {off}: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::CountingInterrupt;
    use std::sync::Mutex;

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;

    /// A writer the test can inspect after handing it to the device.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, Arc<CountingInterrupt>, SharedBuf) {
        let irq = Arc::new(CountingInterrupt::default());
        let buf = SharedBuf::default();
        let dev = SerialDevice::new(irq.clone(), Box::new(buf.clone()));
        (dev, irq, buf)
    }

    fn rd(dev: &mut SerialDevice, off: u64) -> u8 {
        let mut b = [0xAAu8];
        dev.read(off, &mut b);
        b[0]
    }

    #[test]
    fn guest_output_reaches_writer() {
        let (mut dev, _, buf) = device();
        for b in b"hello\n" {
            dev.write(DATA, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn thr_empty_interrupt_when_enabled() {
        let (mut dev, irq, _) = device();
        dev.write(DATA, b"x");
        assert_eq!(irq.count(), 0, "THRE interrupt is masked by default");
        dev.write(IER, &[0x02]); // enable THR-empty: fires at once (THR is always empty)
        let after_enable = irq.count();
        assert!(after_enable >= 1);
        // The guest's interrupt handler reads IIR, which acknowledges THR-empty.
        assert_eq!(rd(&mut dev, IIR) & 0x0F, 0x02);
        dev.write(DATA, b"y");
        assert_eq!(irq.count(), after_enable + 1);
    }

    #[test]
    fn input_is_read_back_with_interrupt() {
        let (mut dev, irq, _) = device();
        dev.write(IER, &[0x01]); // received-data-available interrupt
        let base = irq.count();
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert_eq!(irq.count(), base + 1);
        assert_eq!(rd(&mut dev, LSR) & 0x01, 0x01, "data ready");
        assert_eq!(rd(&mut dev, DATA), b'a');
        assert_eq!(rd(&mut dev, DATA), b'b');
        assert_eq!(rd(&mut dev, LSR) & 0x01, 0, "no more data");
    }

    #[test]
    fn fifo_capacity_limits_input() {
        let (mut dev, _, _) = device();
        let cap = dev.fifo_free();
        assert_eq!(cap, 64, "vm-superio's FIFO is 64 bytes");
        let input = vec![b'z'; cap + 10];
        assert_eq!(dev.enqueue_input(&input), cap);
        assert_eq!(dev.fifo_free(), 0);
        assert_eq!(dev.enqueue_input(b"more"), 0);
        rd(&mut dev, DATA);
        assert_eq!(dev.fifo_free(), 1);
        assert_eq!(dev.enqueue_input(b"more"), 1);
    }

    #[test]
    fn loopback_mode_rejects_host_input() {
        let (mut dev, _, buf) = device();
        dev.write(MCR, &[0x10]); // loopback
        assert_eq!(dev.enqueue_input(b"q"), 0);
        dev.write(DATA, b"L");
        assert_eq!(rd(&mut dev, DATA), b'L');
        assert!(buf.0.lock().unwrap().is_empty());
    }

    #[test]
    fn registers_and_widths() {
        let (mut dev, _, _) = device();
        dev.write(LCR, &[0x03]);
        assert_eq!(rd(&mut dev, LCR), 0x03);
        // 16550A: FIFO bits set in IIR.
        assert_eq!(rd(&mut dev, IIR) & 0xC0, 0xC0);
        // Wrong widths and offsets are ignored and read as zero.
        let mut two = [0xFFu8; 2];
        dev.read(LCR, &mut two);
        assert_eq!(two, [0, 0]);
        dev.write(LCR, &[0x80, 0x80]);
        assert_eq!(rd(&mut dev, LCR), 0x03);
        assert_eq!(rd(&mut dev, 8), 0);
        assert_eq!(rd(&mut dev, u64::MAX), 0);
        dev.write(u64::MAX, &[1]);
    }

    #[test]
    fn failing_output_does_not_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let irq = Arc::new(CountingInterrupt::default());
        let mut dev = SerialDevice::new(irq, Box::new(Broken));
        dev.write(DATA, b"x");
        assert_eq!(rd(&mut dev, LSR) & 0x20, 0x20, "THR still reported empty");
    }
}
