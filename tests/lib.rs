//! Helpers for minivmm's integration and end-to-end tests: where the `minivmm` binary and
//! the test guest are, booting the test guest with budgets that follow this host's speed
//! ([`speed`]), sharing the host's cores between VMs ([`CpuSlots`]), network namespaces
//! ([`NetNs`]) and scratch directories ([`TempDir`]).
//!
//! The test guest (kernel, initramfs, rootfs image) comes from `resources/guest/build.sh`,
//! which caches its outputs; set `MINIVMM_TEST_GUEST` to a directory holding them to skip
//! the script (the test runner `./test.sh` does that after building once). How the
//! deadlines work, and how to run one test alone, is in `tests/README.md`.

pub mod speed;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub use speed::Budget;
use speed::BudgetClock;

/// The line the test guest's `/init` prints once user space is up.
pub const MARKER: &str = "minivmm-guest: init ready";

/// What the guest kernel logs when a busybox program hits the PVM host bug described in
/// tests/README.md: a segfault at address 0 in glibc's `__ctype_init`.
pub const PVM_BUG_SIGNATURE: &str = "segfault at 0 ip 00000000004a4d02";

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `minivmm` binary of the same profile as the running test (build it first:
/// `cargo build -p minivmm`, which `./test.sh` does).
pub fn minivmm_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MINIVMM_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/minivmm
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("minivmm");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p minivmm, or run ./test.sh)",
        bin.display()
    );
    bin
}

/// The directory with the test guest's `vmlinux`, `bzImage`, `vmlinux-acpi-only`,
/// `initramfs.cpio` and `rootfs.ext4`, building them on first use.
pub fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("MINIVMM_TEST_GUEST") {
            return PathBuf::from(d);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("resources/guest/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running resources/guest/build.sh");
        assert!(out.status.success(), "resources/guest/build.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build.sh printed nothing")
                .trim(),
        )
    })
}

/// A file of the test guest, as a string for an argument list.
pub fn guest_file(name: &str) -> String {
    guest_dir().join(name).display().to_string()
}

// --- budgets ------------------------------------------------------------------------------

/// Base budget of a boot of the test guest to its init marker (disk root, 1 vCPU, 128 MiB)
/// on the reference host, where it takes ~10 s: four times that. Scaled by [`speed`].
pub const BOOT_BASE: Duration = Duration::from_secs(40);

/// The budget for a boot to the init marker plus `work` (reference-host time of what the
/// guest does after it, with margin), scaled for this host.
pub fn boot_budget(work: Duration) -> Budget {
    Budget::scaled(BOOT_BASE + work)
}

// --- processes that do not boot a guest ---------------------------------------------------

/// What a finished VM left behind.
#[derive(Debug)]
pub struct Finished {
    /// The exit status (None if it had to be killed at the deadline).
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout (the guest console).
    pub stdout: String,
    /// Everything it wrote to stderr (minivmm's log).
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// CPU time it used (user + system, all threads), as far as it could be read.
    pub cpu: Duration,
    /// The budget it ran under, if it booted a guest.
    pub budget: Option<Budget>,
}

impl Finished {
    /// The exit code, panicking with the output if it was killed or signalled.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!("minivmm did not exit by itself: {self}"),
        }
    }

    /// The value after `key=` at the start of a console line (the first such line), up to
    /// whitespace. Only line starts count: /init echoes the whole command, keys included,
    /// on its "running:" line, and the kernel echoes its command line.
    pub fn value(&self, key: &str) -> &str {
        let needle = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(needle.as_str()))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("'{needle}' not at a line start on the console: {self}"))
    }

    /// Whether a console line, trailing whitespace removed, is exactly `line`.
    pub fn has_line(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l.trim_end() == line)
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?} after {:.1?} (CPU {:.1?}",
            self.status, self.elapsed, self.cpu
        )?;
        if let Some(b) = &self.budget {
            write!(
                f,
                "; budget CPU {:.0?} / wall {:.0?}, speed factor {:.2}",
                b.cpu,
                b.wall,
                speed::factor()
            )?;
        }
        write!(f, ")")?;
        if self.stdout.contains(PVM_BUG_SIGNATURE) {
            write!(
                f,
                "\nNOTE: a guest program crashed in its C library's start-up: the PVM host \
                 bug described in tests/README.md (\"A PVM host bug\")"
            )?;
        }
        write!(
            f,
            "\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Start minivmm with `args`, stdin from /dev/null.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(minivmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting minivmm")
}

