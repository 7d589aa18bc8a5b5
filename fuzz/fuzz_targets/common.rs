//! What several fuzz targets share: an interrupt line that goes nowhere, and a fake tap.

#![allow(dead_code)] // each target uses part of it

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, OnceLock};

use devices::virtio::net::NetBackend;
use devices::Interrupt;

/// An interrupt line nobody listens to.
pub struct NoIrq;

impl Interrupt for NoIrq {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The host side of a NIC: frames to deliver (in order), and a count of what the guest
/// sent. Its poll fd is never readable: frames are picked up when the guest notifies RX.
#[derive(Default)]
pub struct FakeTap {
    pub incoming: Mutex<VecDeque<Vec<u8>>>,
    pub sent: Mutex<usize>,
}

impl NetBackend for FakeTap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.lock().unwrap().pop_front() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        *self.sent.lock().unwrap() += 1;
        Ok(buf.len())
    }
    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn poll_fd(&self) -> RawFd {
        static NULL: OnceLock<std::fs::File> = OnceLock::new();
        NULL.get_or_init(|| std::fs::File::open("/dev/null").unwrap())
            .as_raw_fd()
    }
    fn name(&self) -> &str {
        "fuzz"
    }
}
