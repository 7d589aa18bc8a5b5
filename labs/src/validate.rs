//! From a lab file's text to a [`Lab`] that `up` can build without another check: every
//! name, address, size and file is checked here, before anything is created, and every
//! problem is collected (not only the first), each as one line naming the lab file and the
//! TOML key path (`vm[1].nics[0].address`).
//!
//! What is checked: names (the lab's, the user's, bridges', VMs', disks'), that names and
//! addresses do not clash (two VMs or bridges of one name, one address twice, two networks
//! that overlap), that every address lies inside its network and is neither its network
//! nor its broadcast address, sizes and counts (vCPUs, memory, the 18 virtio devices a VM
//! may have), and that every file named exists (images, kernels, user-data, files to copy).
//! Relative paths are relative to the lab file's directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::model::{LabFile, VmFile};

/// The most virtio devices one VM can have (one IRQ line each; see the README's `--disk`).
const MAX_VIRTIO: usize = 18;
/// The most vCPUs minivmm gives a VM.
const MAX_CPUS: u8 = 37;
/// The least memory a lab VM gets (Debian with systemd does not boot in less).
const MIN_MEMORY: u64 = 64 << 20;
/// Default guest memory.
const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default login account.
pub const DEFAULT_USER: &str = "student";

/// One problem with a lab file: where (a TOML key path) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The TOML key path (`vm[0].nics[1].address`), or empty for the file as a whole.
    pub key: String,
    /// What is wrong, in one line.
    pub message: String,
}

/// All problems of one lab file.
#[derive(Debug)]
pub struct Problems {
    /// The lab file, as given.
    pub file: PathBuf,
    /// What is wrong with it, in file order.
    pub list: Vec<Problem>,
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.list.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// A lab, checked: everything `up` needs, resolved.
#[derive(Clone, Debug)]
pub struct Lab {
    /// Its name.
    pub name: String,
    /// Its one-line description.
    pub description: String,
    /// The lab file (absolute).
    pub file: PathBuf,
    /// The lab file's text, as read.
    pub source: String,
    /// The login account in every VM.
    pub user: String,
    /// The host bridges.
    pub networks: Vec<Network>,
    /// The VMs, in file order.
    pub vms: Vec<Vm>,
}

impl Lab {
    /// Whether any VM asks for a certificate (the lab then has a CA).
    pub fn has_ca(&self) -> bool {
        self.vms.iter().any(|v| v.certificate)
    }

    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The VM called `name`.
    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.name == name)
    }
}

/// A host bridge and its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The bridge's name.
    pub name: String,
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
    /// The host's address on it.
    pub host: Option<Ipv4Addr>,
}

impl Network {
    /// Whether `a` lies in this network.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask(self.prefix) == u32::from(self.addr)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }
}

/// A VM, checked.
#[derive(Clone, Debug)]
pub struct Vm {
    /// Its name (and host name).
    pub name: String,
    /// The kernel to boot.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The base image its root disk is copied from, if any.
    pub base_disk: Option<PathBuf>,
    /// Extra kernel command line.
    pub cmdline: Option<String>,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Its NICs.
    pub nics: Vec<Nic>,
    /// Its extra disks.
    pub disks: Vec<Disk>,
    /// The lab's own user-data, if any.
    pub user_data: Option<String>,
    /// Files to put into the VM.
    pub files: Vec<GuestFile>,
    /// Whether the user gets the lab's private key.
    pub lab_key: bool,
    /// Whether the VM gets a server certificate.
    pub certificate: bool,
    /// The group that may read its key.
    pub certificate_group: Option<String>,
}

/// A NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The bridge it is on.
    pub network: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its network's prefix length.
    pub prefix: u8,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// An extra disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it gets an ext4 file system at the first `up`.
    pub ext4: bool,
    /// Where the guest mounts it.
    pub mount: Option<String>,
}

