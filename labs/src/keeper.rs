//! The keeper: `minivmm lab-keeper VMDIR`, one small process per running lab VM. `up`
//! starts it in a session of its own (so that it and its VM outlive `up`, its terminal and
//! a SIGKILL of `up`); it starts the VM's `minivmm` from `VMDIR/config.json` with the
//! console plumbing of the state directory, writes its pid, waits for it, and records how
//! it ended in `VMDIR/exit` (`code N` or `signal N`). That record is what tells a VM that
//! crashed from one that was stopped; without it a detached process's exit status is lost.
//!
//! The keeper ignores SIGHUP, SIGINT and SIGTERM (after starting the VM, which keeps the
//! default actions): `down` signals the VM, and the keeper ends when the VM does.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::state::write_atomic;
use crate::Error;

/// What the keeper starts (`config.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Launch {
    /// The minivmm binary.
    pub minivmm: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Run the keeper for the VM in `dir`; returns minivmm's exit code (or 128 + signal).
pub fn run(dir: &Path) -> Result<i32, Error> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(Error::io(&cfg_path))?;
    let launch: Launch = serde_json::from_str(&text)
        .map_err(|e| Error::BadInput(format!("{}: {e}", cfg_path.display())))?;
    let fifo = dir.join("console.in");
    // Read and write: the VM then holds a writer itself and never reads end-of-file when
    // no console is attached.
    let stdin = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .map_err(Error::io(&fifo))?;
    let append = |name: &str| {
        let p = dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&p)
            .map_err(Error::io(&p))
    };
    let console = append("console.log")?;
    let log = append("minivmm.log")?;
    let mut child = Command::new(&launch.minivmm)
        .args(&launch.args)
        .current_dir(dir)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(console))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| Error::Tool(format!("starting {}: {e}", launch.minivmm)))?;
    let pid_path = dir.join("pid");
    write_atomic(&pid_path, child.id().to_string().as_bytes()).map_err(Error::io(&pid_path))?;
    for s in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
        // SAFETY: SIG_IGN is a valid disposition for these signals.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Tool(format!("waiting for the VM: {e}"))),
        }
    };
    let (record, code) = match (status.code(), status.signal()) {
        (Some(c), _) => (format!("code {c}"), c),
        (None, Some(s)) => (format!("signal {s}"), 128 + s),
        (None, None) => ("unknown".to_string(), 1),
    };
    let exit_path = dir.join("exit");
    write_atomic(&exit_path, format!("{record}\n").as_bytes()).map_err(Error::io(&exit_path))?;
    Ok(code)
}
