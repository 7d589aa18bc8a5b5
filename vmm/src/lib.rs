//! minivmm's VMM: a VM's whole life behind one handle, [`Vm`].
//!
//! A front-end (the `minivmm` command, a control API, a lab runner) fills in a
//! [`VmConfig`], builds the VM with [`VmBuilder`], starts it, and then holds the handle:
//! pause, resume, power button, stop, state, counters, wait. The VMM prints nothing and
//! owns no terminal or signal: those belong to the front-end.
//!
//! Where things are, in the order a boot goes through them:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | what the user asked for ([`VmConfig`]) |
//! | [`builder`] | config to a ready VM, step by step: files, KVM, memory, kernel, devices, boot tables, vCPUs |
//! | [`memory`] | guest RAM and its registration with KVM |
//! | [`console_out`] | the thread that writes the guest's console output, so a blocked stdout never blocks a vCPU |
//! | [`device_manager`] | devices on the buses, their addresses, IRQs, irqfds and ioeventfds |
//! | [`bus`] | which device answers a port or MMIO address |
//! | [`network`] | host bridges and taps for virtio-net, MAC addresses |
//! | [`vcpu`] | a vCPU's boot state and its `KVM_RUN` loop, pause and stop |
//! | [`vm`] | the handle, the state machine, events |
//! | [`event_loop`] | the VMM thread: commands, device events, the end of the VM |
//! | [`seccomp`] | the system calls each thread may make once the guest runs |
//! | [`stats`] | KVM exit counters |
//! | [`error`] | what can go wrong, and whose fault it is |
//!
//! docs/architecture.md follows a boot from `main` to the guest's first instruction, and a
//! device from its flag to the guest driver.
#![deny(missing_docs)]

pub mod builder;
pub mod bus;
pub mod config;
pub mod console_out;
pub mod device_manager;
pub mod error;
pub mod event_loop;
pub mod memory;
pub mod network;
pub mod seccomp;
pub mod snapshot;
pub mod stats;
pub mod vcpu;
pub mod vm;

pub use builder::VmBuilder;
pub use config::{CpuTemplateChoice, SerialMode, VmConfig};
pub use error::Error;
pub use snapshot::{AfterSnapshot, RestoreOptions, SnapshotReport};
pub use vm::{Counters, DeviceCounters, Vm, VmEvent, VmInfo, VmOutcome, VmState};