/// A file for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Its bytes.
    pub content: Vec<u8>,
    /// `user` or `user:group`.
    pub owner: Option<String>,
    /// Permissions.
    pub mode: Option<u32>,
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// A name for a lab, VM or disk: a host name label of at most 32 characters.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && !s.ends_with('-')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn valid_bridge(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn valid_user(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Parse `a.b.c.d/len` into (network, prefix); host bits must be clear.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not ADDRESS/LENGTH (e.g. 10.20.0.0/24)"))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| format!("prefix length '{p}' is not between 8 and 30"))?;
    let net = Ipv4Addr::from(u32::from(addr) & mask(prefix));
    if net != addr {
        return Err(format!(
            "'{s}' has host bits set: the network is {net}/{prefix}"
        ));
    }
    Ok((net, prefix))
}

/// A built image: a kernel, a base disk, and what its kernel command line needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `vmlinux`.
    pub kernel: PathBuf,
    /// `disk.img`, `debian.img` or `rootfs.ext4`.
    pub disk: PathBuf,
    /// The contents of the image directory's `cmdline` file, if it has one.
    pub cmdline: Option<String>,
}

/// The image `image = NAME` names: `debian`, or a directory (relative to `base`) with a
/// `vmlinux`, a disk image and optionally a `cmdline` file.
pub fn resolve_image(name: &str, base: &Path) -> Result<Image, String> {
    let dir = if name.contains('/') {
        let p = base.join(name);
        if !p.is_dir() {
            return Err(format!("image directory {} does not exist", p.display()));
        }
        p
    } else if name == "debian" {
        find_debian()?
    } else {
        return Err(format!(
            "unknown image '{name}': use \"debian\" or a directory with vmlinux and disk.img"
        ));
    };
    let kernel = dir.join("vmlinux");
    if !kernel.is_file() {
        return Err(format!("image {}: no vmlinux in it", dir.display()));
    }
    let disk = ["disk.img", "debian.img", "rootfs.ext4"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "image {}: no disk.img, debian.img or rootfs.ext4 in it",
                dir.display()
            )
        })?;
    let cmdline = std::fs::read_to_string(dir.join("cmdline"))
        .ok()
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|c| !c.is_empty());
    Ok(Image {
        kernel,
        disk,
        cmdline,
    })
}

/// The Debian server image: `$MINIVMM_DEBIAN_DIR`, else the newest complete build of
/// `resources/guest/debian.sh` in its cache (`$MINIVMM_GUEST_DIR`, else
/// `~/.cache/minivmm/guest`).
fn find_debian() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("MINIVMM_DEBIAN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let cache = match std::env::var_os("MINIVMM_GUEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/minivmm/guest"),
    };
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_prefix("debian-") else {
            continue;
        };
        if key.starts_with("kernel-") || key.starts_with("base-") || key.contains('.') {
            continue;
        }
        let p = entry.path();
        if !p.join(".complete").is_file() {
            continue;
        }
        let t = std::fs::metadata(p.join(".complete"))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, p));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        format!(
            "no built Debian image in {} (build it with resources/guest/debian.sh, or set \
             MINIVMM_DEBIAN_DIR)",
            cache.display()
        )
    })
}

/// Collects problems while walking the file.
struct Checker {
    list: Vec<Problem>,
    base: PathBuf,
}

impl Checker {
    fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// A host file named in the lab, relative to the lab file's directory; checked to be a
    /// readable regular file.
    fn file(&mut self, key: &str, p: &str) -> Option<PathBuf> {
        let path = self.base.join(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.bad(key, format!("{} is not a regular file", path.display()));
                None
            }
            Err(e) => {
                self.bad(key, format!("{}: {e}", path.display()));
                None
            }
        }
    }
}

