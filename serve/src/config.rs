//! What a VM is made of: the `POST /api/v1/vms` body ([`CreateVm`]), checked and turned
//! into the `minivmm` command line of its process ([`VmSpec`]), and the images it may
//! name ([`Image`]).
//!
//! The checks give the command line's words where a flag exists: the vCPU count and the
//! memory size go through [`vmm::VmBuilder::new`] and [`vmm::config::parse_size`], as
//! `--cpus` and `--memory` do, and their messages name the body's field instead of the
//! flag. Files are checked here too (the kernel, initrd and disks exist), so that a bad
//! body is a 400 before anything starts; what only the VM's own process can find out
//! (a kernel that does not load, a locked disk) comes back from it when it starts
//! (see `manager.rs`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The body of `POST /api/v1/vms`, as given (and stored, normalised, in `config.json`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// `[a-z0-9][a-z0-9-]{0,31}`.
    pub name: String,
    /// An image from `GET /api/v1/images` (or `kernel` below).
    #[serde(default)]
    pub image: Option<String>,
    /// A kernel (absolute host path).
    #[serde(default)]
    pub kernel: Option<String>,
    /// An initramfs (absolute host path).
    #[serde(default)]
    pub initrd: Option<String>,
    /// Extra kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// vCPUs.
    #[serde(default = "one")]
    pub cpus: u64,
    /// MiB of guest RAM: a number, or a size as `--memory` takes it (`"1G"`).
    #[serde(default = "default_memory")]
    pub memory_mib: Value,
    /// `--disk` specs: `PATH[,readonly=on][,serial=ID][,bw=RATE][,iops=N]`.
    #[serde(default)]
    pub disks: Vec<String>,
    /// An existing host bridge: `--net bridge=NAME`.
    #[serde(default)]
    pub bridge: Option<String>,
    /// cloud-init user-data (`--cloud-init FILE`).
    #[serde(default)]
    pub user_data: Option<String>,
    /// Start it now.
    #[serde(default = "yes")]
    pub start: bool,
}

fn one() -> u64 {
    1
}
fn default_memory() -> Value {
    Value::from(256)
}
fn yes() -> bool {
    true
}

/// A bootable image the manager offers.
#[derive(Clone, Debug, Serialize)]
pub struct Image {
    /// Its name in `CreateVm.image`.
    pub name: String,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs, if it boots from one.
    pub initrd: Option<PathBuf>,
    /// The root disk (attached read-only), if it boots from one.
    pub disk: Option<PathBuf>,
    /// Its own kernel command line, if it needs one.
    pub cmdline: Option<String>,
    /// One line for people.
    pub description: String,
}

/// The images in the test guest's directory (`resources/guest/build.sh`): `busybox`
/// (its initramfs: a writable root in RAM) and `busybox-disk` (its ext4 root image,
/// shared read-only by every VM: boots faster, since nothing is unpacked).
pub fn images(guest_dir: Option<&Path>) -> Vec<Image> {
    let Some(dir) = guest_dir else {
        return Vec::new();
    };
    let kernel = dir.join("vmlinux");
    if !kernel.is_file() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let initrd = dir.join("initramfs.cpio");
    if initrd.is_file() {
        out.push(Image {
            name: "busybox".into(),
            kernel: kernel.clone(),
            initrd: Some(initrd),
            disk: None,
            cmdline: None,
            description: "minivmm's busybox test guest (Linux 6.1) from its initramfs: a \
                          shell on the console, root file system in RAM"
                .into(),
        });
    }
    let disk = dir.join("rootfs.ext4");
    if disk.is_file() {
        out.push(Image {
            name: "busybox-disk".into(),
            kernel,
            initrd: None,
            disk: Some(disk),
            cmdline: None,
            description: "the same guest from its ext4 root image, shared read-only (/tmp \
                          is writable); boots faster"
                .into(),
        });
    }
    out
}

