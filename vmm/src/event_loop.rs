//! The main thread's event loop (event-manager over epoll): console input, the reset and
//! exit events raised by devices and vCPUs, and host signals. vCPUs run on their own
//! threads; this loop only decides when the VM ends.
//!
//! Console keys: everything typed goes to the guest's COM1, except the escape prefix
//! Ctrl-A: `Ctrl-A x` quits the VM (exit code 0, like QEMU), `Ctrl-A Ctrl-A` sends one
//! Ctrl-A to the guest.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use devices::legacy::{AcpiPm, SerialDevice};

use crate::{ExitSlot, VmOutcome};

/// The console escape prefix: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What a key stroke means once the escape prefix is taken into account.
#[derive(Default)]
pub struct EscapeParser {
    after_escape: bool,
}

impl EscapeParser {
    /// Feed input bytes; returns the bytes for the guest and whether the user asked to quit.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => return (out, true),
                    ESCAPE => out.push(ESCAPE),
                    _ => {} // unknown command: ignored, as QEMU does
                }
            } else if b == ESCAPE {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

const TOKEN_STDIN: u32 = 0;
const TOKEN_RESET: u32 = 1;
const TOKEN_EXIT: u32 = 2;
const TOKEN_SIGNAL: u32 = 3;
const TOKEN_TIMER: u32 = 4;
const TOKEN_POWEROFF: u32 = 5;
const TOKEN_SHUTDOWN_TIMER: u32 = 6;

/// Bytes waiting for room in the guest's receive FIFO are retried every this many ms.
const INPUT_RETRY_MS: i64 = 5;

/// Handles every event of the main loop.
pub struct Controller {
    serial: Arc<Mutex<SerialDevice>>,
    /// Read from stdin (None when the console is not interactive).
    stdin: Option<i32>,
    reset_evt: EventFd,
    poweroff_evt: EventFd,
    /// The power button and how long to wait after pressing it (ACPI only).
    power_button: Option<(Arc<Mutex<AcpiPm>>, std::time::Duration)>,
    /// Armed when the power button was pressed: the hard-stop deadline.
    shutdown_timer: OwnedFd,
    /// The signal that asked for the shutdown.
    shutdown_signal: Option<i32>,
    exit: Arc<ExitSlot>,
    signals: OwnedFd,
    timer: OwnedFd,
    pending: Vec<u8>,
    escape: EscapeParser,
}

/// Create a signalfd for the signals that end the VM. They must already be blocked in
/// every thread (see [`block_exit_signals`]).
pub fn exit_signals_fd() -> std::io::Result<OwnedFd> {
    let set = exit_signal_set();
    // SAFETY: `set` is a valid sigset; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn exit_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is ours; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Block the VM-ending signals in the calling thread (and the threads it creates later),
/// so that they are only seen through the signalfd.
pub fn block_exit_signals() -> std::io::Result<()> {
    let set = exit_signal_set();
    // SAFETY: `set` is valid; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn timerfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall creating a new descriptor.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: timerfd_create returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn arm(timer: &OwnedFd, ms: i64) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        },
    };
    // SAFETY: the descriptor is a timerfd we own; spec is valid.
    let r = unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if r != 0 {
        log::error!(
            "cannot arm a {ms} ms timer: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn read_fd(fd: i32, buf: &mut [u8]) -> isize {
    // SAFETY: reading into a buffer we own, of the given length.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

impl Controller {
    /// A controller feeding `stdin` (if any) into `serial`. With `power_button`, SIGTERM
    /// presses the ACPI power button and stops the VM hard only after the timeout.
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        stdin: Option<i32>,
        reset_evt: EventFd,
        poweroff_evt: EventFd,
        power_button: Option<(Arc<Mutex<AcpiPm>>, std::time::Duration)>,
        exit: Arc<ExitSlot>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            serial,
            stdin,
            reset_evt,
            poweroff_evt,
            power_button,
            shutdown_timer: timerfd()?,
            shutdown_signal: None,
            exit,
            signals: exit_signals_fd()?,
            timer: timerfd()?,
            pending: Vec::new(),
            escape: EscapeParser::default(),
        })
    }

    /// Move pending input into the guest's FIFO as far as it has room.
    fn flush_input(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let taken = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(&self.pending);
        self.pending.drain(..taken);
        if !self.pending.is_empty() {
            arm(&self.timer, INPUT_RETRY_MS);
        }
    }

    fn on_stdin(&mut self, ops: &mut EventOps, fd: i32) {
        let mut buf = [0u8; 256];
        let n = read_fd(fd, &mut buf);
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                return;
            }
            // EOF or error: stop listening (the VM keeps running without input).
            let _ = ops.remove(Events::with_data_raw(fd, TOKEN_STDIN, EventSet::IN));
            self.stdin = None;
            return;
        }
        let (bytes, quit) = self.escape.feed(&buf[..n as usize]);
        self.pending.extend_from_slice(&bytes);
        self.flush_input();
        if quit {
            self.exit.set(VmOutcome::Quit);
        }
    }

    fn on_signal(&mut self) {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading one siginfo into the struct we own, of exactly its size.
        let n = unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n != size as isize {
            return;
        }
        let signo = info.ssi_signo as i32;
        match (&self.power_button, self.shutdown_signal) {
            // First SIGTERM with ACPI: ask the guest to shut down, stop it hard later.
            (Some((pm, timeout)), None) if signo == libc::SIGTERM => {
                let pressed = pm
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .press_power_button();
                match pressed {
                    Ok(()) => {
                        log::info!(
                            "SIGTERM: pressed the ACPI power button; stopping hard in {timeout:?}"
                        );
                        self.shutdown_signal = Some(signo);
                        arm(&self.shutdown_timer, timeout.as_millis().max(1) as i64);
                    }
                    Err(e) => {
                        log::warn!("SIGTERM: power button failed ({e}); stopping now");
                        self.exit.set(VmOutcome::Signal(signo));
                    }
                }
            }
            // Anything else (or a second SIGTERM): stop now.
            _ => self.exit.set(VmOutcome::Signal(signo)),
        }
    }
}

