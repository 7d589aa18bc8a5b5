//! SIGINT, SIGTERM and SIGHUP end the manager cleanly: they are blocked in every thread
//! (taken before the first thread exists, so all inherit the mask) and read from a
//! signalfd that the accept loop polls beside the listening socket. VM processes start
//! with an empty mask again (the standard library resets it at exec).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The signals that stop the manager.
pub const STOPPING: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Block [`STOPPING`] in this thread (and the threads it makes from now on) and return a
/// signalfd that reads them.
pub fn take() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is ours; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in STOPPING {
            libc::sigaddset(&mut set, s);
        }
    }
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
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The next pending signal on `fd`, if any.
pub fn read(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most `size` bytes into the struct we own.
    let got = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    (got == size as isize).then_some(info.ssi_signo as i32)
}

/// Wait until `a` or `b` is readable (or `timeout_ms` passes): whether each is.
pub fn poll2(a: i32, b: i32, timeout_ms: i32) -> std::io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: polling two descriptors the caller owns, in an array that outlives the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}