/// Wait for `child` (its stdout and stderr piped) until `deadline` (wall clock), killing
/// it then; collect its output. For processes that boot no guest themselves (minivmm on
/// bad input, the console tests, an ssh to a lab VM); a booting guest runs as a [`Vm`],
/// under a [`Budget`].
pub fn wait(child: Child, deadline: Duration) -> Finished {
    Vm::adopt(
        child,
        None,
        Budget {
            cpu: deadline,
            wall: deadline,
        },
    )
    .finish_unbudgeted()
}

/// Run minivmm with `args` to the end (or `deadline`, wall clock); see [`wait`].
pub fn run(args: &[&str], deadline: Duration) -> Finished {
    wait(spawn(args), deadline)
}

// --- sharing the host's cores -----------------------------------------------------------

/// Slots for vCPUs, one per host core, shared by every test process of a run through
/// `flock`ed files: a VM holds a slot per vCPU while it runs, so that no more vCPUs are in
/// flight than the host has cores, whatever runs the tests (cargo test with several
/// threads, nextest with several processes). A guest kernel under PVM's emulator is
/// CPU-bound: a third vCPU on two cores would only slow all three down.
pub struct CpuSlots {
    held: Vec<File>,
}

impl CpuSlots {
    /// Wait for `n` free slots and take them. Takers queue on one lock and the first in
    /// line holds it while it collects its slots, one as each comes free: a VM that needs
    /// two is not starved by a stream of VMs that need one, and takers never hold part of
    /// what they need while waiting behind each other. `n` above the core count is capped.
    pub fn take(n: usize) -> CpuSlots {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let n = n.clamp(1, cores);
        let dir = std::env::temp_dir().join("minivmm-test-cpus");
        std::fs::create_dir_all(&dir).unwrap();
        let open = |name: String| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(name))
                .unwrap()
        };
        let flock = |f: &File, op: i32| {
            // SAFETY: flock only takes a descriptor we own and a flag.
            unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
        };
        let queue = open("queue.lock".into());
        assert!(flock(&queue, libc::LOCK_EX), "flock queue.lock");
        let mut held: Vec<(usize, File)> = Vec::new();
        while held.len() < n {
            for i in 0..cores {
                if held.len() == n || held.iter().any(|(j, _)| *j == i) {
                    continue;
                }
                let f = open(format!("cpu{i}.lock"));
                if flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
                    held.push((i, f));
                }
            }
            if held.len() < n {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        flock(&queue, libc::LOCK_UN);
        CpuSlots {
            held: held.into_iter().map(|(_, f)| f).collect(),
        }
    }

    /// How many slots are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none are (never, once taken).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

// --- the test guest -------------------------------------------------------------------------

/// A boot of the test guest, as a list of minivmm arguments. By default: `vmlinux`, the
/// shared `rootfs.ext4` **read-only** as `/dev/vda` (minivmm then mounts it with
/// `root=/dev/vda ro`; `/tmp` is a tmpfs), 128 MiB, 1 vCPU, `--log-level info`.
///
/// A read-only root needs no copy and boots ~20 s faster than the initramfs, whose
/// unpacking runs in the emulator on PVM hosts; a test that writes to its root, or is about
/// the initrd, says so ([`Guest::writable_root`], [`Guest::initrd`]).
pub struct Guest {
    kernel: String,
    root: Root,
    cpus: u8,
    run: Option<String>,
    args: Vec<String>,
    work: Duration,
}

