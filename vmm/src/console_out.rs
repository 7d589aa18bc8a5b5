//! The guest's console output, written by a thread of its own.
//!
//! COM1's bytes are produced on a vCPU thread, which holds the UART while it writes. If
//! they went straight to stdout, a stdout nobody reads (a full pipe, a stopped terminal)
//! would block that vCPU inside `write`, and a blocked vCPU cannot be paused or stopped:
//! SIGTERM and Ctrl-A x would hang. Instead the UART writes into a bounded buffer
//! ([`CAPACITY`]), and the `console-out` thread copies the buffer to the real output.
//!
//! While the buffer is full the vCPU waits for room, as it would on a slow terminal (no
//! output is lost to a reader that is merely slow). When the VM ends, [`ConsoleDrain`]
//! stops that waiting: further bytes are dropped, and the thread gets a bounded time to
//! write what is buffered.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::seccomp::{self, SeccompMode, ThreadKind};

/// How many bytes of console output may wait for the real output.
pub const CAPACITY: usize = 64 * 1024;

#[derive(Default)]
struct State {
    data: VecDeque<u8>,
    /// The VM ended: producers never wait; the writer finishes what is buffered.
    closing: bool,
    /// The writer thread wrote everything it will (or gave up on its output).
    done: bool,
    /// Bytes dropped because the VM had ended with the buffer full.
    dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The UART's end: a `Write` that never blocks once the VM has ended.
pub struct ConsoleOutput(Arc<Shared>);

/// The VMM's end: ends the waiting and lets the writer drain.
pub struct ConsoleDrain(Arc<Shared>);

/// Start the `console-out` thread writing to `out`, under its seccomp filter.
pub fn spawn(
    mut out: Box<dyn Write + Send>,
    mode: SeccompMode,
) -> std::io::Result<(ConsoleOutput, ConsoleDrain)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    });
    let program = seccomp::filter(ThreadKind::ConsoleOutput, mode)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if mode != SeccompMode::Off {
        seccomp::install_sigsys_handler()?;
    }
    let s = shared.clone();
    std::thread::Builder::new()
        .name("console-out".into())
        .spawn(move || {
            if let Err(e) =
                seccomp::apply(ThreadKind::ConsoleOutput, "console-out", program.as_ref())
            {
                log::error!("console-out: {e}; console output is dropped");
                s.lock().done = true;
                s.changed.notify_all();
                return;
            }
            run(&s, &mut *out)
        })?;
    Ok((ConsoleOutput(shared.clone()), ConsoleDrain(shared)))
}

fn run(s: &Shared, out: &mut dyn Write) {
    loop {
        let chunk: Vec<u8> = {
            let mut st = s.lock();
            while st.data.is_empty() && !st.closing {
                st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.data.is_empty() {
                st.done = true;
                s.changed.notify_all();
                return;
            }
            st.data.drain(..).collect()
        };
        s.changed.notify_all();
        if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
            // A closed output (EPIPE): nobody will read the rest; stop waiting for it.
            let mut st = s.lock();
            st.closing = true;
            st.done = true;
            st.data.clear();
            s.changed.notify_all();
            return;
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = self.0.lock();
        loop {
            if st.done {
                return Ok(buf.len());
            }
            let room = CAPACITY - st.data.len();
            if room > 0 {
                let n = room.min(buf.len());
                st.data.extend(&buf[..n]);
                self.0.changed.notify_all();
                return Ok(n);
            }
            if st.closing {
                st.dropped += buf.len() as u64;
                return Ok(buf.len());
            }
            st = self.0.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The writer thread flushes after every chunk it writes.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleDrain {
    /// [`finish`](Self::finish), with a warning when the output stayed blocked past
    /// `timeout` (what the VM does as it ends).
    pub fn finish_or_warn(&self, timeout: Duration) {
        if !self.finish(timeout) {
            log::warn!("console: output still blocked; the rest of it is dropped");
        }
    }

    /// The VM is ending: a vCPU waiting for room stops waiting (its bytes are dropped), and
    /// the writer finishes what is buffered. Returns at once.
    pub fn close(&self) {
        self.0.lock().closing = true;
        self.0.changed.notify_all();
    }

    /// Close, then wait (at most `timeout`) until the writer has written everything.
    /// Returns whether it did; a stdout still blocked after `timeout` keeps the rest.
    pub fn finish(&self, timeout: Duration) -> bool {
        self.close();
        let deadline = Instant::now() + timeout;
        let mut st = self.0.lock();
        while !st.done {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .0
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if st.dropped > 0 {
            log::warn!(
                "console: {} bytes of guest output dropped at the end (output blocked)",
                st.dropped
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that blocks until a gate opens, then collects.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Gated {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    #[test]
    fn a_blocked_output_stalls_the_writer_only_until_the_vm_ends() {
        let gated = Gated::default();
        let (mut out, drain) = spawn(Box::new(gated.clone()), SeccompMode::Off).unwrap();
        // The output is blocked: the buffer takes CAPACITY bytes (plus what the writer
        // thread took before blocking), then a producer waits.
        let producer = std::thread::spawn(move || {
            let mut written = 0usize;
            for _ in 0..4 * CAPACITY / 1024 {
                out.write_all(&[b'x'; 1024]).unwrap();
                written += 1024;
            }
            written
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !producer.is_finished(),
            "the producer did not wait for room"
        );
        // The VM ends: the producer stops waiting, its extra bytes are dropped.
        drain.close();
        assert_eq!(producer.join().unwrap(), 4 * CAPACITY);
        // The output is still blocked: finish gives up after its timeout.
        assert!(!drain.finish(Duration::from_millis(100)));
        // Once it unblocks, what was buffered is written, in order, and no more.
        gated.open();
        assert!(drain.finish(Duration::from_secs(5)));
        let got = gated.got.lock().unwrap().len();
        assert!(
            (CAPACITY..=2 * CAPACITY).contains(&got),
            "{got} bytes written"
        );
    }

    #[test]
    fn a_slow_reader_loses_nothing() {
        let gated = Gated::default();
        gated.open();
        let (mut out, drain) = spawn(Box::new(gated.clone()), SeccompMode::Off).unwrap();
        let data: Vec<u8> = (0..10 * CAPACITY).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(777) {
            out.write_all(chunk).unwrap();
        }
        assert!(drain.finish(Duration::from_secs(10)));
        assert_eq!(*gated.got.lock().unwrap(), data);
    }
}
