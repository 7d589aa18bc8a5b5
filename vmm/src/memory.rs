//! Guest RAM: anonymous host memory mapped into the guest's physical address space.
//!
//! minivmm allocates the guest's RAM with vm-memory (one private anonymous mapping per
//! region) and tells KVM where it is with `KVM_SET_USER_MEMORY_REGION`: guest physical
//! address X is then host virtual address `region.host_base + (X - region.guest_base)`.
//! RAM that would overlap the 32-bit MMIO hole (devices, IOAPIC, LAPIC) continues at 4 GiB;
//! `boot::e820::MemoryLayout` computes the split, once, from the checked size ([`layout`]),
//! and the same layout later gives the e820 map.
//!
//! Every access the VMM makes on the guest's behalf goes through vm-memory's checked
//! accessors, which refuse addresses outside these regions: that is what keeps an
//! untrusted guest's pointers from reaching host memory.

use boot::e820::MemoryLayout;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use devices::virtio::GuestMemoryMmap;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Too small, unaligned or unmappable (checked by the layout).
    #[error("--memory: {0}")]
    Layout(#[from] boot::e820::Error),
    /// More than the host has.
    #[error("--memory {asked} MiB is more than this host's {host} MiB of RAM")]
    TooLarge {
        /// MiB asked for.
        asked: u64,
        /// MiB the host has.
        host: u64,
    },
    /// mmap failed.
    #[error("allocating guest RAM: {0}")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
    /// The thread registering the regions panicked (a bug).
    #[error("registering guest RAM: the thread panicked")]
    RegisterPanicked,
    /// KVM refused a region.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot}: {source}")]
    Register {
        /// The memory slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl MemoryError {
    /// Whether this is the user's mistake rather than the host's.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, MemoryError::Layout(_) | MemoryError::TooLarge { .. })
    }
}

/// The host's RAM in bytes, from /proc/meminfo (None if it cannot be read).
pub fn host_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Check `size` once, against the layout's limits and the host's RAM (`host`): the
/// layout that guest memory and the e820 map are then made from.
pub fn layout(size: u64, host: Option<u64>) -> Result<MemoryLayout, MemoryError> {
    let layout = MemoryLayout::new(size)?;
    match host {
        Some(host) if size > host => Err(MemoryError::TooLarge {
            asked: size >> 20,
            host: host >> 20,
        }),
        _ => Ok(layout),
    }
}

/// Allocate the guest RAM of `layout`, split around the MMIO hole.
pub fn create(layout: &MemoryLayout) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&layout.ram_regions()).map_err(MemoryError::Mmap)
}

/// Tell KVM about every region of `mem`, one memory slot each.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM's use
        // of it (every vCPU and device holds a clone), and regions do not overlap.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits() {
        assert!(matches!(layout(0, None), Err(MemoryError::Layout(_))));
        assert!(matches!(
            layout(4095 + (16 << 20), None),
            Err(MemoryError::Layout(_))
        ));
        assert!(matches!(
            layout(8 << 30, Some(4 << 30)),
            Err(MemoryError::TooLarge {
                asked: 8192,
                host: 4096
            })
        ));
        assert_eq!(layout(256 << 20, Some(4 << 30)).unwrap().size(), 256 << 20);
        assert!(layout(256 << 20, None).is_ok());
    }

    #[test]
    fn host_ram_is_readable() {
        assert!(host_ram().unwrap() > 16 << 20);
    }
}
