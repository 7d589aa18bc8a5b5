//! Labs: networks of VMs described in one TOML file, brought up and down with one command
//! each (`minivmm up LAB`, `ls`, `ssh VM`, `console VM`, `down LAB`). This crate is the
//! front end that does it by driving ordinary `minivmm` processes, one per VM; the `vmm`
//! crate is used only for its bridge helpers, MAC addresses and size parser.
//!
//! * [`validate`] reads a lab file ([`model`]) and checks all of it before anything exists.
//! * [`state`] is the state directory: every file `up` makes, so that `down`, `ls`,
//!   `ssh` and `console` need nothing else (not even the lab file).
//! * [`up`] makes the keys ([`keys`]), bridges, disks and cloud-init seeds ([`seed`]),
//!   starts each VM under a [`keeper`] (a small process that records how it ended), and
//!   waits for cloud-init to finish in each.
//! * [`down`] stops the VMs (ACPI, then hard) and removes the bridges; [`ls`] lists VMs
//!   with their processes' figures; [`ssh`] builds the `ssh` command line for a VM.
//!
//! How a VM runs: `minivmm lab-keeper VMDIR` (the keeper, in a session of its own) starts
//! `minivmm --kernel ... --serial stdio --api-sock VMDIR/api.sock` with its standard input
//! a FIFO (`console.in`, held open by the VM itself so it never sees end-of-file) and its
//! standard output appended to `console.log`. `minivmm console VM` shows `console.log` and
//! writes what is typed into the FIFO; minivmm's own Ctrl-A keys work through it.
#![deny(missing_docs)]

pub mod down;
pub mod keeper;
pub mod keys;
pub mod ls;
pub mod model;
pub mod seed;
pub mod ssh;
pub mod state;
pub mod up;
pub mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use validate::{Lab, Problems};

/// What went wrong in a lab command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lab file has problems (one line each).
    #[error("{0}")]
    BadLab(Problems),
    /// Something else the user gave cannot be used (an unknown lab or VM, a lab that is up
    /// from another file).
    #[error("{0}")]
    BadInput(String),
    /// A file or directory of the state directory could not be made or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A host tool (ssh-keygen, openssl, cp, mkfs.ext4) failed.
    #[error("{0}")]
    Tool(String),
    /// A bridge could not be made or removed.
    #[error("{0}")]
    Network(String),
    /// Some VMs did not become ready (the table says which).
    #[error("{0}")]
    NotReady(String),
}

impl Error {
    /// An [`Error::Io`] for `path`, for `map_err`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    }

    /// Whether the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::BadLab(_) | Error::BadInput(_))
    }
}

/// Where the lab files shipped with minivmm are: `$MINIVMM_LABS_DIR`, else `labs/` in the
/// current directory, else the source tree's `labs/`.
pub fn shipped_labs_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("MINIVMM_LABS_DIR") {
        v.push(PathBuf::from(d));
    }
    v.push(PathBuf::from("labs"));
    v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    v
}

/// The lab file `LAB` names: a path (it has a `/` or ends in `.toml`), or the name of a
/// lab in one of [`shipped_labs_dirs`].
pub fn lab_file(arg: &str) -> Result<PathBuf, Error> {
    if arg.contains('/') || arg.ends_with(".toml") {
        let p = PathBuf::from(arg);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::BadInput(format!("lab file {arg}: no such file")))
        };
    }
    let dirs = shipped_labs_dirs();
    for d in &dirs {
        let p = d.join(format!("{arg}.toml"));
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::BadInput(format!(
        "no lab '{arg}': not a file, and no {arg}.toml in {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The name of the lab `arg` means for commands that work on a lab that is up: a lab file
/// (its `name`, or its file name), or a name.
pub fn lab_name(arg: &str) -> Result<String, Error> {
    if !(arg.contains('/') || arg.ends_with(".toml")) {
        return Ok(arg.to_string());
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::BadInput(format!("lab file {arg}: {e}")))?;
    let raw: model::LabFile = toml::from_str(&text).unwrap_or_default();
    Ok(raw.name.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }))
}