/// The first line of a toml error, with the line and column of its span.
fn toml_error(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().replace('\n', " ");
    let at = e.span().map(|s| {
        let before = &text[..s.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("line {line}, column {col}")
    });
    Problem {
        key: at.unwrap_or_default(),
        message,
    }
}

/// Read and check the lab file at `path`.
pub fn load(path: &Path) -> Result<Lab, Problems> {
    let fail = |list| Problems {
        file: path.to_path_buf(),
        list,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![Problem {
            key: String::new(),
            message: format!("cannot read it: {e}"),
        }])
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&text, &abs).map_err(fail)
}

/// Check the lab file text `text`, whose file is `file` (absolute; relative paths in it
/// are relative to its directory).
pub fn parse(text: &str, file: &Path) -> Result<Lab, Vec<Problem>> {
    let raw: LabFile = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
    let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut c = Checker {
        list: Vec::new(),
        base,
    };
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = raw.name.clone().unwrap_or(stem);
    if !valid_name(&name) {
        c.bad(
            if raw.name.is_some() { "name" } else { "" },
            format!(
                "lab name '{name}' is not 1-32 of a-z, 0-9 and '-' (starting with a letter or \
                 digit)"
            ),
        );
    }
    let user = raw.user.clone().unwrap_or_else(|| DEFAULT_USER.into());
    if !valid_user(&user) || user == "root" {
        c.bad(
            "user",
            format!("'{user}' is not a user name for the lab (a-z, 0-9, '_', '-'; not root)"),
        );
    }

    // Networks.
    let mut networks: Vec<Network> = Vec::new();
    let mut bridge_seen = BTreeSet::new();
    for (i, n) in raw.networks.iter().enumerate() {
        let key = format!("network[{i}]");
        if !valid_bridge(&n.name) {
            c.bad(
                format!("{key}.name"),
                format!(
                    "bridge name '{}' is not 1-15 of letters, digits, '-' and '_'",
                    n.name
                ),
            );
        }
        if !bridge_seen.insert(n.name.clone()) {
            c.bad(
                format!("{key}.name"),
                format!("a second network named '{}'", n.name),
            );
        }
        let (addr, prefix) = match parse_cidr(&n.cidr) {
            Ok(v) => v,
            Err(e) => {
                c.bad(format!("{key}.cidr"), e);
                continue;
            }
        };
        let mut net = Network {
            name: n.name.clone(),
            addr,
            prefix,
            host: None,
        };
        if let Some(h) = &n.host {
            match h.parse::<Ipv4Addr>() {
                Ok(a) if !net.contains(a) => c.bad(
                    format!("{key}.host"),
                    format!("{a} is outside the network {}/{prefix}", net.addr),
                ),
                Ok(a) if a == net.addr || a == net.broadcast() => c.bad(
                    format!("{key}.host"),
                    format!("{a} is the network's own or broadcast address"),
                ),
                Ok(a) => net.host = Some(a),
                Err(_) => c.bad(
                    format!("{key}.host"),
                    format!("'{h}' is not an IPv4 address"),
                ),
            }
        }
        for (j, other) in networks.iter().enumerate() {
            let p = other.prefix.min(prefix);
            if u32::from(other.addr) & mask(p) == u32::from(addr) & mask(p) {
                c.bad(
                    format!("{key}.cidr"),
                    format!(
                        "{}/{prefix} overlaps network '{}' ({}/{}, network[{j}])",
                        addr, other.name, other.addr, other.prefix
                    ),
                );
            }
        }
        networks.push(net);
    }

    // VMs.
    if raw.vms.is_empty() {
        c.bad("", "the lab has no [[vm]]");
    }
    let mut vms = Vec::new();
    let mut vm_seen = BTreeSet::new();
    // address -> where it is used
    let mut addr_owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for n in &networks {
        if let Some(h) = n.host {
            addr_owner.insert(h, format!("the host on '{}'", n.name));
        }
    }
    let mut mac_owner: BTreeMap<[u8; 6], String> = BTreeMap::new();
    for (i, v) in raw.vms.iter().enumerate() {
        if let Some(vm) = check_vm(
            &mut c,
            i,
            v,
            &raw,
            &name,
            &networks,
            &mut vm_seen,
            &mut addr_owner,
            &mut mac_owner,
        ) {
            vms.push(vm);
        }
    }
    if !c.list.is_empty() {
        return Err(c.list);
    }
    Ok(Lab {
        name,
        description: raw.description.unwrap_or_default(),
        file: file.to_path_buf(),
        source: text.to_string(),
        user,
        networks,
        vms,
    })
}

