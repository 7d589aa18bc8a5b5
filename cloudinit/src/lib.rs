//! cloud-init's NoCloud seed for `minivmm --cloud-init DIR|FILE`: the files a guest's
//! cloud-init reads at its first boot (`user-data`, `meta-data`, and when given
//! `network-config` and `vendor-data`), on a small FAT16 file system labelled `CIDATA`
//! that minivmm attaches as a read-only disk. This crate reads the inputs ([`Seed::read`]),
//! makes the image ([`Seed::image`], written by [`fat`] from scratch: no `mkfs`, no
//! `mtools` at run time) and puts it in a file that exists only while the VM does
//! ([`Seed::write_temp`]).
//!
//! **Inputs.** `DIR` is laid out as `cloud-localds` takes its arguments: `user-data`
//! (required), `meta-data`, `network-config`, `vendor-data` (optional); other files in it
//! are ignored (and logged at info level). A single `FILE` is the user-data. When no
//! `meta-data` is given, one is generated from the VM's [`Identity`]:
//!
//! ```yaml
//! instance-id: iid-web1
//! local-hostname: web1
//! ```
//!
//! A `meta-data` of the user's is used unchanged. The inputs together may hold at most
//! [`MAX_INPUT`] bytes (16 MiB: cloud-init seeds are kilobytes; anything near that is a
//! mistake, such as a disk image given by accident).
//!
//! **Why FAT and not ISO 9660.** cloud-init's NoCloud accepts either (a file system
//! labelled `cidata`/`CIDATA`); FAT16 with long names is the smaller writer (a boot
//! sector, a FAT and a directory) and needs no Joliet or Rock Ridge extensions for names
//! such as `network-config`.
//!
//! **Removed on every exit path.** The image is written to a file that never has a name:
//! `open(dir, O_TMPFILE | O_EXCL, 0600)` in the temp directory (`$TMPDIR`, else `/tmp`),
//! or, on a file system without `O_TMPFILE`, a file created with a unique name and
//! unlinked at once. The disk is then given to the VMM as `/proc/self/fd/N`, a path the
//! VMM opens like any disk image (`open` on that magic link reopens the same inode, and
//! happens while the VM is built, before any seccomp filter). The inode lives as long as
//! a descriptor to it does: minivmm's own, then the block device's. Whatever ends the
//! process, `SIGKILL` and a seccomp violation included, the kernel frees it and nothing
//! is left in any directory. The descriptor is close-on-exec, which does not matter:
//! minivmm executes nothing. Mode 0600, since user-data often carries keys and passwords.
#![deny(missing_docs)]

pub mod fat;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The seed's file system label, which cloud-init's NoCloud looks for.
pub const LABEL: &str = "CIDATA";

/// The most the inputs may hold together: 16 MiB.
pub const MAX_INPUT: u64 = 16 << 20;

/// The files a seed holds, in the order they are stored; only `user-data` is required.
pub const FILES: [&str; 4] = ["user-data", "meta-data", "network-config", "vendor-data"];

/// Why a seed could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The path given cannot be looked at (missing, no permission).
    #[error("--cloud-init {}: {source}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is neither a regular file (the user-data) nor a directory.
    #[error("--cloud-init {}: not a regular file or a directory", path.display())]
    NotFileOrDir {
        /// The path.
        path: PathBuf,
    },
    /// A directory without `user-data`.
    #[error(
        "--cloud-init {}: no user-data in the directory (it holds user-data, and optionally \
         meta-data, network-config and vendor-data)",
        dir.display()
    )]
    NoUserData {
        /// The directory.
        dir: PathBuf,
    },
    /// One of the seed's files is a directory, FIFO or device.
    #[error("--cloud-init: {} is not a regular file", path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// The inputs hold more than [`MAX_INPUT`] bytes.
    #[error("cloud-init seed too large: {bytes} bytes (limit {} MiB)", MAX_INPUT >> 20)]
    TooLarge {
        /// The inputs' total size (at least; reading stops past the limit).
        bytes: u64,
    },
    /// An input could not be read.
    #[error("--cloud-init: reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The FAT image could not be made (cannot happen within [`MAX_INPUT`]).
    #[error("cloud-init seed: {0}")]
    Image(#[from] fat::FatError),
    /// The temporary file could not be made or written (a host problem).
    #[error("cloud-init seed: temporary file in {}: {source}", dir.display())]
    Temp {
        /// The directory it was made in.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl SeedError {
    /// Whether the user's input is at fault (exit code 2), rather than the host.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, SeedError::Temp { .. })
    }
}

/// What the generated `meta-data` says about the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `instance-id`: cloud-init runs its once-per-instance steps (users, SSH host keys)
    /// again when it changes.
    pub instance_id: String,
    /// `local-hostname`.
    pub hostname: String,
}

impl Identity {
    /// The identity of a VM named `name` (`--name`): `iid-NAME`, and the name made a valid
    /// host name (lower case, `-` for anything but letters and digits, at most 63
    /// characters). A VM without a name is known by its inputs (`inputs`: what minivmm
    /// derives MAC addresses from, the kernel, initrd, disks and command line): a 64-bit
    /// hash of them, `iid-<16 hex digits>` and `minivmm-<8 hex digits>`, the same every
    /// boot of the same VM.
    pub fn new(name: Option<&str>, inputs: &str) -> Self {
        match name {
            Some(n) => Self {
                instance_id: format!("iid-{n}"),
                hostname: hostname(n),
            },
            None => {
                let h = fnv1a64(inputs.as_bytes());
                Self {
                    instance_id: format!("iid-{h:016x}"),
                    hostname: format!("minivmm-{:08x}", h >> 32),
                }
            }
        }
    }

