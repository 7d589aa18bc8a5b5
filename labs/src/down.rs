//! `minivmm down LAB`: stop every VM of the lab and remove the bridges it made, from the
//! state directory alone (the lab file may have changed or be gone; `up` may have been
//! killed; the host may have rebooted, in which case there is nothing left to stop).
//!
//! Each running VM is marked `stopping` (its ending is then not a crash) and sent SIGTERM:
//! minivmm presses the guest's ACPI power button. VMs still running after `timeout` get a
//! second SIGTERM (minivmm stops them hard), and SIGKILL ten seconds later. Their taps go
//! with their minivmm processes (minivmm never makes them persistent). Then the bridges
//! the lab recorded are deleted. `--purge` removes the lab's directory too: disks, keys,
//! logs. A lab that is not up (or was never up) is no error: `down` twice is harmless.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::state::{write_atomic, LabDir};
use crate::Error;

/// Grace after the hard stop before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);

/// How `down` runs.
#[derive(Clone, Debug)]
pub struct DownOptions {
    /// The state directory.
    pub state_dir: std::path::PathBuf,
    /// How long the guests get to power off after the ACPI button.
    pub timeout: Duration,
    /// Remove the lab's directory (disks, keys, logs) too.
    pub purge: bool,
}

/// What happened to one VM.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// The VM.
    pub name: String,
    /// How it stopped: `powered off`, `stopped hard`, `killed`, or `was not running (STATE)`.
    pub how: String,
}

/// What `down` did.
#[derive(Clone, Debug, Default)]
pub struct DownReport {
    /// The lab.
    pub lab: String,
    /// Whether there was a lab to take down.
    pub existed: bool,
    /// Each VM.
    pub vms: Vec<Stopped>,
    /// Bridges removed.
    pub bridges: Vec<String>,
    /// Whether the lab's directory was removed.
    pub purged: bool,
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill takes a pid and a signal number; the pid was just checked to be this
    // VM's minivmm (its cmdline names the VM's socket).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// `down`: see the module docs.
pub fn down(lab_arg: &str, opts: &DownOptions) -> Result<DownReport, Error> {
    let name = crate::lab_name(lab_arg)?;
    let ld = LabDir::new(&opts.state_dir, &name);
    let mut report = DownReport {
        lab: name.clone(),
        ..Default::default()
    };
    if !ld.path.is_dir() {
        return Ok(report);
    }
    report.existed = true;
    let _lock = ld.lock().map_err(Error::io(&ld.file("lock")))?;
    let mark = ld.file(crate::up::DOWN_MARK);
    write_atomic(&mark, b"down\n").map_err(Error::io(&mark))?;

    // Ask every running VM to power off.
    let mut running = Vec::new();
    for vm in ld.vm_names() {
        let vd = ld.vm(&vm);
        let stopping = vd.file("stopping");
        if vd.pid().is_some() || vd.keeper_pid().is_some() {
            write_atomic(&stopping, b"down\n").map_err(Error::io(&stopping))?;
        }
        match vd.pid() {
            Some(pid) => {
                signal(pid, libc::SIGTERM);
                running.push((vm, pid));
            }
            None => report.vms.push(Stopped {
                how: format!("was not running ({})", vd.state()),
                name: vm,
            }),
        }
    }
    let t0 = Instant::now();
    let alive = |ld: &LabDir, vm: &str| ld.vm(vm).pid().is_some();
    let wait_all = |until: Duration, list: &[(String, u32)]| {
        while t0.elapsed() < until && list.iter().any(|(v, _)| alive(&ld, v)) {
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_all(opts.timeout, &running);
    let mut hard = Vec::new();
    for (vm, pid) in &running {
        if alive(&ld, vm) {
            log::warn!(
                "{vm} did not power off in {:?}: stopping it hard",
                opts.timeout
            );
            signal(*pid, libc::SIGTERM);
            hard.push(vm.clone());
        }
    }
    wait_all(opts.timeout + KILL_AFTER, &running);
    for (vm, pid) in &running {
        let how = if alive(&ld, vm) {
            signal(*pid, libc::SIGKILL);
            "killed"
        } else if hard.contains(vm) {
            "stopped hard"
        } else {
            "powered off"
        };
        report.vms.push(Stopped {
            name: vm.clone(),
            how: how.into(),
        });
    }
    // The keepers end with their VMs; wait for them so that nothing of the lab runs.
    let t1 = Instant::now();
    while t1.elapsed() < KILL_AFTER
        && ld
            .vm_names()
            .iter()
            .any(|v| ld.vm(v).pid().is_some() || ld.vm(v).keeper_pid().is_some())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    report.vms.sort_by(|a, b| a.name.cmp(&b.name));

    for b in ld.bridges() {
        if vmm::network::bridge_exists(&b) {
            vmm::network::delete_bridge(&b)
                .map_err(|e| Error::Network(format!("removing bridge {b}: {e}")))?;
            report.bridges.push(b.clone());
        }
        ld.remove_bridge(&b)
            .map_err(Error::io(&ld.file("bridges")))?;
    }
    if opts.purge {
        remove_lab_dir(&ld.path)?;
        report.purged = true;
    }
    Ok(report)
}

fn remove_lab_dir(p: &Path) -> Result<(), Error> {
    std::fs::remove_dir_all(p).map_err(Error::io(p))?;
    // The labs/ directory itself goes when it is empty.
    if let Some(parent) = p.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

impl DownReport {
    /// What to print.
    pub fn summary(&self) -> String {
        if !self.existed {
            return format!("lab {} is not up (nothing to do)\n", self.lab);
        }
        let mut s = String::new();
        for v in &self.vms {
            s.push_str(&format!("{}: {}\n", v.name, v.how));
        }
        if !self.bridges.is_empty() {
            s.push_str(&format!("removed bridges: {}\n", self.bridges.join(", ")));
        }
        s.push_str(&format!(
            "lab {} is down{}\n",
            self.lab,
            if self.purged {
                " (disks, keys and logs removed)"
            } else {
                ""
            }
        ));
        s
    }
}
