//! The VM's configuration: what the user asked for, already parsed and checked for
//! syntax by the CLI. The VMM checks the rest (files exist, sizes fit the host) when it
//! builds the VM, and reports problems as [`crate::Error`]s of the "bad input" class.

pub use devices::rate_limiter::{parse_rate, RateLimit};
use std::path::PathBuf;

/// Where the guest's serial console (COM1) goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// Guest output to stdout, stdin to the guest (raw mode when stdin is a terminal).
    Stdio,
    /// Guest output appended to a file; no input.
    File(PathBuf),
    /// No serial output at all (the device still exists so the guest's probe works).
    None,
}

pub use arch::cpuid::{CpuTemplate, CpuTemplateChoice};

/// One `--disk`: how the block device opens its image.
pub use devices::virtio::block::BlockConfig;

/// The host side of one `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostInterface {
    /// An existing tap device, used as found and left as found.
    Tap(String),
    /// A bridge: minivmm creates a tap, attaches it, and removes it when the VM ends.
    Bridge(String),
}

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Where frames go on the host.
    pub host: HostInterface,
    /// The guest's MAC; derived from the VM and interface index when absent.
    pub mac: Option<[u8; 6]>,
    /// Each direction's limit, bytes and frames per second (`bw=`, `pps=`).
    pub limit: RateLimit,
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, appended after minivmm's defaults.
    pub cmdline: Option<String>,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Serial console routing.
    pub serial: SerialMode,
    /// CPUID template choice.
    pub cpu_template: CpuTemplateChoice,
    /// Disks, in order (`vda`, `vdb`, ...).
    pub disks: Vec<BlockConfig>,
    /// The last of `disks` is a cloud-init seed the front-end made (`--cloud-init`), not
    /// one of the user's: it is never the root file system.
    pub seed_disk: bool,
    /// Network interfaces, in order (`eth0`, `eth1`, ...).
    pub nets: Vec<NetConfig>,
    /// The entropy device's host source (`--rng src=PATH`; default `/dev/urandom`), or
    /// None for no entropy device (`--rng none`).
    pub rng: Option<PathBuf>,
    /// Count KVM exits per I/O port and MMIO address too (`--stats`), not only by reason.
    pub detailed_counters: bool,
    /// A name for the VM; seeds the derived MAC addresses (see [`VmConfig::mac_seed`]).
    pub name: Option<String>,
    /// Describe the machine with ACPI tables (CPUs, IOAPIC, COM1, virtio devices, power
    /// button). Without ACPI, the MP table and `virtio_mmio.device=` entries on the kernel
    /// command line do it.
    pub acpi: bool,
    /// Seccomp filters on every thread of the VM (see [`crate::seccomp`]).
    pub seccomp: crate::seccomp::SeccompMode,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: None,
            memory: DEFAULT_MEMORY,
            cpus: 1,
            serial: SerialMode::Stdio,
            cpu_template: CpuTemplateChoice::Auto,
            disks: Vec::new(),
            seed_disk: false,
            nets: Vec::new(),
            rng: Some(PathBuf::from(DEFAULT_RNG_SOURCE)),
            detailed_counters: false,
            name: None,
            acpi: true,
            seccomp: Default::default(),
        }
    }

    /// What derived MAC addresses are computed from: the VM's name if it has one, else
    /// its kernel, initrd, disks (not a cloud-init seed, whose path is a file descriptor
    /// of the moment) and command line. The same VM gets the same MACs every boot; two VMs
    /// that differ in any of these get different ones.
    pub fn mac_seed(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let mut seed = self.kernel.display().to_string();
        for p in self
            .initrd
            .iter()
            .chain(self.user_disks().iter().map(|d| &d.path))
        {
            seed.push('\0');
            seed.push_str(&p.display().to_string());
        }
        seed.push('\0');
        seed.push_str(self.cmdline.as_deref().unwrap_or(""));
        seed
    }

    /// The user's disks: [`VmConfig::disks`] without the cloud-init seed.
    pub fn user_disks(&self) -> &[BlockConfig] {
        let n = self.disks.len() - usize::from(self.seed_disk && !self.disks.is_empty());
        &self.disks[..n]
    }
}

/// Where the entropy device reads by default.
pub const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";

/// Default guest RAM: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// Why a size string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Empty, or not a number followed by an optional unit.
    #[error(
        "invalid size '{0}': expected a number with an optional K, M, G or T suffix (e.g. 256M)"
    )]
    Invalid(String),
    /// The value does not fit in 64 bits.
    #[error("size '{0}' is too large")]
    Overflow(String),
}

/// Parse a size such as `256M`, `2G`, `1048576`, `512K` (binary units; an optional
/// trailing `B` or `iB` is accepted: `2GiB`).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(SizeError::Invalid(s.to_string()));
    }
    let value: u64 = num
        .parse()
        .map_err(|_| SizeError::Overflow(s.to_string()))?;
    let unit = unit.to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(SizeError::Invalid(s.to_string())),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes() {
        assert!(matches!(parse_size(""), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("M"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("12X"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("-1"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1.5G"), Err(SizeError::Invalid(_))));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("20000000T"),
            Err(SizeError::Overflow(_))
        ));
    }
}