enum Root {
    SharedReadOnly,
    Copy(PathBuf),
    Initrd,
    None,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    /// The default boot (see the type's docs).
    pub fn new() -> Self {
        Self {
            kernel: "vmlinux".into(),
            root: Root::SharedReadOnly,
            cpus: 1,
            run: None,
            args: Vec::new(),
            work: Duration::ZERO,
        }
    }

    /// Boot `name` (a file of the guest directory: `bzImage`, `vmlinux-acpi-only`).
    pub fn kernel(mut self, name: &str) -> Self {
        self.kernel = name.into();
        self
    }

    /// The initramfs instead of a disk root.
    pub fn initrd(mut self) -> Self {
        self.root = Root::Initrd;
        self
    }

    /// A private, writable copy of `rootfs.ext4` in `dir` as the root (`root=/dev/vda rw`).
    pub fn writable_root(mut self, dir: &TempDir) -> Self {
        let p = dir.join("rootfs.ext4");
        std::fs::copy(guest_dir().join("rootfs.ext4"), &p).expect("copying rootfs.ext4");
        self.root = Root::Copy(p);
        self
    }

    /// No root file system from the guest directory at all (the test gives `--disk`s and
    /// a `root=` itself, or boots no user space).
    pub fn no_root(mut self) -> Self {
        self.root = Root::None;
        self
    }

    /// `--cpus n`.
    pub fn cpus(mut self, n: u8) -> Self {
        self.cpus = n;
        self
    }

    /// Run `cmd` in the guest (`minivmm_run="..."`; no double quotes in it), then reboot.
    pub fn run(mut self, cmd: &str) -> Self {
        assert!(
            !cmd.contains('"'),
            "the guest command cannot contain double quotes"
        );
        self.run = Some(cmd.into());
        self
    }

    /// Extra minivmm arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Reference-host time the guest needs after its init marker (with margin); added to
    /// [`BOOT_BASE`] for the VM's budget.
    pub fn work(mut self, base: Duration) -> Self {
        self.work = base;
        self
    }

    /// The budget this boot runs under: its CPU time is per vCPU (two busy vCPUs spend
    /// it twice as fast).
    pub fn budget(&self) -> Budget {
        let b = boot_budget(self.work);
        Budget {
            cpu: b.cpu * u32::from(self.cpus.max(1)),
            wall: b.wall,
        }
    }

    /// The full minivmm argument list.
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--kernel".into(), guest_file(&self.kernel)];
        match &self.root {
            Root::SharedReadOnly => {
                a.push("--disk".into());
                a.push(format!("{},readonly=on", guest_file("rootfs.ext4")));
            }
            Root::Copy(p) => {
                a.push("--disk".into());
                a.push(p.display().to_string());
            }
            Root::Initrd => {
                a.push("--initrd".into());
                a.push(guest_file("initramfs.cpio"));
            }
            Root::None => {}
        }
        a.extend(["--memory".into(), "128M".into()]);
        a.extend(["--cpus".into(), self.cpus.to_string()]);
        a.extend(["--log-level".into(), "info".into()]);
        a.extend(self.args.iter().cloned());
        if let Some(cmd) = &self.run {
            a.push("--cmdline".into());
            a.push(format!("minivmm_run=\"{cmd}\""));
        }
        a
    }

    /// Start it (waiting for CPU slots first), inside `ns` if given.
    pub fn start_in(&self, ns: Option<&NetNs>) -> Vm {
        let slots = CpuSlots::take(self.cpus.into());
        let argv = self.argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        Vm::start(ns, &argv, self.budget(), slots)
    }

    /// Start it.
    pub fn start(&self) -> Vm {
        self.start_in(None)
    }

    /// Boot it and wait for the end (or the budget).
    pub fn boot(&self) -> Finished {
        self.start().finish()
    }
}

