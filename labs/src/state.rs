//! The state directory: everything `up` makes and `down`, `ls`, `ssh` and `console` read,
//! so that any of them works from the files alone (after `up` was killed, or after the
//! host rebooted).
//!
//! ```text
//! STATE/labs/LAB/
//!     lab.toml            the lab file as `up` read it (and `source`: where it was)
//!     lock                flock()ed by up and down, so that they never overlap
//!     key, key.pub        the lab's SSH key pair (ed25519)
//!     known_hosts         every VM's host key, under its name and addresses
//!     ca.crt, ca.key      the lab's CA (when a VM has `certificate = true`)
//!     bridges             the bridges this lab created, one per line (down removes them)
//!     vms/VM/
//!         disk.img        the VM's own copy of its base image
//!         NAME.img        its extra disks
//!         seed/           its cloud-init seed (user-data, meta-data, network-config)
//!         ssh_host_ed25519_key{,.pub}   its host key, made on the host
//!         console.log     the serial console's output (appended, every boot)
//!         console.in      a FIFO: what `minivmm console` types goes to the guest
//!         minivmm.log     minivmm's own messages
//!         api.sock        its control API
//!         config.json     the VM's command line, as started
//!         pid             minivmm's process id (keeper.pid: the keeper waiting for it)
//!         started         boot id, start time and console offset of the current run
//!         ready           seconds from start to cloud-init's final message
//!         exit            how the last run ended ("code N" or "signal N")
//!         stopping        down asked it to stop (an ending then is not a crash)
//! ```
//!
//! The directory is `--state-dir`, else `$MINIVMM_STATE_DIR`, else `/var/lib/minivmm` for
//! root and `$XDG_STATE_HOME/minivmm` (default `~/.local/state/minivmm`) for others.
//!
//! A process is only taken for the VM's if `/proc/PID/cmdline` is a minivmm with this VM's
//! `--api-sock`: a pid file that survived a reboot, or whose number was reused, is never
//! signalled.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default state directory (see the module docs).
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MINIVMM_STATE_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/minivmm");
    }
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("minivmm"),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".local/state/minivmm"),
    }
}

/// A lab's directory.
#[derive(Clone, Debug)]
pub struct LabDir {
    /// `STATE/labs/LAB`.
    pub path: PathBuf,
    /// The lab's name.
    pub name: String,
}

impl LabDir {
    /// The directory of lab `name` under `state`.
    pub fn new(state: &Path, name: &str) -> Self {
        Self {
            path: state.join("labs").join(name),
            name: name.to_string(),
        }
    }

    /// A file of the lab.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// VM `vm`'s directory.
    pub fn vm(&self, vm: &str) -> VmDir {
        VmDir {
            path: self.path.join("vms").join(vm),
            name: vm.to_string(),
        }
    }

    /// The VMs that have a directory, sorted by name.
    pub fn vm_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The bridges this lab created.
    pub fn bridges(&self) -> Vec<String> {
        read(&self.file("bridges"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Record `bridge` as made by this lab (before it is made: a kill in between leaves a
    /// record of a bridge that may not exist, which down ignores, never the reverse).
    pub fn add_bridge(&self, bridge: &str) -> std::io::Result<()> {
        let mut all = self.bridges();
        if !all.iter().any(|b| b == bridge) {
            all.push(bridge.to_string());
        }
        write_atomic(&self.file("bridges"), all.join("\n").as_bytes())
    }

    /// Forget `bridge` (down removed it).
    pub fn remove_bridge(&self, bridge: &str) -> std::io::Result<()> {
        let all: Vec<String> = self.bridges().into_iter().filter(|b| b != bridge).collect();
        write_atomic(&self.file("bridges"), all.join("\n").as_bytes())
    }

    /// Take the lab's lock (held until the file is dropped).
    pub fn lock(&self) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.path)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.file("lock"))?;
        // SAFETY: flock takes a descriptor we own and a flag.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f)
    }
}

/// The labs that have a directory under `state`, sorted.
pub fn lab_names(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("labs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("lab.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A VM's directory.
#[derive(Clone, Debug)]
pub struct VmDir {
    /// `STATE/labs/LAB/vms/VM`.
    pub path: PathBuf,
    /// The VM's name.
    pub name: String,
}

/// What a VM is doing, as far as the state directory and `/proc` tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Never started.
    Created,
    /// Running, cloud-init not finished yet.
    Booting,
    /// Running, cloud-init finished.
    Running,
    /// Ended after `down` asked, or powered off by the guest.
    Stopped,
    /// Ended on its own with a failure, or vanished (killed, or the host rebooted).
    Crashed(String),
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Created => f.write_str("created"),
            VmState::Booting => f.write_str("booting"),
            VmState::Running => f.write_str("running"),
            VmState::Stopped => f.write_str("stopped"),
            VmState::Crashed(why) => write!(f, "crashed ({why})"),
        }
    }
}

