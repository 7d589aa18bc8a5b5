//! The command line's side of a running VM: the console keys, the host signals, and when to
//! stop. The VM itself runs on its own threads ([`vmm::Vm`]); this loop only polls stdin,
//! a signalfd, the VM's state-change eventfd and a timer, and turns what it sees into
//! requests on the handle.
//!
//! Console keys: everything typed goes to the guest's COM1, except the escape prefix Ctrl-A:
//! `Ctrl-A x` quits (exit code 0, like QEMU), `Ctrl-A p` pauses or resumes the VM,
//! `Ctrl-A Ctrl-A` sends one Ctrl-A to the guest.
//!
//! Signals: SIGTERM presses the guest's ACPI power button and stops the VM hard after the
//! shutdown timeout (or at a second SIGTERM); SIGINT, SIGHUP and SIGQUIT stop it at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use vmm::{Vm, VmOutcome, VmState};
use vmm_sys_util::timerfd::TimerFd;

/// The console escape prefix: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What a key stroke asks for besides bytes for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Ctrl-A x.
    Quit,
    /// Ctrl-A p.
    TogglePause,
}

/// Splits typed input into bytes for the guest and escape commands.
#[derive(Default)]
pub struct EscapeParser {
    after_escape: bool,
}

impl EscapeParser {
    /// Feed input bytes; returns the bytes for the guest and the first command, if any
    /// (input after a command is dropped: it was typed for a VM that may be gone).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Option<Key>) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => return (out, Some(Key::Quit)),
                    b'p' | b'P' => return (out, Some(Key::TogglePause)),
                    ESCAPE => out.push(ESCAPE),
                    _ => {} // unknown command: ignored, as QEMU does
                }
            } else if b == ESCAPE {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
        (out, None)
    }
}

/// How the run ended, as the exit code sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The VM ended by itself (or was stopped without a reason of ours).
    Vm(VmOutcome),
    /// The user typed Ctrl-A x.
    Quit,
    /// A signal stopped it.
    Signal(i32),
}