/// Run `cmds` (several VMs' [`Guest`]s) at the same time, taking the CPU slots for all of
/// them at once.
pub fn start_together(ns: Option<&NetNs>, guests: &[&Guest]) -> Vec<Vm> {
    let total: usize = guests.iter().map(|g| usize::from(g.cpus)).sum();
    let mut all = CpuSlots::take(total);
    guests
        .iter()
        .map(|g| {
            let mine = CpuSlots {
                held: all
                    .held
                    .drain(..usize::from(g.cpus).min(all.held.len()))
                    .collect(),
            };
            let argv = g.argv();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            Vm::start(ns, &argv, g.budget(), mine)
        })
        .collect()
}

/// (name, `Seccomp:` field) of every thread of process `pid`.
pub fn seccomp_of_threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:")));
    }
    out
}

// --- the Debian server image -----------------------------------------------------------

/// Which tests on the Debian server image run, from `MINIVMM_TEST_SERVERS`: unset or `0`
/// none; `lab` the `ssh-pair` lab only (tests/labs.rs: two Debian VMs; `./test.sh`'s
/// default, so CI runs it); `1` also tests/debian.rs (two more, `./test.sh --servers`).
/// They need the image, which `resources/guest/debian.sh` builds (minutes, once), and each
/// boots Debian VMs (minutes each on a PVM host). A test left out says so and passes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Servers {
    /// No test boots the Debian image.
    None,
    /// The `ssh-pair` lab (and, with `MINIVMM_TEST_ALL_LABS=1`, the bigger labs).
    Lab,
    /// The labs and tests/debian.rs.
    All,
}

/// The level `MINIVMM_TEST_SERVERS` asks for (see [`Servers`]).
fn servers_level() -> Servers {
    match std::env::var("MINIVMM_TEST_SERVERS").as_deref() {
        Ok("1") => Servers::All,
        Ok("lab") => Servers::Lab,
        _ => Servers::None,
    }
}

/// Whether the Debian server tests at `level` run; if not, says how to run them.
pub fn servers(level: Servers) -> bool {
    let on = servers_level() >= level;
    if !on {
        let how = match level {
            Servers::All => "MINIVMM_TEST_SERVERS=1 (./test.sh --servers)",
            _ => "MINIVMM_TEST_SERVERS=lab (./test.sh does)",
        };
        eprintln!("SKIPPED: set {how} to run this test on the Debian server image");
    }
    on
}

