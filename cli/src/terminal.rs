//! The host terminal: raw mode for the guest console, and getting it back on every exit.
//!
//! With stdin in raw mode every key (Ctrl-C included) goes to the guest, as on a serial
//! line. The original settings are kept in a process-wide slot so that every way out
//! (normal exit, error, panic hook, fatal signal) can put them back; [`restore`] is
//! idempotent.

use std::sync::Mutex;

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Whether `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Put stdin in raw mode (no echo, no line editing, no signals from keys) and remember
/// how it was. Does nothing when stdin is not a terminal.
pub fn enter_raw_mode() -> std::io::Result<()> {
    if !is_tty(libc::STDIN_FILENO) {
        return Ok(());
    }
    // SAFETY: termios is plain old data; zeroed is a valid value to be overwritten.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into the termios we own.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let original = t;
    // SAFETY: cfmakeraw edits the termios we own.
    unsafe { libc::cfmakeraw(&mut t) };
    // Keep output post-processing so the host terminal still turns \n into \r\n for our
    // own messages; the guest sends \r\n itself.
    t.c_oflag |= libc::OPOST;
    // SAFETY: tcsetattr reads the termios we own.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
    Ok(())
}

/// Put the terminal back as [`enter_raw_mode`] found it. Safe to call more than once.
pub fn restore() {
    // try_lock: a panic or signal may arrive while the slot is held; never deadlock.
    if let Ok(mut saved) = SAVED.try_lock() {
        if let Some(t) = saved.take() {
            // SAFETY: tcsetattr reads the termios we saved.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

/// Restores the terminal when dropped (normal return or unwinding).
pub struct RawModeGuard(());

impl RawModeGuard {
    /// Enter raw mode; the guard restores it.
    pub fn new() -> std::io::Result<Self> {
        enter_raw_mode()?;
        Ok(Self(()))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Make panics restore the terminal before the default hook prints the message.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        default(info);
    }));
}