impl VmDir {
    /// A file of the VM.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Its control socket.
    pub fn api_sock(&self) -> PathBuf {
        self.file("api.sock")
    }

    /// The pid of its running minivmm, checked against `/proc/PID/cmdline`.
    pub fn pid(&self) -> Option<u32> {
        let pid = read(&self.file("pid"))?.trim().parse().ok()?;
        is_our_minivmm(pid, &self.api_sock()).then_some(pid)
    }

    /// The pid of its keeper, if that still runs (checked against its cmdline).
    pub fn keeper_pid(&self) -> Option<u32> {
        let pid: u32 = read(&self.file("keeper.pid"))?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let want = self.path.as_os_str().as_encoded_bytes();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.iter().any(|a| *a == b"lab-keeper") && args.contains(&want)).then_some(pid)
    }

    /// Its state.
    pub fn state(&self) -> VmState {
        if self.pid().is_some() {
            return if self.is_ready() {
                VmState::Running
            } else {
                VmState::Booting
            };
        }
        if !self.file("started").exists() {
            return VmState::Created;
        }
        let stopping = self.file("stopping").exists();
        match read(&self.file("exit")).as_deref().map(str::trim) {
            Some("code 0") => VmState::Stopped,
            Some(_) if stopping => VmState::Stopped,
            Some(how) => VmState::Crashed(how.to_string()),
            None if stopping => VmState::Stopped,
            None if self.keeper_pid().is_some() => VmState::Booting,
            None if self.booted_before_reboot() => VmState::Crashed("host rebooted".into()),
            None => VmState::Crashed("vanished".into()),
        }
    }

    /// Whether cloud-init finished in the current run.
    pub fn is_ready(&self) -> bool {
        self.file("ready").exists()
    }

    /// Whether the current run was started before the host's last boot.
    fn booted_before_reboot(&self) -> bool {
        let started = read(&self.file("started")).unwrap_or_default();
        let boot = started.lines().next().unwrap_or("").trim().to_string();
        !boot.is_empty() && boot != boot_id()
    }

    /// Seconds from start to ready, if ready.
    pub fn ready_after(&self) -> Option<f64> {
        read(&self.file("ready"))?.trim().parse().ok()
    }

    /// Where the current run's output starts in `console.log`.
    pub fn console_offset(&self) -> u64 {
        read(&self.file("started"))
            .and_then(|s| s.lines().nth(2).and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0)
    }
}

/// This boot of the host (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    read(Path::new("/proc/sys/kernel/random/boot_id"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether process `pid` is a minivmm serving its API at `api_sock`.
pub fn is_our_minivmm(pid: u32, api_sock: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line: it is not running any more.
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Some(exe) = args.first() else {
        return false;
    };
    let want = api_sock.as_os_str().as_encoded_bytes();
    exe.ends_with(b"minivmm")
        && args
            .windows(2)
            .any(|w| w[0] == b"--api-sock" && w[1] == want)
}

/// A file's text, if it can be read.
pub fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// Write `data` to `p` through a temporary file and a rename: readers see the old or the
/// new contents, never a part.
pub fn write_atomic(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp-write");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, p)
}

/// CPU time (user + system) and resident memory of a process, and how long it has run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// CPU time used so far.
    pub cpu: Duration,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Time since it started.
    pub uptime: Duration,
}

/// Read `/proc/PID/stat` (and `/proc/uptime`).
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let s = read(Path::new(&format!("/proc/{pid}/stat")))?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads configuration values.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    // After the comm: state is 0, utime 11, stime 12, starttime 19, rss 21.
    let cpu = Duration::from_secs_f64((num(11) + num(12)) as f64 / hz);
    let host_up: f64 = read(Path::new("/proc/uptime"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let started = num(19) as f64 / hz;
    Some(ProcStats {
        cpu,
        rss: num(21) * page,
        uptime: Duration::from_secs_f64((host_up - started).max(0.0)),
    })
}
