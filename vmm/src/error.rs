//! Everything that can go wrong building or running a VM, with messages that name what
//! failed, and which of it is the user's input (exit code 2) rather than the host's.

use crate::{device_manager, memory, network, vcpu};

/// Everything that can go wrong building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the user named cannot be used.
    #[error("{what} {path}: {source}")]
    File {
        /// "kernel", "initrd", ...
        what: &'static str,
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is impossible (sizes, counts).
    #[error("{0}")]
    Config(String),
    /// The kernel image is not a kernel minivmm can load.
    #[error("kernel {path}: {source}")]
    Kernel {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: boot::loader::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {path}: {source}")]
    Initrd {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: boot::initrd::Error,
    },
    /// The kernel command line is refused.
    #[error("kernel command line: {0}")]
    Cmdline(#[source] boot::cmdline::Error),
    /// A disk could not be opened or is unusable (the message names the path).
    #[error("--disk: {0}")]
    Disk(#[source] devices::virtio::block::BlockError),
    /// The entropy device's source could not be used.
    #[error("--rng: {0}")]
    Rng(#[source] devices::virtio::rng::RngError),
    /// A network interface could not be set up on the host.
    #[error("--net #{index}: {source}")]
    Net {
        /// Which `--net` (0-based).
        index: usize,
        /// Why.
        #[source]
        source: network::NetworkError,
    },
    /// The virtio-net device refused its tap.
    #[error("--net #{index}: {source}")]
    NetDevice {
        /// Which `--net` (0-based).
        index: usize,
        /// Why.
        #[source]
        source: devices::virtio::net::NetError,
    },
    /// `/dev/kvm` cannot be used.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// The failed step.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    Memory(#[from] memory::MemoryError),
    /// Writing the boot tables failed.
    #[error("writing boot data: {0}")]
    BootData(String),
    /// A device could not be created.
    #[error("device setup: {0}")]
    Device(#[from] device_manager::DeviceError),
    /// A vCPU could not be created or configured.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// Host resources (threads, eventfds, the event loop) failed.
    #[error("{0}")]
    Host(String),
    /// A request that the VM's state does not allow (pause before start, stop after the
    /// end, ...).
    #[error("cannot {0} a VM that is {1}")]
    NotRunning(&'static str, &'static str),
    /// The power button needs ACPI.
    #[error("the VM has no power button: it runs without ACPI (--no-acpi)")]
    NoPowerButton,
    /// A snapshot directory that cannot be restored: missing, truncated, foreign, from
    /// another format version, or not matching this host.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// vCPUs or devices did not park in time.
    #[error("pause failed: {0}")]
    Timeout(&'static str),
}

impl Error {
    /// Whether the error is the user's input (exit code 2) rather than the host (exit 1).
    pub fn is_bad_input(&self) -> bool {
        use devices::virtio::block::BlockError;
        use devices::virtio::rng::RngError;
        matches!(
            self,
            Error::File { .. }
                | Error::Config(_)
                | Error::Kernel { .. }
                | Error::Initrd { .. }
                | Error::Cmdline(_)
                | Error::Net { .. }
                | Error::Snapshot(_)
        ) || matches!(self, Error::Memory(m) if m.is_bad_input())
            || matches!(self, Error::Disk(e) if !matches!(e, BlockError::Worker { .. }))
            || matches!(self, Error::Rng(e) if !matches!(e, RngError::Worker(_)))
    }
}