impl MutEventSubscriber for Controller {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_STDIN => self.on_stdin(ops, events.fd()),
            TOKEN_RESET => {
                let _ = self.reset_evt.read();
                self.exit.set(VmOutcome::Reset);
            }
            TOKEN_EXIT => {
                // The slot already holds the outcome; the eventfd only woke us up.
                let _ = self.exit.event.read();
            }
            TOKEN_SIGNAL => self.on_signal(),
            TOKEN_POWEROFF => {
                let _ = self.poweroff_evt.read();
                self.exit.set(VmOutcome::PowerOff);
            }
            TOKEN_SHUTDOWN_TIMER => {
                let mut buf = [0u8; 8];
                read_fd(self.shutdown_timer.as_raw_fd(), &mut buf);
                log::warn!("the guest did not shut down in time: stopping it");
                self.exit.set(VmOutcome::Signal(
                    self.shutdown_signal.unwrap_or(libc::SIGTERM),
                ));
            }
            TOKEN_TIMER => {
                let mut buf = [0u8; 8];
                read_fd(self.timer.as_raw_fd(), &mut buf);
                self.flush_input();
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Some(fd) = self.stdin {
            // /dev/null and regular files cannot be polled (EPERM): no console input then.
            if let Err(e) = ops.add(Events::with_data_raw(fd, TOKEN_STDIN, EventSet::IN)) {
                log::debug!("stdin cannot be watched ({e}): the guest gets no console input");
            }
        }
        let mut add = |fd: i32, token: u32| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                log::error!("event loop: cannot watch fd {fd}: {e}");
            }
        };
        add(self.poweroff_evt.as_raw_fd(), TOKEN_POWEROFF);
        add(self.shutdown_timer.as_raw_fd(), TOKEN_SHUTDOWN_TIMER);
        add(self.reset_evt.as_raw_fd(), TOKEN_RESET);
        add(self.exit.event.as_raw_fd(), TOKEN_EXIT);
        add(self.signals.as_raw_fd(), TOKEN_SIGNAL);
        add(self.timer.as_raw_fd(), TOKEN_TIMER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_longer_than_a_second_fire() {
        let t = timerfd().unwrap();
        let start = std::time::Instant::now();
        arm(&t, 1200);
        let mut pfd = libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor we own.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1, "the timer never fired");
        let waited = start.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(1150),
            "{waited:?}"
        );
    }

    #[test]
    fn escape_sequences() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(p.feed(&[ESCAPE, ESCAPE, b'a']), (vec![ESCAPE, b'a'], false));
        assert_eq!(p.feed(&[b'a', ESCAPE, b'x', b'b']), (vec![b'a'], true));
        // The prefix may arrive in one read and the command in the next.
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(&[ESCAPE]), (vec![], false));
        assert_eq!(p.feed(b"x"), (vec![], true));
        // Unknown commands are swallowed.
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(&[ESCAPE, b'q', b'z']), (vec![b'z'], false));
    }
}
