//! Helpers for minivmm's integration and end-to-end tests: where the `minivmm` binary and
//! the test guest are, and running a VM with a deadline.
//!
//! The test guest (kernel, initramfs, rootfs image) comes from `resources/guest/build.sh`,
//! which caches its outputs; set `MINIVMM_TEST_GUEST` to a directory holding them to skip
//! the script (the test runner `./test.sh` does that after building once).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// The directory with the test guest's `vmlinux`, `bzImage`, `initramfs.cpio` and
/// `rootfs.ext4`, building them on first use.
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
}

impl Finished {
    /// The exit code, panicking with the output if it was killed or signalled.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!("minivmm did not exit by itself: {self}"),
        }
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
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

/// Wait for `child` until `deadline`, killing it then; collect its output.
pub fn wait(mut child: Child, deadline: Duration) -> Finished {
    let start = Instant::now();
    // Either stream may go elsewhere (a terminal): then it reads as empty here.
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let t_out = collect(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let t_err = collect(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// Run minivmm with `args` to the end (or `deadline`).
pub fn run(args: &[&str], deadline: Duration) -> Finished {
    wait(spawn(args), deadline)
}

/// How long a Linux boot may take on this host: generous on PVM hosts, where guest kernel
/// code is emulated, and overridable with `MINIVMM_TEST_BOOT_TIMEOUT` (seconds).
pub fn boot_deadline() -> Duration {
    let secs = std::env::var("MINIVMM_TEST_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create one whose name starts with `prefix`.
    pub fn new(prefix: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

/// A running minivmm whose output is collected while it runs, so a test can wait for a
/// line (e.g. the guest's init marker) and then act (send a signal, connect).
pub struct Watched {
    child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    start: Instant,
}

impl Watched {
    /// Start minivmm with `args` (stdin from /dev/null) and collect its output.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(None, args)
    }

    /// Like [`Watched::start`], inside network namespace `ns` if given (`ip netns exec`
    /// execs minivmm, so the pid is minivmm's).
    pub fn start_in(ns: Option<&NetNs>, args: &[&str]) -> Self {
        let bin = minivmm_bin();
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.0]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting minivmm");
        let collect = |r: Box<dyn Read + Send>, into: std::sync::Arc<std::sync::Mutex<String>>| {
            std::thread::spawn(move || {
                let mut r = r;
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    into.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap()), stdout.clone()),
            collect(Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
            start: Instant::now(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until the guest console shows `needle`; false if the deadline passed or the
    /// process ended first.
    pub fn wait_for(&mut self, needle: &str, deadline: Duration) -> bool {
        loop {
            if self.stdout.lock().unwrap().contains(needle) {
                return true;
            }
            if self.start.elapsed() > deadline || self.child.try_wait().unwrap().is_some() {
                return self.stdout.lock().unwrap().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `signal` to minivmm.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Wait for the end (killing it at `deadline`, counted from the start) and collect.
    pub fn finish(mut self, deadline: Duration) -> Finished {
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if self.start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap());
        Finished {
            status,
            stdout,
            stderr,
            elapsed: self.start.elapsed(),
        }
    }
}

impl Drop for Watched {
    /// A test that fails half-way must not leave its VM running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A network namespace for one test, removed (with everything in it) on drop.
pub struct NetNs(pub String);

impl NetNs {
    /// Create `mvm<tag>-<pid>`.
    pub fn new(tag: &str) -> Self {
        let name = format!("mvm{tag}-{}", std::process::id());
        // A namespace left by an earlier, killed run of the same pid: remove it quietly.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "ip netns add {name} failed");
        Self(name)
    }

    /// Run `program args` inside the namespace and return its output; panics on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, program])
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
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