/// The Debian server image's directory (`vmlinux`, `debian.img`): `$MINIVMM_DEBIAN_DIR`,
/// else built (or found in the cache) by `resources/guest/debian.sh`.
pub fn debian_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("MINIVMM_DEBIAN_DIR") {
            return PathBuf::from(d);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("resources/guest/debian.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running resources/guest/debian.sh");
        assert!(out.status.success(), "resources/guest/debian.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
}

// --- a running minivmm -------------------------------------------------------------------

/// A running minivmm whose console and log are collected while it runs, so a test can wait
/// for a line (e.g. the guest's init marker) and then act (send a signal, connect). Its
/// [`Budget`] counts from the start; a VM still running when the test drops it is killed.
pub struct Vm {
    child: Option<Child>,
    /// The console input: an empty pipe, held open for the VM's life.
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    clock: BudgetClock,
    budget: Budget,
    /// Released when the VM ends.
    slots: Option<CpuSlots>,
}

impl Vm {
    /// Start minivmm with `args`, inside network namespace `ns` if given (`ip netns exec`
    /// execs minivmm, so the pid is minivmm's), under `budget`, holding `slots`.
    pub fn start(ns: Option<&NetNs>, args: &[&str], budget: Budget, slots: CpuSlots) -> Vm {
        let mut cmd = match ns {
            Some(ns) => ns.command(&minivmm_bin()),
            None => Command::new(minivmm_bin()),
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting minivmm");
        Self::adopt(child, Some(slots), budget)
    }

    fn adopt(mut child: Child, slots: Option<CpuSlots>, budget: Budget) -> Vm {
        let collect = |pipe: Option<Box<dyn Read + Send>>, sink: Arc<Mutex<String>>| {
            std::thread::spawn(move || {
                let Some(pipe) = pipe else { return };
                let mut r = BufReader::new(pipe);
                let mut line = Vec::new();
                while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            })
        };
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(
                child
                    .stdout
                    .take()
                    .map(|o| Box::new(o) as Box<dyn Read + Send>),
                stdout.clone(),
            ),
            collect(
                child
                    .stderr
                    .take()
                    .map(|e| Box::new(e) as Box<dyn Read + Send>),
                stderr.clone(),
            ),
        ];
        Vm {
            clock: BudgetClock::start(child.id()),
            stdin: child.stdin.take(),
            child: Some(child),
            stdout,
            stderr,
            readers,
            budget,
            slots,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Write `bytes` to the console input.
    pub fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("console input");
        stdin.write_all(bytes).expect("writing to the console");
    }

    /// minivmm's log (stderr) so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until the console shows `needle`: true then, false if the VM ended without it
    /// or its budget ran out.
    pub fn wait_for(&mut self, needle: &str) -> bool {
        let out = self.stdout.clone();
        self.wait_until(|| out.lock().unwrap().contains(needle))
    }

    /// Like [`Vm::wait_for`], in minivmm's log (stderr).
    pub fn wait_for_log(&mut self, needle: &str) -> bool {
        let err = self.stderr.clone();
        self.wait_until(|| err.lock().unwrap().contains(needle))
    }

    fn wait_until(&mut self, mut cond: impl FnMut() -> bool) -> bool {
        loop {
            if cond() {
                return true;
            }
            let ended = self.child.as_mut().unwrap().try_wait().unwrap().is_some();
            if ended || self.clock.spent(&self.budget) {
                // Give the readers a moment for the last output.
                std::thread::sleep(Duration::from_millis(200));
                return cond();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the VM has used up its budget (CPU or wall time).
    pub fn over_budget(&mut self) -> bool {
        self.clock.spent(&self.budget)
    }

    /// Whether minivmm is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Send `signal` to minivmm.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Wait for the end (killing it when its budget runs out) and collect its output.
    pub fn finish(self) -> Finished {
        let f = self.finish_inner(true);
        record(&f);
        f
    }

    fn finish_unbudgeted(self) -> Finished {
        self.finish_inner(false)
    }

    fn finish_inner(mut self, budgeted: bool) -> Finished {
        let mut child = self.child.take().unwrap();
        let status = loop {
            // Read the CPU time while the process can still be seen.
            self.clock.cpu();
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if self.clock.spent(&self.budget) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(self.stdin.take());
        drop(self.slots.take());
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Finished {
            status,
            stdout: std::mem::take(&mut *self.stdout.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
            elapsed: self.clock.wall(),
            cpu: self.clock.cpu(),
            budget: budgeted.then_some(self.budget),
        }
    }
}

impl Drop for Vm {
    /// A test that fails half-way must not leave its VM running.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Append one line about a finished boot to `$MINIVMM_TEST_SUMMARY` (set by `./test.sh`,
/// which prints the run's summary from it): test name, wall and CPU seconds, exit status.
fn record(f: &Finished) {
    let Ok(path) = std::env::var("MINIVMM_TEST_SUMMARY") else {
        return;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("?")
        .replace(char::is_whitespace, "_");
    let test = if test == "main" {
        // nextest runs each test alone in a process: `<binary> --exact <name> ...`.
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == "--exact")
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or(test)
    } else {
        test
    };
    let status = match f.status.and_then(|s| s.code()) {
        Some(c) => c.to_string(),
        None => "killed".into(),
    };
    let line = format!(
        "boot {} {} {:.1} {:.1} {}\n",
        std::env::args()
            .next()
            .and_then(|p| Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
            .split('-')
            .next()
            .unwrap_or(""),
        test,
        f.elapsed.as_secs_f64(),
        f.cpu.as_secs_f64(),
        status
    );
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

// --- tiny guests' console ------------------------------------------------------------------

/// Console output collected in memory (the writer of a tiny guest's COM1).
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of what was written.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

// --- scratch directories and namespaces ------------------------------------------------------

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create one whose name starts with `prefix`.
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// A path inside.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace for one test (`mvm<tag>-<pid>-<n>`), with `lo` up, removed with
/// everything in it on drop. Declare it before the VMs that run in it, so that they are
/// dropped (killed) first.
pub struct NetNs(pub String);

impl NetNs {
    /// Create one.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("mvm{tag}-{}-{n}", std::process::id());
        // A namespace left by an earlier, killed run of the same pid: remove it quietly.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("running ip netns add (iproute2)");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// Run `program args` inside the namespace and return its output; panics on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(Path::new(program))
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{program} {args:?} in {} failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS args`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The names of all interfaces in the namespace.
    pub fn links(&self) -> Vec<String> {
        // "5: mvm123n0: <BROADCAST,...> ..." (veth/vlan names carry "@peer").
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Run minivmm with `args` in the namespace to the end (for commands that do not boot).
    pub fn minivmm(&self, args: &[&str]) -> Output {
        let mut c = self.command(&minivmm_bin());
        c.args(args).stdin(Stdio::null());
        c.output().expect("starting minivmm")
    }

    /// `minivmm network create BRIDGE [--cidr CIDR]`, which must succeed.
    pub fn create_bridge(&self, bridge: &str, cidr: Option<&str>) {
        let mut args = vec!["network", "create", bridge];
        if let Some(c) = cidr {
            args.extend(["--cidr", c]);
        }
        let out = self.minivmm(&args);
        assert!(
            out.status.success(),
            "minivmm network create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run `f` on a thread that has joined the namespace (`setns` acts on the calling
    /// thread only): host-side sockets opened there live in the namespace.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("opening the namespace");
            // SAFETY: setns() takes an fd we own and a flag; it changes only this thread's
            // network namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

// --- test data ---------------------------------------------------------------------------

/// `len` bytes of a seeded xorshift64 sequence: reproducible, and different at every
/// offset, so a misplaced or dropped sector or segment changes the hash.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// SHA-256 of `data` as lowercase hex, by the host's `sha256sum` (coreutils).
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

// --- a tiny guest ----------------------------------------------------------------------------

/// The line [`tiny_kernel`]'s guest prints on COM1.
pub const TINY_GUEST_LINE: &str = "tiny guest up";

/// Writes `tiny.elf` into `dir` and returns its path: a hand-assembled ELF kernel that
/// prints [`TINY_GUEST_LINE`] on COM1 and halts with interrupts off. Its VM stays running
/// (a vCPU in `hlt` with nothing to wake it) at no CPU cost, in a few MiB of host memory:
/// what tests that need many running VMs, but no Linux, start.
pub fn tiny_kernel(dir: &TempDir) -> PathBuf {
    let msg = TINY_GUEST_LINE.as_bytes();
    #[rustfmt::skip]
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03,             //  0: mov dx, 0x3f8
        0x48, 0x8d, 0x35, 15, 0, 0, 0,      //  4: lea rsi, [rip + 15] (msg)
        0xb9, msg.len() as u8 + 1, 0, 0, 0, // 11: mov ecx, len (with the newline)
        0xac,                               // 16: next: lodsb
        0xee,                               // 17: out dx, al
        0xff, 0xc9,                         // 18: dec ecx
        0x75, 0xfa,                         // 20: jnz next
        0xfa,                               // 22: cli
        0xf4,                               // 23: halt: hlt
        0xeb, 0xfd,                         // 24: jmp halt
    ];
    code.extend_from_slice(msg); // 26
    code.push(b'\n');
    let path = dir.join("tiny.elf");
    std::fs::write(&path, boot::loader::elf_image(0x10_0000, &code, 0x1000)).unwrap();
    path
}
