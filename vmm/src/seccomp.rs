//! Seccomp filters: which system calls each minivmm thread may make once the guest runs.
//!
//! minivmm runs as root and the guest is hostile by assumption. If a guest ever found a
//! bug that let it run code in a minivmm thread, that code should find nothing to do: no
//! `open`, no `execve`, no `socket`, no KVM ioctl but the ones the thread needs. Each kind
//! of thread gets its own allow-list, built here with rust-vmm's `seccompiler`, and
//! installs it on itself before it touches guest data:
//!
//! | thread            | installs it                                      | may, beyond the common set |
//! |-------------------|--------------------------------------------------|----------------------------|
//! | `vcpuN`           | first thing in its thread ([`Vm::start`](crate::Vm::start)) | `KVM_RUN` (and register reads for a crash report), its own `KVM_GET_*` state reads (a snapshot, read while parked), TAP offloads (a NIC activated by the guest) |
//! | `vmm`             | first thing in its thread                        | `epoll`, timers, `tgkill` (kick vCPUs) |
//! | `virtio-blkN`     | on a message from `Vm::start`, before any queue   | `pread`/`pwrite`, `fsync`, `fallocate` |
//! | `virtio-netN`     | same                                              | TAP offload and header-size ioctls |
//! | `virtio-rngN`     | same                                              | nothing more |
//! | `console-out`     | first thing in its thread (made at build)          | nothing more |
//! | front-end (`cli`) | after `Vm::start`                                 | `poll`, terminal ioctls |
//! | `api` (`--api-sock`) | first thing in its thread                     | its socket's `accept`/`poll`; for snapshots: creating and writing files in a new directory, `mincore`, the VM's `KVM_GET_IRQCHIP`/`PIT2`/`CLOCK` |
//!
//! The common set is what Rust's runtime and the allocator need (memory, futexes, signals
//! returning, clocks, thread exit) plus `read`/`write`/`close` on fds the thread already has.
//! Nothing may create a socket, fork or exec, and only the `api` thread may open a file
//! (to write a snapshot the user asked for), so no other thread can map one either.
//!
//! A forbidden call raises `SIGSYS`; the handler here prints one line naming the thread
//! and the system call, restores the terminal (through a hook the front-end sets) and ends
//! the process with exit code 4. `--seccomp log` instead lets every call through and has
//! the kernel log the ones a filter would have refused (`dmesg`, audit type 1326): the way
//! to find a missing call while developing. `--seccomp off` installs nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// How filters are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// A forbidden system call ends minivmm (one line on stderr, exit code 4).
    #[default]
    Enforce,
    /// Every call is let through; the kernel logs the ones a filter would refuse.
    Log,
    /// No filter.
    Off,
}

/// The kinds of minivmm threads, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread (`KVM_RUN` loop).
    Vcpu,
    /// The VMM thread (event loop).
    Vmm,
    /// A virtio-blk worker.
    BlockWorker,
    /// A virtio-net worker.
    NetWorker,
    /// A virtio-rng worker.
    RngWorker,
    /// The front-end's thread that drives the VM (the cli's console loop).
    Frontend,
    /// The thread that writes the guest's console output (`console-out`).
    ConsoleOutput,
    /// A front-end's control API thread: a socket server that also takes snapshots
    /// (writes files, reads the VM's interrupt controllers and clock).
    Api,
}

impl ThreadKind {
    /// The filter for the worker of a virtio device of type `device_type`.
    pub fn for_virtio_device(device_type: u32) -> Option<ThreadKind> {
        match device_type {
            1 => Some(ThreadKind::NetWorker),
            2 => Some(ThreadKind::BlockWorker),
            4 => Some(ThreadKind::RngWorker),
            _ => None,
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in this module).
    #[error("building the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    /// The kernel refused the filter.
    #[error("installing the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, String),
}

// ioctl request numbers (`_IOC(dir, type, nr, size)`), for the ones the crates do not export.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xAE;
const KVM_RUN: u64 = ioc(IOC_NONE, KVMIO, 0x80, 0);
const KVM_GET_REGS: u64 = ioc(
    IOC_READ,
    KVMIO,
    0x81,
    std::mem::size_of::<kvm_bindings::kvm_regs>(),
);
const KVM_GET_SREGS: u64 = ioc(
    IOC_READ,
    KVMIO,
    0x83,
    std::mem::size_of::<kvm_bindings::kvm_sregs>(),
);
const KVM_TRANSLATE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    KVMIO,
    0x85,
    std::mem::size_of::<kvm_bindings::kvm_translation>(),
);