/// The newest complete busybox test-guest build under `~/.cache/minivmm/guest/` (a
/// directory with `.complete`, `vmlinux` and its initramfs or root image; the Debian
/// guest's directories there have neither), if any.
pub fn newest_guest_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let root = Path::new(&home).join(".cache/minivmm/guest");
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.join(".complete").is_file()
                && p.join("vmlinux").is_file()
                && (p.join("initramfs.cpio").is_file() || p.join("rootfs.ext4").is_file())
        })
        .filter_map(|p| {
            let t = std::fs::metadata(p.join(".complete"))
                .ok()?
                .modified()
                .ok()?;
            Some((t, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// A bad body: the status (400) and one line naming the field.
pub type Invalid = String;

/// A checked VM: what its process is started with.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The body, normalised (`memory_mib` a number, `start` as given).
    pub create: CreateVm,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: Option<PathBuf>,
    /// The kernel command line (the image's and the body's).
    pub cmdline: Option<String>,
    /// vCPUs.
    pub cpus: u8,
    /// MiB of RAM.
    pub memory_mib: u64,
    /// `--disk` specs (the image's root disk first).
    pub disks: Vec<String>,
    /// The bridge.
    pub bridge: Option<String>,
}

/// Whether `name` is a VM name: `[a-z0-9][a-z0-9-]{0,31}`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// An absolute path to an existing regular file, or the message (`what PATH: why`, as
/// the command line says it).
fn host_file(what: &str, path: &str) -> Result<PathBuf, Invalid> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(format!(
            "{what} '{path}': not an absolute path (the manager's working directory is not \
             yours)"
        ));
    }
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err(format!("{what} {path}: not a regular file")),
        Err(e) => Err(format!("{what} {path}: {e}")),
    }
}

/// Check one `--disk` spec (as `minivmm_cli::flags::parse_disk` does, in its words, and
/// that the image exists); returns its path and whether it is read-only.
fn check_disk(i: usize, spec: &str) -> Result<(PathBuf, bool), Invalid> {
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or("");
    if path.is_empty() {
        return Err(format!("disks[{i}]: empty disk path"));
    }
    let mut read_only = false;
    for opt in parts {
        match opt.split_once('=') {
            Some(("readonly", "on")) => read_only = true,
            Some(("readonly", "off")) => read_only = false,
            Some(("serial", _)) => {}
            Some(("bw", rate)) | Some(("iops", rate)) => {
                vmm::config::parse_rate(rate).map_err(|e| format!("disks[{i}]: {e}"))?;
            }
            _ => {
                return Err(format!(
                    "disks[{i}]: unknown disk option '{opt}' (readonly=on|off, serial=ID, \
                     bw=BYTES/s, iops=N)"
                ))
            }
        }
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(format!("disks[{i}]: '{path}' is not an absolute path"));
    }
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Err(format!("disks[{i}]: {path} is a directory")),
        Ok(_) => Ok((p, read_only)),
        Err(e) => Err(format!("disks[{i}]: cannot open disk image {path}: {e}")),
    }
}

/// `memory_mib`: a number of MiB or a size string.
fn memory_mib(v: &Value) -> Result<u64, Invalid> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            format!("memory_mib {n}: expected a whole number of MiB, or a size such as 512M")
        }),
        Value::String(s) => {
            let bytes = vmm::config::parse_size(s).map_err(|e| format!("memory_mib: {e}"))?;
            if bytes % (1 << 20) != 0 {
                return Err(format!("memory_mib '{s}': not a whole number of MiB"));
            }
            Ok(bytes >> 20)
        }
        _ => Err("memory_mib: expected a number of MiB, or a size such as 512M".into()),
    }
}

/// Whether a host bridge of that name exists.
fn bridge_exists(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .is_dir()
}

/// The command line's message for `--cpus`/`--memory`, from the flag's name on, naming
/// the body's field instead ("guest memory: --memory: too small" becomes
/// "memory_mib: too small").
fn field_words(msg: &str) -> String {
    for (flag, field) in [("--cpus", "cpus"), ("--memory", "memory_mib")] {
        if let Some(i) = msg.find(flag) {
            return format!("{field}{}", &msg[i + flag.len()..]);
        }
    }
    msg.to_string()
}

