//! `minivmm console VM`: attach this terminal to a lab VM's serial console. The VM runs
//! in the background with its console on files of the state directory (see the `labs`
//! crate): its output is appended to `console.log`, which this shows (the last few KiB,
//! then whatever comes), and its input is the FIFO `console.in`, into which this writes
//! what is typed. **Ctrl-A x** detaches (the VM runs on); every other key, other Ctrl-A
//! commands included (Ctrl-A p pauses), goes to the VM's minivmm as typed. The end of
//! standard input detaches too, and so does the VM's end.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::console::ESCAPE;
use crate::terminal;

/// How much of the console's past output to show on attaching.
const BACKLOG: u64 = 4096;

/// Attach to `target`'s console; returns the exit code.
pub fn attach(state: &Path, target: &str) -> u8 {
    let vd = match labs::ssh::find_vm(state, target) {
        Ok((_, vd)) => vd,
        Err(e) => {
            eprintln!("minivmm: {e}");
            return 2;
        }
    };
    if vd.pid().is_none() {
        eprintln!(
            "minivmm: {target} is {}: no console to attach to",
            vd.state()
        );
        return 2;
    }
    let fifo = vd.file("console.in");
    let mut input = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("minivmm: {}: {e}", fifo.display());
            return 1;
        }
    };
    let log_path = vd.file("console.log");
    let mut log = match std::fs::File::open(&log_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("minivmm: {}: {e}", log_path.display());
            return 1;
        }
    };
    let len = log.metadata().map_or(0, |m| m.len());
    let start = len
        .saturating_sub(BACKLOG)
        .max(vd.console_offset().min(len));
    let _ = log.seek(SeekFrom::Start(start));
    eprint!("minivmm: attached to the console of {target} (Ctrl-A x detaches)\r\n");
    let _raw = match terminal::RawModeGuard::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("minivmm: terminal: {e}");
            return 1;
        }
    };
    let mut stdout = std::io::stdout();
    let mut after_escape = false;
    let mut stdin_open = true;
    let mut last_check = Instant::now();
    let mut buf = vec![0u8; 65536];
    let code = loop {
        // Output first: whatever the VM wrote since the last look.
        loop {
            match log.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]);
                }
            }
        }
        let _ = stdout.flush();
        if last_check.elapsed() > Duration::from_millis(500) {
            last_check = Instant::now();
            if vd.pid().is_none() {
                // Its last words, then say so.
                while let Ok(n) = log.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = stdout.write_all(&buf[..n]);
                }
                eprint!("\r\nminivmm: {target} has ended ({})\r\n", vd.state());
                break 0;
            }
        }
        if !stdin_open {
            break 0;
        }
        let mut pfd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor (stdin) through a struct we own.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 || pfd.revents == 0 {
            continue;
        }
        let mut keys = [0u8; 256];
        // SAFETY: reading into a buffer we own, of its length.
        let got = unsafe { libc::read(libc::STDIN_FILENO, keys.as_mut_ptr().cast(), keys.len()) };
        if got <= 0 {
            stdin_open = false;
            continue;
        }
        let mut out = Vec::with_capacity(got as usize + 1);
        let mut detach = false;
        for &k in &keys[..got as usize] {
            if after_escape {
                after_escape = false;
                if k == b'x' || k == b'X' {
                    detach = true;
                    break;
                }
                out.extend([ESCAPE, k]);
            } else if k == ESCAPE {
                after_escape = true;
            } else {
                out.push(k);
            }
        }
        if !out.is_empty() && !send(&mut input, &out) {
            eprint!("\r\nminivmm: {target} does not take input any more\r\n");
            break 1;
        }
        if detach {
            eprint!("\r\nminivmm: detached from {target} (it runs on)\r\n");
            break 0;
        }
    };
    drop(_raw);
    code
}

/// Write all of `bytes` to the FIFO, waiting (up to a second) while it is full.
fn send(fifo: &mut std::fs::File, mut bytes: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !bytes.is_empty() {
        match fifo.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                let mut pfd = libc::pollfd {
                    fd: fifo.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: polling one descriptor we own.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            Err(_) => return false,
        }
    }
    true
}