const fn ior<T>(nr: u64) -> u64 {
    ioc(IOC_READ, KVMIO, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(IOC_READ | IOC_WRITE, KVMIO, nr, std::mem::size_of::<T>())
}

/// What a parked vCPU reads of itself for a snapshot (`KVM_GET_*` on the vCPU fd).
const VCPU_STATE_IOCTLS: &[u64] = &[
    iowr::<kvm_bindings::kvm_msrs>(0x88),
    ior::<kvm_bindings::kvm_lapic_state>(0x8e),
    iowr::<kvm_bindings::kvm_cpuid2>(0x91),
    ior::<kvm_bindings::kvm_mp_state>(0x98),
    ior::<kvm_bindings::kvm_vcpu_events>(0x9f),
    ior::<kvm_bindings::kvm_debugregs>(0xa1),
    ior::<kvm_bindings::kvm_xsave>(0xa4),
    ior::<kvm_bindings::kvm_xcrs>(0xa6),
];

/// What a snapshot reads of the VM (`KVM_GET_*` on the VM fd).
const VM_STATE_IOCTLS: &[u64] = &[
    iowr::<kvm_bindings::kvm_irqchip>(0x62),
    ior::<kvm_bindings::kvm_clock_data>(0x7c),
    ior::<kvm_bindings::kvm_pit_state2>(0x9f),
];

/// System calls every thread may make: the runtime's and the allocator's needs.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Duplicating an fd the thread already has (eventfd clones).
    libc::SYS_fcntl,
];

/// Terminal ioctls, allowed everywhere so that the SIGSYS handler can restore the terminal
/// whichever thread broke its filter.
const TERMINAL_IOCTLS: &[u64] = &[libc::TCGETS, libc::TCSETS, libc::TCSETSW, libc::TCSETSF];

/// TAP ioctls: offloads (set when the guest's driver starts and at reset) and the header
/// size (put back on a user's own tap when it is closed).
const TAP_IOCTLS: &[u64] = &[
    libc::TUNSETOFFLOAD,
    libc::TUNSETVNETHDRSZ,
    libc::TUNGETVNETHDRSZ,
];

fn allowed(kind: ThreadKind) -> (Vec<i64>, Vec<u64>) {
    let mut calls = COMMON.to_vec();
    let mut ioctls = TERMINAL_IOCTLS.to_vec();
    let epoll = [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_create1,
    ];
    match kind {
        ThreadKind::Vcpu => {
            ioctls.extend([KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_TRANSLATE]);
            // Read by the vCPU itself, parked, when the VM is snapshotted.
            ioctls.extend(VCPU_STATE_IOCTLS);
            // The guest's driver starts a NIC (and resets it) through an MMIO write,
            // handled on the vCPU thread.
            ioctls.extend(TAP_IOCTLS);
        }
        ThreadKind::Vmm => {
            calls.extend(epoll);
            calls.extend([
                libc::SYS_timerfd_settime,
                libc::SYS_timerfd_gettime,
                libc::SYS_tgkill,
            ]);
        }
        ThreadKind::BlockWorker => {
            calls.extend(epoll);
            calls.extend([
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_fallocate,
                // The rate limiter's timer.
                libc::SYS_timerfd_settime,
            ]);
        }
        ThreadKind::NetWorker => {
            calls.extend(epoll);
            calls.extend([libc::SYS_readv, libc::SYS_writev, libc::SYS_timerfd_settime]);
            ioctls.extend(TAP_IOCTLS);
        }
        ThreadKind::RngWorker => calls.extend(epoll),
        ThreadKind::ConsoleOutput => {}
        ThreadKind::Api => {
            calls.extend(epoll);
            calls.extend([
                // The socket and its clients.
                libc::SYS_accept4,
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_recvmsg,
                libc::SYS_sendmsg,
                libc::SYS_shutdown,
                libc::SYS_setsockopt,
                libc::SYS_getsockopt,
                libc::SYS_tgkill,
                // Snapshots: a directory of files, written sparse and synced.
                libc::SYS_openat,
                libc::SYS_mkdir,
                libc::SYS_mkdirat,
                libc::SYS_statx,
                libc::SYS_newfstatat,
                libc::SYS_fstat,
                libc::SYS_lseek,
                libc::SYS_pwrite64,
                libc::SYS_pwritev,
                libc::SYS_ftruncate,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_rename,
                libc::SYS_renameat,
                libc::SYS_renameat2,
                libc::SYS_unlink,
                libc::SYS_unlinkat,
                libc::SYS_rmdir,
                libc::SYS_getdents64,
                libc::SYS_mincore,
                libc::SYS_getcwd,
                libc::SYS_readlink,
            ]);
            ioctls.extend(VM_STATE_IOCTLS);
            ioctls.extend(TAP_IOCTLS);
        }
        ThreadKind::Frontend => {
            calls.extend(epoll);
            calls.extend([
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_timerfd_create,
                libc::SYS_timerfd_settime,
                libc::SYS_timerfd_gettime,
                libc::SYS_tgkill,
                libc::SYS_sigaltstack,
            ]);
            ioctls.push(libc::TIOCGWINSZ);
            // Dropping the VM puts a user's tap back as found.
            ioctls.extend(TAP_IOCTLS);
        }
    }
    (calls, ioctls)
}

