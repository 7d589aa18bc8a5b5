//! A lab file as written: the TOML structure, deserialized with serde and nothing more.
//! Every table refuses keys it does not know (`deny_unknown_fields`), so a misspelt key is
//! an error rather than a silently ignored setting. What the values mean, and whether they
//! fit together, is [`crate::validate`]'s business.
//!
//! The format, by example (the commented reference is `labs/README.md`):
//!
//! ```toml
//! name = "ssh-pair"            # optional: the file name without .toml
//! user = "student"             # the account in every VM (the lab key logs in)
//! image = "debian"             # every VM's default image
//!
//! [[network]]
//! name = "sshpair0"            # the host bridge
//! cidr = "10.20.0.0/24"
//! host = "10.20.0.1"           # the host's address on it (leave out for none)
//!
//! [[vm]]
//! name = "vm1"
//! memory = "512M"
//! nics = [{ network = "sshpair0", address = "10.20.0.11" }]
//! ```

use serde::Deserialize;

/// The whole lab file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    /// The lab's name (default: the file name without `.toml`).
    pub name: Option<String>,
    /// One line about the lab, shown by `ls`.
    pub description: Option<String>,
    /// The login account made in every VM (default `student`).
    pub user: Option<String>,
    /// The default image of every VM.
    pub image: Option<String>,
    /// The host bridges.
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkFile>,
    /// The VMs, started in this order.
    #[serde(default, rename = "vm")]
    pub vms: Vec<VmFile>,
}

/// `[[network]]`: a host bridge and its IPv4 network.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// The bridge's name (at most 15 characters).
    pub name: String,
    /// The network, e.g. `10.20.0.0/24`.
    pub cidr: String,
    /// The host's address on the bridge, if the host is on this network.
    pub host: Option<String>,
}

/// `[[vm]]`: one virtual machine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFile {
    /// The VM's name, also its host name.
    pub name: String,
    /// A built image (`debian`) or a directory with `vmlinux` and a disk image.
    pub image: Option<String>,
    /// A kernel, instead of an image.
    pub kernel: Option<String>,
    /// An initramfs for `kernel`.
    pub initrd: Option<String>,
    /// The base root disk for `kernel` (each VM gets its own copy).
    pub disk: Option<String>,
    /// Extra kernel command line.
    pub cmdline: Option<String>,
    /// vCPUs (default 1).
    pub cpus: Option<u8>,
    /// Guest RAM (default `512M`).
    pub memory: Option<String>,
    /// Network interfaces, `eth0`, `eth1`, ... in order.
    #[serde(default)]
    pub nics: Vec<NicFile>,
    /// Extra disks, made empty at the first `up`.
    #[serde(default)]
    pub disks: Vec<DiskFile>,
    /// cloud-init user-data of the lab's own, inline (`#cloud-config` or a `#!` script).
    pub user_data: Option<String>,
    /// The same, from a file.
    pub user_data_file: Option<String>,
    /// Files to put into the VM.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Whether the lab's private key goes to the user's `~/.ssh` (to reach the other VMs).
    #[serde(default)]
    pub lab_key: bool,
    /// Whether the VM gets a server certificate signed by the lab's CA.
    #[serde(default)]
    pub certificate: bool,
    /// A group that may read the certificate's key (e.g. `mysql`; default: root only).
    pub certificate_group: Option<String>,
}

/// One entry of `nics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicFile {
    /// The `[[network]]` it is on.
    pub network: String,
    /// Its static IPv4 address.
    pub address: String,
    /// Its MAC address (default: derived from the lab, the VM and the index).
    pub mac: Option<String>,
}

/// One entry of `disks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// A name for the disk (its file name and file system label).
    pub name: String,
    /// Its size, e.g. `256M`.
    pub size: String,
    /// `ext4` to make a file system on it (on the host, at the first `up`).
    pub format: Option<String>,
    /// Where the guest mounts it (needs `format`).
    pub mount: Option<String>,
}

/// One entry of `files`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute path in the guest.
    pub path: String,
    /// The file's text.
    pub content: Option<String>,
    /// A host file to copy (relative to the lab file).
    pub source: Option<String>,
    /// `user` or `user:group` (default root).
    pub owner: Option<String>,
    /// Octal permissions, e.g. `0644`.
    pub mode: Option<String>,
}