impl VmSpec {
    /// Check `create` (parsed from the body) against the host and the `images`; the
    /// message of the first problem, naming its field.
    pub fn check(
        mut create: CreateVm,
        images: &[Image],
        cloud_init: bool,
    ) -> Result<Self, Invalid> {
        if !valid_name(&create.name) {
            return Err(format!(
                "name '{}': expected 1 to 32 lowercase letters, digits and '-', starting with a \
                 letter or digit",
                create.name
            ));
        }
        let image = match &create.image {
            Some(name) => Some(images.iter().find(|i| &i.name == name).ok_or_else(|| {
                let known: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
                format!(
                    "image '{name}': no such image (this manager has: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            })?),
            None => None,
        };
        let (kernel, initrd) = match (image, &create.kernel) {
            (Some(_), Some(_)) => {
                return Err("image and kernel: give one of them, not both".into());
            }
            (None, None) => return Err("kernel: missing (give an image or a kernel)".into()),
            (Some(i), None) => {
                if create.initrd.is_some() {
                    return Err(format!(
                        "initrd: image '{}' brings its own root; give a kernel to use an initrd",
                        i.name
                    ));
                }
                (i.kernel.clone(), i.initrd.clone())
            }
            (None, Some(k)) => (
                host_file("kernel", k)?,
                create
                    .initrd
                    .as_deref()
                    .map(|p| host_file("initrd", p))
                    .transpose()?,
            ),
        };
        let cmdline = [
            image.and_then(|i| i.cmdline.clone()),
            create.cmdline.clone(),
        ]
        .into_iter()
        .flatten()
        .filter(|c| !c.trim().is_empty())
        .reduce(|a, b| format!("{a} {b}"));
        if cmdline.as_deref().is_some_and(|c| c.contains('\0')) {
            return Err("cmdline: contains a NUL byte".into());
        }
        let mut disks = Vec::new();
        let mut block = Vec::new();
        if let Some(d) = image.and_then(|i| i.disk.as_ref()) {
            disks.push(format!("{},readonly=on", d.display()));
            block.push((d.clone(), true));
        }
        for (i, spec) in create.disks.iter().enumerate() {
            block.push(check_disk(i, spec)?);
            disks.push(spec.clone());
        }
        if let Some(br) = &create.bridge {
            let ok = !br.is_empty()
                && br.len() <= 15
                && br
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(format!(
                    "bridge '{br}': not an interface name (at most 15 of A-Z a-z 0-9 - _ .)"
                ));
            }
            if !bridge_exists(br) {
                return Err(format!(
                    "bridge '{br}': no such bridge on this host (minivmm network create {br} \
                     makes one)"
                ));
            }
        }
        if create.user_data.is_some() && !cloud_init {
            return Err(
                "user_data: cloud-init user-data needs --cloud-init support, which this \
                        minivmm does not have"
                    .into(),
            );
        }
        let memory = memory_mib(&create.memory_mib)?;
        let max_cpus = arch::mptable::max_cpus().min(usize::from(u8::MAX));
        let cpus = u8::try_from(create.cpus)
            .map_err(|_| format!("cpus {}: must be between 1 and {max_cpus}", create.cpus))?;
        // The checks of `--cpus`, `--memory` and the device list, in the same words.
        let mut cfg = vmm::VmConfig::new(kernel.clone());
        cfg.cpus = cpus;
        cfg.memory = memory
            .checked_mul(1 << 20)
            .ok_or_else(|| format!("memory_mib {memory}: too large"))?;
        cfg.disks = block
            .into_iter()
            .map(|(path, read_only)| vmm::config::BlockConfig {
                path,
                read_only,
                serial: None,
                limit: Default::default(),
            })
            .collect();
        cfg.nets = create
            .bridge
            .iter()
            .map(|b| vmm::config::NetConfig {
                host: vmm::config::HostInterface::Bridge(b.clone()),
                mac: None,
                limit: Default::default(),
            })
            .collect();
        vmm::VmBuilder::new(cfg).map_err(|e| field_words(&e.to_string()))?;
        create.memory_mib = Value::from(memory);
        Ok(Self {
            kernel,
            initrd,
            cmdline,
            cpus,
            memory_mib: memory,
            disks,
            bridge: create.bridge.clone(),
            create,
        })
    }

    /// The arguments of the VM's `minivmm` process, its files in `dir`.
    pub fn argv(&self, dir: &Path) -> Vec<String> {
        let mut a = vec![
            format!("--name={}", self.create.name),
            format!("--api-sock={}", dir.join("api.sock").display()),
            "--serial=stdio".into(),
            format!("--kernel={}", self.kernel.display()),
            format!("--cpus={}", self.cpus),
            format!("--memory={}M", self.memory_mib),
            "--log-level=warn".into(),
        ];
        if let Some(i) = &self.initrd {
            a.push(format!("--initrd={}", i.display()));
        }
        if let Some(c) = &self.cmdline {
            a.push(format!("--cmdline={c}"));
        }
        for d in &self.disks {
            a.push(format!("--disk={d}"));
        }
        if let Some(b) = &self.bridge {
            a.push(format!("--net=bridge={b}"));
        }
        if self.create.user_data.is_some() {
            a.push(format!("--cloud-init={}", dir.join("user-data").display()));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateVm {
        serde_json::from_str(json).unwrap()
    }

    fn kernel() -> String {
        // Any regular file passes as a kernel here; the VM's process loads it.
        std::env::current_exe().unwrap().display().to_string()
    }

    fn check(json: &str) -> Result<VmSpec, Invalid> {
        VmSpec::check(body(json), &[], false)
    }

    #[test]
    fn names() {
        for ok in ["a", "vm1", "0-x", "a234567890123456789012345678901b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "a23456789012345678901234567890123",
            "é",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn bodies_are_checked_field_by_field_in_the_command_lines_words() {
        let k = kernel();
        let e = check(&format!(r#"{{"name":"vm1","kernel":"{k}","cpus":0}}"#)).unwrap_err();
        assert!(e.starts_with("cpus 0: must be between 1 and"), "{e}");
        let e = check(&format!(r#"{{"name":"vm1","kernel":"{k}","cpus":300}}"#)).unwrap_err();
        assert!(e.starts_with("cpus 300: must be between 1 and"), "{e}");
        let e = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","memory_mib":"lots"}}"#
        ))
        .unwrap_err();
        assert!(e.starts_with("memory_mib: invalid size 'lots'"), "{e}");
        let e = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","memory_mib":1}}"#
        ))
        .unwrap_err();
        assert!(
            e.starts_with("memory_mib: guest memory of 1048576 bytes is too small"),
            "{e}"
        );
        let e = check(r#"{"name":"vm1"}"#).unwrap_err();
        assert!(e.starts_with("kernel: missing"), "{e}");
        let e = check(r#"{"name":"vm1","kernel":"/no/such/kernel"}"#).unwrap_err();
        assert_eq!(
            e,
            "kernel /no/such/kernel: No such file or directory (os error 2)"
        );
        let e = check(r#"{"name":"vm1","kernel":"vmlinux"}"#).unwrap_err();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = check(&format!(r#"{{"name":"Vm","kernel":"{k}"}}"#)).unwrap_err();
        assert!(e.starts_with("name 'Vm'"), "{e}");
        let e = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","disks":["/no/disk"]}}"#
        ))
        .unwrap_err();
        assert!(
            e.starts_with("disks[0]: cannot open disk image /no/disk"),
            "{e}"
        );
        let e = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","disks":["{k},ro=1"]}}"#
        ))
        .unwrap_err();
        assert!(e.starts_with("disks[0]: unknown disk option 'ro=1'"), "{e}");
        let e = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","disks":["{k}","{k}"]}}"#
        ))
        .unwrap_err();
        assert!(e.contains("is given twice"), "{e}");
        let e = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","bridge":"nobr0x"}}"#
        ))
        .unwrap_err();
        assert!(e.starts_with("bridge 'nobr0x': no such bridge"), "{e}");
        let e = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","user_data":"x"}}"#
        ))
        .unwrap_err();
        assert!(e.contains("--cloud-init"), "{e}");
        let e = check(r#"{"name":"vm1","image":"debian"}"#).unwrap_err();
        assert!(e.starts_with("image 'debian': no such image"), "{e}");
        let e = serde_json::from_str::<CreateVm>(r#"{"name":"vm1","cpu":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `cpu`"), "{e}");
    }

    #[test]
    fn a_good_body_becomes_a_command_line() {
        let k = kernel();
        let s = check(&format!(
            r#"{{"name":"vm1","kernel":"{k}","cpus":1,"memory_mib":"64M","cmdline":"quiet",
                "disks":["{k},readonly=on"]}}"#
        ))
        .unwrap();
        assert_eq!(s.memory_mib, 64);
        assert_eq!(s.create.memory_mib, Value::from(64));
        let argv = s.argv(Path::new("/state/vms/vm1"));
        for want in [
            "--name=vm1".to_string(),
            "--api-sock=/state/vms/vm1/api.sock".into(),
            "--serial=stdio".into(),
            format!("--kernel={k}"),
            "--memory=64M".into(),
            "--cmdline=quiet".into(),
            format!("--disk={k},readonly=on"),
        ] {
            assert!(argv.contains(&want), "{want} not in {argv:?}");
        }
    }

    #[test]
    fn images_bring_their_files() {
        let dir = std::env::temp_dir().join(format!("serve-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["vmlinux", "initramfs.cpio", "rootfs.ext4"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let imgs = images(Some(&dir));
        let names: Vec<&str> = imgs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["busybox", "busybox-disk"]);
        let s =
            VmSpec::check(body(r#"{"name":"a","image":"busybox-disk"}"#), &imgs, false).unwrap();
        assert_eq!(
            s.disks,
            [format!("{},readonly=on", dir.join("rootfs.ext4").display())]
        );
        let s = VmSpec::check(body(r#"{"name":"a","image":"busybox"}"#), &imgs, false).unwrap();
        assert_eq!(s.initrd, Some(dir.join("initramfs.cpio")));
        assert!(VmSpec::check(
            body(r#"{"name":"a","image":"busybox","kernel":"/x"}"#),
            &imgs,
            false
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