const VM_ENDING_SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is ours; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in VM_ENDING_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Block the VM-ending signals in this thread and every thread it creates later (the VM's),
/// and return a signalfd that reads them. Call it before building the VM.
pub fn take_signals() -> std::io::Result<OwnedFd> {
    let set = signal_set();
    // SAFETY: `set` is valid; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    // SAFETY: `set` is a valid sigset; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The longest timer this loop arms: a `--shutdown-timeout` past it (up to the 584 million
/// years a `u64` of seconds holds) would overflow the kernel's `time_t` and never fire.
const MAX_TIMER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Arm `timer` to fire once after `d`, at least 1 ms (0 would disarm it) and at most
/// [`MAX_TIMER`].
fn arm(timer: &mut TimerFd, d: Duration) {
    let d = d.clamp(Duration::from_millis(1), MAX_TIMER);
    if let Err(e) = timer.reset(d, None) {
        log::error!("cannot arm the shutdown timer for {d:?}: {e}");
    }
}

fn read_fd(fd: i32, buf: &mut [u8]) -> isize {
    // SAFETY: reading into a buffer we own, of the given length.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// Drive `vm` until it ends: console input from `stdin` (if any), signals from `signals`.
pub fn run(
    vm: &Vm,
    mut stdin: Option<i32>,
    signals: &OwnedFd,
    shutdown_timeout: Duration,
) -> std::io::Result<Ending> {
    let mut timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let mut escape = EscapeParser::default();
    // Why we stopped the VM, if we did.
    let mut ours: Option<Ending> = None;
    let mut button_pressed_for: Option<i32> = None;
    let stop = |why: Ending, ours: &mut Option<Ending>| {
        if ours.is_none() {
            *ours = Some(why);
        }
        if let Err(e) = vm.stop() {
            log::debug!("stop: {e}");
        }
    };
    loop {
        if let VmState::Ended(o) = vm.state() {
            return Ok(ours.unwrap_or(Ending::Vm(o)));
        }
        let mut fds = vec![
            libc::pollfd {
                fd: vm.event_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: timer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(fd) = stdin {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: polling descriptors we own (or stdin), in a vector that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let ready = |i: usize| fds.get(i).is_some_and(|f| f.revents != 0);
        if ready(0) {
            vm.clear_event();
        }
        if ready(1) {
            // SAFETY: signalfd_siginfo is plain data.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reading one siginfo into the struct we own, of exactly its size.
            let got = unsafe {
                libc::read(
                    signals.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if got == size as isize {
                let signo = info.ssi_signo as i32;
                if signo == libc::SIGTERM && button_pressed_for.is_none() {
                    match vm.power_button() {
                        Ok(()) => {
                            log::info!(
                                "SIGTERM: pressed the ACPI power button; stopping hard in \
                                 {shutdown_timeout:?}"
                            );
                            button_pressed_for = Some(signo);
                            arm(&mut timer, shutdown_timeout);
                        }
                        Err(e) => {
                            log::warn!("SIGTERM: {e}; stopping now");
                            stop(Ending::Signal(signo), &mut ours);
                        }
                    }
                } else {
                    stop(Ending::Signal(signo), &mut ours);
                }
            }
        }
        if ready(2) {
            let _ = timer.wait(); // readable: returns at once
            log::warn!("the guest did not shut down in time: stopping it");
            stop(
                Ending::Signal(button_pressed_for.unwrap_or(libc::SIGTERM)),
                &mut ours,
            );
        }
        if let (true, Some(fd)) = (ready(3), stdin) {
            let mut buf = [0u8; 256];
            let n = read_fd(fd, &mut buf);
            if n <= 0 {
                if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
                {
                    continue;
                }
                // EOF or error: stop listening (the VM keeps running without input).
                stdin = None;
                continue;
            }
            let (bytes, key) = escape.feed(&buf[..n as usize]);
            if !bytes.is_empty() {
                let _ = vm.console_input(&bytes);
            }
            match key {
                Some(Key::Quit) => stop(Ending::Quit, &mut ours),
                Some(Key::TogglePause) => toggle_pause(vm),
                None => {}
            }
        }
    }
}

fn toggle_pause(vm: &Vm) {
    let (result, now) = if vm.state() == VmState::Paused {
        (vm.resume(), "resumed")
    } else {
        (vm.pause(), "paused (Ctrl-A p resumes)")
    };
    match result {
        Ok(()) => eprint!("\r\nminivmm: {now}\r\n"),
        Err(e) => eprint!("\r\nminivmm: {e}\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"ls\r"), (b"ls\r".to_vec(), None));
        assert_eq!(p.feed(&[ESCAPE, ESCAPE, b'a']), (vec![ESCAPE, b'a'], None));
        assert_eq!(
            p.feed(&[b'a', ESCAPE, b'x', b'b']),
            (vec![b'a'], Some(Key::Quit))
        );
        // The prefix may arrive in one read and the command in the next.
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(&[ESCAPE]), (vec![], None));
        assert_eq!(p.feed(b"x"), (vec![], Some(Key::Quit)));
        // Unknown commands are swallowed.
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(&[ESCAPE, b'q', b'z']), (vec![b'z'], None));
        // Pause.
        let mut p = EscapeParser::default();
        assert_eq!(
            p.feed(&[b'a', ESCAPE, b'p']),
            (vec![b'a'], Some(Key::TogglePause))
        );
    }

    #[test]
    fn timers_longer_than_a_second_fire_and_huge_ones_do_not_wrap() {
        let mut t = TimerFd::new().unwrap();
        let start = std::time::Instant::now();
        arm(&mut t, Duration::from_millis(1200));
        t.wait().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(1150));
        // A timeout beyond what time_t holds must not wrap into "now" (or disarm).
        arm(&mut t, Duration::from_secs(u64::MAX));
        assert!(t.is_armed().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        let mut pfd = libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor we own.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0, "fired at once");
    }
}