    /// The `meta-data` file for this identity (YAML).
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_scalar(&self.instance_id),
            yaml_scalar(&self.hostname)
        )
    }
}

/// `name` as a host name (RFC 1123 label): `minivmm` if nothing of it is left.
fn hostname(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut h: String = mapped.trim_matches('-').chars().take(63).collect();
    while h.ends_with('-') {
        h.pop();
    }
    if h.is_empty() {
        "minivmm".into()
    } else {
        h
    }
}

/// A YAML scalar: plain when it is made of characters that need no quoting, else
/// double-quoted with escapes.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if plain {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// FNV-1a, 64 bits: a stable hash (the same in every build, unlike `std`'s).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The files of a NoCloud seed, read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    files: Vec<(&'static str, Vec<u8>)>,
}

impl Seed {
    /// Read `--cloud-init PATH`: a directory laid out as `cloud-localds` expects, or a
    /// file that is the user-data; `meta-data` is generated from `identity` when not given.
    pub fn read(path: &Path, identity: &Identity) -> Result<Seed, SeedError> {
        let meta = std::fs::metadata(path).map_err(|source| SeedError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut found: Vec<(&'static str, PathBuf, u64)> = Vec::new();
        if meta.is_dir() {
            for name in FILES {
                let p = path.join(name);
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_file() => found.push((name, p, m.len())),
                    Ok(_) => return Err(SeedError::NotAFile { path: p }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(SeedError::Open { path: p, source }),
                }
            }
            if found.first().map(|f| f.0) != Some("user-data") {
                return Err(SeedError::NoUserData {
                    dir: path.to_path_buf(),
                });
            }
            log_ignored(path);
        } else if meta.is_file() {
            found.push(("user-data", path.to_path_buf(), meta.len()));
        } else {
            return Err(SeedError::NotFileOrDir {
                path: path.to_path_buf(),
            });
        }
        let total: u64 = found.iter().map(|f| f.2).sum();
        if total > MAX_INPUT {
            return Err(SeedError::TooLarge { bytes: total });
        }
        let mut files = Vec::new();
        let mut read_total = 0u64;
        for (name, p, _) in found {
            let data = read_file(&p, MAX_INPUT - read_total)?;
            read_total += data.len() as u64;
            files.push((name, data));
        }
        if !files.iter().any(|f| f.0 == "meta-data") {
            files.insert(1, ("meta-data", identity.meta_data().into_bytes()));
        }
        Ok(Seed { files })
    }

    /// The files, in the order they are stored: `user-data`, `meta-data`, then
    /// `network-config` and `vendor-data` if given.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        self.files.iter().map(|(n, d)| (*n, d.as_slice()))
    }

    /// The seed's FAT16 image, labelled [`LABEL`].
    pub fn image(&self) -> Result<Vec<u8>, SeedError> {
        let files: Vec<(&str, &[u8])> = self.files().collect();
        Ok(fat::image(LABEL, &files)?)
    }

    /// Write the image to a new file in `dir` that has no name (see the module docs): it
    /// disappears when the last descriptor to it closes. Open it again (read-only) through
    /// [`fd_path`].
    pub fn write_temp(&self, dir: &Path) -> Result<File, SeedError> {
        let image = self.image()?;
        let temp = |source| SeedError::Temp {
            dir: dir.to_path_buf(),
            source,
        };
        let mut file = unnamed_file(dir).map_err(temp)?;
        file.write_all(&image).map_err(temp)?;
        Ok(file)
    }
}

/// The path through which this process reopens `file`: `/proc/self/fd/N`.
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// A new, empty file in `dir` without a name: `O_TMPFILE`, or created and unlinked at
/// once where the file system has no `O_TMPFILE`.
fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    let open = || {
        let mut o = OpenOptions::new();
        o.read(true).write(true).mode(0o600);
        o
    };
    match open()
        .custom_flags(libc::O_TMPFILE | libc::O_EXCL)
        .open(dir)
    {
        Ok(f) => return Ok(f),
        // Kernels and file systems without O_TMPFILE answer one of these.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) => {}
        Err(e) => return Err(e),
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100 {
        let p = dir.join(format!(
            ".minivmm-cidata-{}-{stamp}-{attempt}",
            std::process::id()
        ));
        match open().create_new(true).open(&p) {
            Ok(f) => {
                std::fs::remove_file(&p)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no unique name for the temporary file",
    ))
}

/// Read a regular file, at most `left` bytes (more is [`SeedError::TooLarge`]: the file
/// grew since it was measured). `O_NONBLOCK`, so that a FIFO put there meanwhile cannot
/// block the open.
fn read_file(path: &Path, left: u64) -> Result<Vec<u8>, SeedError> {
    let bad = |source| SeedError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(bad)?;
    if !file.metadata().map_err(bad)?.is_file() {
        return Err(SeedError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut data = Vec::new();
    file.take(left + 1).read_to_end(&mut data).map_err(bad)?;
    if data.len() as u64 > left {
        return Err(SeedError::TooLarge {
            bytes: MAX_INPUT + 1,
        });
    }
    Ok(data)
}

/// Say which files of a seed directory are not part of the seed.
fn log_ignored(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut ignored: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !FILES.contains(&n.as_str()))
        .collect();
    if !ignored.is_empty() {
        ignored.sort();
        log::info!(
            "--cloud-init {}: ignoring {} (a seed holds {})",
            dir.display(),
            ignored.join(", "),
            FILES.join(", ")
        );
    }
}

#[cfg(test)]
mod tests;