#[allow(clippy::too_many_arguments)]
fn check_vm(
    c: &mut Checker,
    i: usize,
    v: &VmFile,
    raw: &LabFile,
    lab: &str,
    networks: &[Network],
    seen: &mut BTreeSet<String>,
    addr_owner: &mut BTreeMap<Ipv4Addr, String>,
    mac_owner: &mut BTreeMap<[u8; 6], String>,
) -> Option<Vm> {
    let key = format!("vm[{i}]");
    let before = c.list.len();
    if !valid_name(&v.name) {
        c.bad(
            format!("{key}.name"),
            format!(
                "VM name '{}' is not 1-32 of a-z, 0-9 and '-' (starting with a letter or digit)",
                v.name
            ),
        );
    }
    if !seen.insert(v.name.clone()) {
        c.bad(
            format!("{key}.name"),
            format!("a second VM named '{}'", v.name),
        );
    }

    // What boots.
    let image = v.image.as_ref().or(raw.image.as_ref());
    let (mut kernel, mut base_disk, mut image_cmdline) = (None, None, None);
    if v.kernel.is_some() {
        if v.image.is_some() {
            c.bad(
                format!("{key}.kernel"),
                "give either image or kernel, not both",
            );
        }
        kernel = c.file(&format!("{key}.kernel"), v.kernel.as_deref().unwrap_or(""));
        if let Some(d) = &v.disk {
            base_disk = c.file(&format!("{key}.disk"), d);
        }
    } else if let Some(img) = image {
        if v.disk.is_some() || v.initrd.is_some() {
            c.bad(
                format!("{key}.disk"),
                "disk and initrd go with kernel, not with an image",
            );
        }
        let which = if v.image.is_some() {
            format!("{key}.image")
        } else {
            "image".to_string()
        };
        match resolve_image(img, &c.base.clone()) {
            Ok(img) => {
                kernel = Some(img.kernel);
                base_disk = Some(img.disk);
                image_cmdline = img.cmdline;
            }
            Err(e) => c.bad(which, e),
        }
    } else {
        c.bad(
            key.clone(),
            "no image and no kernel (set image here or at the top of the file)",
        );
    }
    let initrd = v
        .initrd
        .as_deref()
        .and_then(|p| c.file(&format!("{key}.initrd"), p));

    let cpus = v.cpus.unwrap_or(1);
    if cpus == 0 || cpus > MAX_CPUS {
        c.bad(
            format!("{key}.cpus"),
            format!("{cpus} vCPUs: between 1 and {MAX_CPUS}"),
        );
    }
    let memory = match v.memory.as_deref().map(vmm::config::parse_size) {
        None => DEFAULT_MEMORY,
        Some(Ok(m)) if m >= MIN_MEMORY => m,
        Some(Ok(_)) => {
            c.bad(format!("{key}.memory"), "less than 64M");
            0
        }
        Some(Err(e)) => {
            c.bad(format!("{key}.memory"), e.to_string());
            0
        }
    };

    // NICs.
    let mut nics = Vec::new();
    let mut nets_used = BTreeSet::new();
    for (j, n) in v.nics.iter().enumerate() {
        let nkey = format!("{key}.nics[{j}]");
        let Some(net) = networks.iter().find(|x| x.name == n.network) else {
            c.bad(
                format!("{nkey}.network"),
                format!("no [[network]] named '{}'", n.network),
            );
            continue;
        };
        if !nets_used.insert(n.network.clone()) {
            c.bad(
                format!("{nkey}.network"),
                format!("a second NIC of {} on '{}'", v.name, n.network),
            );
        }
        let address = match n.address.parse::<Ipv4Addr>() {
            Ok(a) => a,
            Err(_) => {
                c.bad(
                    format!("{nkey}.address"),
                    format!("'{}' is not an IPv4 address", n.address),
                );
                continue;
            }
        };
        if !net.contains(address) {
            c.bad(
                format!("{nkey}.address"),
                format!(
                    "{address} is outside network '{}' ({}/{})",
                    net.name, net.addr, net.prefix
                ),
            );
        } else if address == net.addr || address == net.broadcast() {
            c.bad(
                format!("{nkey}.address"),
                format!("{address} is the network's own or broadcast address"),
            );
        }
        let me = format!("{} ({nkey})", v.name);
        if let Some(other) = addr_owner.get(&address) {
            c.bad(
                format!("{nkey}.address"),
                format!("{address} is already {other}"),
            );
        } else {
            addr_owner.insert(address, format!("used by {me}"));
        }
        let mac = match &n.mac {
            Some(m) => match vmm::network::parse_mac(m) {
                Ok(mac) => mac,
                Err(e) => {
                    c.bad(format!("{nkey}.mac"), e.to_string());
                    continue;
                }
            },
            None => vmm::network::derive_mac(&format!("lab {lab} vm {}", v.name), j as u32),
        };
        // A derived MAC only repeats for a repeated VM name, which is reported already.
        if let (Some(other), Some(_)) = (mac_owner.get(&mac), &n.mac) {
            c.bad(
                format!("{nkey}.mac"),
                format!("{} is already used by {other}", format_mac(&mac)),
            );
        } else {
            mac_owner.insert(mac, me);
        }
        nics.push(Nic {
            network: n.network.clone(),
            address,
            prefix: net.prefix,
            mac,
        });
    }

    // Extra disks.
    let mut disks = Vec::new();
    let mut disk_seen = BTreeSet::new();
    for (j, d) in v.disks.iter().enumerate() {
        let dkey = format!("{key}.disks[{j}]");
        if !valid_name(&d.name) || d.name == "disk" {
            c.bad(
                format!("{dkey}.name"),
                format!(
                    "disk name '{}' is not 1-32 of a-z, 0-9 and '-' (nor 'disk')",
                    d.name
                ),
            );
        }
        if !disk_seen.insert(d.name.clone()) {
            c.bad(
                format!("{dkey}.name"),
                format!("a second disk named '{}'", d.name),
            );
        }
        let size = match vmm::config::parse_size(&d.size) {
            Ok(s) if s >= 1 << 20 => s,
            Ok(_) => {
                c.bad(format!("{dkey}.size"), "less than 1M");
                0
            }
            Err(e) => {
                c.bad(format!("{dkey}.size"), e.to_string());
                0
            }
        };
        let ext4 = match d.format.as_deref() {
            None => false,
            Some("ext4") => true,
            Some(f) => {
                c.bad(
                    format!("{dkey}.format"),
                    format!("'{f}': only ext4 (or no format) is supported"),
                );
                false
            }
        };
        if let Some(m) = &d.mount {
            let plain = m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
            if !m.starts_with('/') || m == "/" || !plain {
                c.bad(
                    format!("{dkey}.mount"),
                    format!("'{m}' is not an absolute path of letters, digits and /_.-"),
                );
            }
            if !ext4 {
                c.bad(format!("{dkey}.mount"), "mount needs format = \"ext4\"");
            }
        }
        disks.push(Disk {
            name: d.name.clone(),
            size,
            ext4,
            mount: d.mount.clone(),
        });
    }
    // root disk + extra disks + seed + NICs + entropy device.
    let devices = usize::from(base_disk.is_some()) + v.disks.len() + 1 + v.nics.len() + 1;
    if devices > MAX_VIRTIO {
        c.bad(
            key.clone(),
            format!(
                "{devices} virtio devices (disks, the cloud-init seed, NICs, entropy): at most \
                 {MAX_VIRTIO}"
            ),
        );
    }

    // user-data.
    let user_data = match (&v.user_data, &v.user_data_file) {
        (Some(_), Some(_)) => {
            c.bad(
                format!("{key}.user_data_file"),
                "give either user_data or user_data_file, not both",
            );
            None
        }
        (Some(t), None) => Some((format!("{key}.user_data"), t.clone())),
        (None, Some(f)) => {
            c.file(&format!("{key}.user_data_file"), f)
                .and_then(|p| match std::fs::read_to_string(&p) {
                    Ok(t) => Some((format!("{key}.user_data_file"), t)),
                    Err(e) => {
                        c.bad(
                            format!("{key}.user_data_file"),
                            format!("{}: {e}", p.display()),
                        );
                        None
                    }
                })
        }
        (None, None) => None,
    };
    let user_data = user_data.and_then(|(k, t)| {
        if crate::seed::part_type(&t).is_none() {
            c.bad(
                k,
                "user-data must start with #cloud-config, #! (a script) or #cloud-boothook",
            );
            None
        } else {
            Some(t)
        }
    });

    // Files.
    let mut files = Vec::new();
    let mut paths_seen = BTreeSet::new();
    for (j, f) in v.files.iter().enumerate() {
        let fkey = format!("{key}.files[{j}]");
        if !f.path.starts_with('/') || f.path.ends_with('/') {
            c.bad(
                format!("{fkey}.path"),
                format!("'{}' is not an absolute file path", f.path),
            );
        }
        if !paths_seen.insert(f.path.clone()) {
            c.bad(
                format!("{fkey}.path"),
                format!("a second file at {}", f.path),
            );
        }
        let content = match (&f.content, &f.source) {
            (Some(t), None) => Some(t.clone().into_bytes()),
            (None, Some(s)) => {
                c.file(&format!("{fkey}.source"), s)
                    .and_then(|p| match std::fs::read(&p) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            c.bad(format!("{fkey}.source"), format!("{}: {e}", p.display()));
                            None
                        }
                    })
            }
            _ => {
                c.bad(fkey.clone(), "give either content or source");
                None
            }
        };
        let mode = match f.mode.as_deref().map(|m| u32::from_str_radix(m, 8)) {
            None => None,
            Some(Ok(m)) if m <= 0o7777 => Some(m),
            _ => {
                c.bad(
                    format!("{fkey}.mode"),
                    format!(
                        "'{}' is not octal permissions such as 0644",
                        f.mode.as_deref().unwrap_or("")
                    ),
                );
                None
            }
        };
        if let Some(o) = &f.owner {
            let ok = o.split(':').count() <= 2 && o.split(':').all(valid_user);
            if !ok {
                c.bad(
                    format!("{fkey}.owner"),
                    format!("'{o}' is not USER or USER:GROUP"),
                );
            }
        }
        if let Some(content) = content {
            files.push(GuestFile {
                path: f.path.clone(),
                content,
                owner: f.owner.clone(),
                mode,
            });
        }
    }

    if let Some(g) = &v.certificate_group {
        if !valid_user(g) {
            c.bad(
                format!("{key}.certificate_group"),
                format!("'{g}' is not a group name"),
            );
        } else if !v.certificate {
            c.bad(
                format!("{key}.certificate_group"),
                "certificate_group needs certificate = true",
            );
        }
    }
    if c.list.len() > before {
        return None;
    }
    Some(Vm {
        name: v.name.clone(),
        kernel: kernel?,
        initrd,
        base_disk,
        cmdline: match (image_cmdline, &v.cmdline) {
            (Some(i), Some(c)) => Some(format!("{i} {c}")),
            (i, c) => i.or_else(|| c.clone()),
        },
        cpus,
        memory,
        nics,
        disks,
        user_data,
        files,
        lab_key: v.lab_key,
        certificate: v.certificate,
        certificate_group: v.certificate_group.clone(),
    })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