/// The compiled filter for `kind` (`None` with [`SeccompMode::Off`]).
pub fn filter(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let on_mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let build = |e: &dyn std::fmt::Display| SeccompError::Build(kind, e.to_string());
    let (calls, ioctls) = allowed(kind);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.into_iter().map(|c| (c, Vec::new())).collect();
    let ioctl_rules = ioctls
        .into_iter()
        .map(|request| {
            // The kernel reads the request as a 32-bit `unsigned int`.
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .map_err(|e| build(&e))?;
            SeccompRule::new(vec![cond]).map_err(|e| build(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(rules, on_mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| build(&e))?;
    let program: BpfProgram = filter.try_into().map_err(|e| build(&e))?;
    Ok(Some(program))
}

thread_local! {
    /// The thread's name as the SIGSYS handler prints it (set when the filter goes on;
    /// a const-initialized thread local is a plain TLS read, fine in a signal handler).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Install `program` (from [`filter`]) on the calling thread, whose name the handler will
/// print if it breaks the filter. `None` does nothing.
pub fn apply(
    kind: ThreadKind,
    name: &str,
    program: Option<&BpfProgram>,
) -> Result<(), SeccompError> {
    let Some(program) = program else {
        return Ok(());
    };
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set(buf));
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind, e.to_string()))
}

/// Build and install the filter for `kind` on the calling thread.
pub fn apply_kind(kind: ThreadKind, name: &str, mode: SeccompMode) -> Result<(), SeccompError> {
    apply(kind, name, filter(kind, mode)?.as_ref())
}

/// A function the SIGSYS handler calls before exiting (the front-end's terminal restore).
static VIOLATION_HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static HANDLER_INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// Exit code after a filter violation (the same as a panic: minivmm itself failed).
pub const VIOLATION_EXIT_CODE: i32 = 4;

/// Have the SIGSYS handler call `hook` (which must be async-signal-safe and use only
/// `write` and terminal ioctls) before the process exits.
pub fn set_violation_hook(hook: fn()) {
    VIOLATION_HOOK.store(hook as *mut (), Ordering::SeqCst);
}

/// Install the process-wide SIGSYS handler (idempotent). Called before filters go on.
pub fn install_sigsys_handler() -> std::io::Result<()> {
    if HANDLER_INSTALLED.swap(1, Ordering::SeqCst) == 1 {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; we set the
    // handler and SA_SIGINFO before passing it to the kernel, which copies it.
    let ret = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if ret != 0 {
        HANDLER_INSTALLED.store(0, Ordering::SeqCst);
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Format the violation line into `out` without allocating; returns its length.
fn violation_line(out: &mut [u8; 192], thread: &[u8], syscall: i64) -> usize {
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if len < out.len() {
                out[len] = b;
                len += 1;
            }
        }
    };
    push(b"\r\nminivmm: seccomp: thread '");
    let name_len = thread.iter().position(|&b| b == 0).unwrap_or(thread.len());
    push(&thread[..name_len]);
    push(b"' made system call ");
    let mut digits = [0u8; 20];
    let mut n = syscall.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if syscall < 0 {
        push(b"-");
    }
    push(&digits[i..]);
    push(b", which its filter forbids; exiting (--seccomp log finds every such call)\r\n");
    len
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The SIGSYS siginfo: signo, errno, code (3 ints, padded to 16 bytes), then the
    // `_sigsys` union member: call address (8 bytes), syscall number (int), arch.
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passed a valid siginfo_t for SIGSYS; offset 24 is inside it
        // (it is 128 bytes) and holds `si_syscall`, an int.
        i64::from(unsafe { info.cast::<u8>().add(24).cast::<libc::c_int>().read() })
    };
    let name = THREAD_NAME.with(|c| c.get());
    let mut line = [0u8; 192];
    let len = violation_line(&mut line, &name, syscall);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `line[..len]` is a live buffer.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len);
    }
    let hook = VIOLATION_HOOK.load(Ordering::SeqCst);
    if !hook.is_null() {
        // SAFETY: only `set_violation_hook` stores here, always a valid `fn()`.
        let hook: fn() = unsafe { std::mem::transmute::<*mut (), fn()>(hook) };
        hook();
    }
    // SAFETY: see above.
    unsafe { libc::_exit(VIOLATION_EXIT_CODE) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_and_ioctl_numbers_match_the_kernel_headers() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Vmm,
            ThreadKind::BlockWorker,
            ThreadKind::NetWorker,
            ThreadKind::RngWorker,
            ThreadKind::Frontend,
            ThreadKind::ConsoleOutput,
            ThreadKind::Api,
        ] {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                assert!(filter(kind, mode).unwrap().is_some());
            }
            assert!(filter(kind, SeccompMode::Off).unwrap().is_none());
        }
        // From <linux/kvm.h>, as `strace` decodes them.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
    }

    #[test]
    fn the_violation_line_names_thread_and_call() {
        let mut out = [0u8; 192];
        let mut name = [0u8; 16];
        name[..5].copy_from_slice(b"vcpu0");
        let n = violation_line(&mut out, &name, 257);
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert!(
            text.contains("thread 'vcpu0' made system call 257, which its filter forbids"),
            "{text}"
        );
    }

    /// A thread under a worker's rules keeps doing what it needs (allocate, sleep) and is
    /// refused `openat`; other threads are not affected.
    #[test]
    fn a_filtered_thread_cannot_open_files() {
        std::thread::spawn(|| {
            // Same rules, but a refused call fails with EPERM instead of SIGSYS, so that
            // the test process survives to check it.
            let (calls, ioctls) = allowed(ThreadKind::RngWorker);
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
                calls.into_iter().map(|c| (c, Vec::new())).collect();
            let ioctl_rules = ioctls
                .into_iter()
                .map(|r| {
                    SeccompRule::new(vec![SeccompCondition::new(
                        1,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        r,
                    )
                    .unwrap()])
                    .unwrap()
                })
                .collect();
            rules.insert(libc::SYS_ioctl, ioctl_rules);
            let program: BpfProgram = SeccompFilter::new(
                rules,
                SeccompAction::Errno(libc::EPERM as u32),
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .unwrap()
            .try_into()
            .unwrap();
            seccompiler::apply_filter(&program).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status");
            assert_eq!(
                status.unwrap_err().raw_os_error(),
                Some(libc::EPERM),
                "openat must be refused"
            );
            // What the thread may do still works.
            let v = vec![1u8; 1 << 20];
            assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 1 << 20);
            std::thread::sleep(std::time::Duration::from_millis(1));
        })
        .join()
        .unwrap();
        // Other threads are not affected.
        assert!(std::fs::read_to_string("/proc/thread-self/status").is_ok());
    }

    /// Run by `a_violation_ends_the_process_with_one_line_and_exit_code_4` in a child
    /// process (this same test binary): break the vCPU filter in enforce mode.
    #[test]
    #[ignore = "run in a child process by the test below"]
    fn violation_child() {
        if std::env::var_os("MINIVMM_SECCOMP_CHILD").is_none() {
            return;
        }
        install_sigsys_handler().unwrap();
        std::thread::Builder::new()
            .name("probe".into())
            .spawn(|| {
                apply_kind(ThreadKind::Vcpu, "vcpu9", SeccompMode::Enforce).unwrap();
                // openat: not in any filter. The handler ends the process right here.
                let _ = std::fs::File::open("/etc/hostname");
                unreachable!("the forbidden openat returned");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_violation_ends_the_process_with_one_line_and_exit_code_4() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::violation_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MINIVMM_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(VIOLATION_EXIT_CODE), "{stderr}");
        let line = format!(
            "minivmm: seccomp: thread 'vcpu9' made system call {}, which its filter forbids",
            libc::SYS_openat
        );
        assert!(stderr.contains(&line), "{stderr}");
    }
}
