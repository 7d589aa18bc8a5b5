//! The console on a terminal: raw mode while the VM runs, the quit key, and the terminal
//! restored on every way out. minivmm runs with a pseudo-terminal as stdin and stdout.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use minivmm_tests::{guest_dir, minivmm_bin, wait};

struct Pty {
    master: File,
    slave: OwnedFd,
}

fn pty() -> Pty {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two new descriptors into m and s; the other arguments may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and ours.
    unsafe {
        Pty {
            master: File::from_raw_fd(m),
            slave: OwnedFd::from_raw_fd(s),
        }
    }
}

fn lflag(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, termios we own.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

fn cooked(fd: &OwnedFd) -> bool {
    let l = lflag(fd);
    l & libc::ICANON != 0 && l & libc::ECHO != 0 && l & libc::ISIG != 0
}

/// Start minivmm on the pty (stdin and stdout), stderr piped; wait until it has put the
/// terminal in raw mode.
fn start(p: &Pty) -> std::process::Child {
    let dir = guest_dir();
    let slave = || Stdio::from(p.slave.try_clone().unwrap());
    let child = Command::new(minivmm_bin())
        .args(["--kernel", &dir.join("vmlinux").display().to_string()])
        .args([
            "--initrd",
            &dir.join("initramfs.cpio").display().to_string(),
        ])
        // SIGTERM first presses the ACPI power button; a guest still booting does not
        // answer it, so keep the wait before the hard stop short.
        .args(["--shutdown-timeout", "1s"])
        .stdin(slave())
        .stdout(slave())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cooked(&p.slave) {
        assert!(
            Instant::now() < deadline,
            "minivmm never put the terminal in raw mode"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Keep reading the master so minivmm never blocks on a full terminal buffer.
fn drain(p: &Pty) {
    let mut m = p.master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(m.read(&mut buf), Ok(n) if n > 0) {}
    });
}

#[test]
fn ctrl_a_x_quits_and_restores_the_terminal() {
    let p = pty();
    assert!(cooked(&p.slave));
    let child = start(&p);
    drain(&p);
    p.master.try_clone().unwrap().write_all(b"\x01x").unwrap();
    let f = wait(child, Duration::from_secs(30));
    assert_eq!(f.code(), 0, "{f}");
    assert!(f.stderr.contains("quit from the console"), "{f}");
    assert!(cooked(&p.slave), "terminal left in raw mode");
}

#[test]
fn sigterm_stops_and_restores_the_terminal() {
    let p = pty();
    let child = start(&p);
    drain(&p);
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let f = wait(child, Duration::from_secs(30));
    assert_eq!(f.code(), 128 + libc::SIGTERM, "{f}");
    assert!(cooked(&p.slave), "terminal left in raw mode");
}

#[test]
fn ctrl_c_goes_to_the_guest_not_to_minivmm() {
    let p = pty();
    let child = start(&p);
    drain(&p);
    let mut m = p.master.try_clone().unwrap();
    m.write_all(b"\x03").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    m.write_all(b"\x01x").unwrap();
    let f = wait(child, Duration::from_secs(30));
    // Ctrl-C did not stop it (that would be 130): only the quit key did.
    assert_eq!(f.code(), 0, "{f}");
    assert!(cooked(&p.slave));
}

/// A guest that prints 'x' on COM1 as fast as it can, forever.
fn chatty_kernel(dir: &minivmm_tests::TempDir) -> String {
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'x',             // mov al, 'x'
        0xee,                   // out dx, al
        0xeb, 0xfd,             // jmp out
    ];
    let path = dir.join("chatty.elf");
    std::fs::write(&path, boot::loader::elf_image(0x10_0000, &code, 0x1000)).unwrap();
    path.display().to_string()
}

/// stdout is a pipe nobody reads: the guest fills it, and the vCPU writing the console must
/// still be stoppable, and stopped cleanly (its thread joined, not left behind in a write).
/// SIGINT ends minivmm at once (130), SIGTERM (the power button, which this guest ignores)
/// after the shutdown timeout (143).
#[test]
fn a_stdout_nobody_reads_does_not_stop_minivmm_from_handling_signals() {
    let dir = minivmm_tests::TempDir::new("minivmm-blocked");
    let kernel = chatty_kernel(&dir);
    let _slot = minivmm_tests::CpuSlots::take(1);
    for (signal, timeout, code) in [(libc::SIGINT, "30s", 130), (libc::SIGTERM, "1s", 143)] {
        let mut child = Command::new(minivmm_bin())
            .args([
                "--kernel",
                &kernel,
                "--memory",
                "32M",
                "--shutdown-timeout",
                timeout,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Wait until the pipe is full (64 KiB by default; a page may stay part-used): from
        // then on every write of the guest's output would block.
        let queued = || {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer, a live local.
            assert_eq!(
                unsafe { libc::ioctl(stdout.as_raw_fd(), libc::FIONREAD, &mut n) },
                0
            );
            n
        };
        let start = Instant::now();
        while queued() < 65536 - 4096 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the guest did not fill the pipe: {} bytes",
                queued()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // More output than the console buffer holds is pending now; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill with a pid we own.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let sent = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "minivmm did not end within 30 s of signal {signal} while its stdout was blocked"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(code), "{stderr}");
        // Every vCPU stopped and was joined: none was left behind, stuck in a write.
        assert!(!stderr.contains("did not stop"), "{stderr}");
        drop(stdout);
    }
}
