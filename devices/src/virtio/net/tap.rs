//! A Linux TAP device opened through `/dev/net/tun`: the host end of a virtio-net device.
//!
//! A TAP is a virtual Ethernet interface whose "wire" is a file descriptor: every Ethernet
//! frame the host kernel sends out of the interface can be `read` from the fd, and every
//! frame `write`n to the fd appears as received on the interface. This module only owns
//! that fd and the `TUN*` ioctls that configure it:
//!
//! - `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: Ethernet frames, no extra
//!   packet-info prefix, and a virtio-net header in front of every frame. The header lets
//!   checksum and segmentation offloads cross the fd untouched, so the guest and the host
//!   kernel can exchange 64 KiB TCP segments instead of 1500-byte packets.
//! - `TUNSETVNETHDRSZ`: the header length (12 bytes, `virtio_net_hdr_v1`, for virtio 1.x).
//! - `TUNSETOFFLOAD`: which offloads the *reader* of the fd (the guest) accepts.
//!
//! Host-side configuration (bringing the interface up, attaching it to a bridge) needs a
//! socket and belongs to the VMM (`vmm::network`), not to the device.
//!
//! Lifetime: `TUNSETIFF` on a name that does not exist creates the interface; it is removed
//! again when its last fd is closed, unless someone made it persistent (`TUNSETPERSIST`,
//! as `ip tuntap add` does). This module never sets `TUNSETPERSIST`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The longest interface name the kernel accepts (`IFNAMSIZ` - 1 for the NUL).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Offload flags for [`Tap::set_offload`] (`TUN_F_*` from `linux/if_tun.h`).
pub mod offload {
    /// The reader accepts frames with a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
    /// The reader accepts TCPv4 segmentation-offload frames (needs `TUN_F_CSUM`).
    pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
    /// The reader accepts TCPv6 segmentation-offload frames (needs `TUN_F_CSUM`).
    pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
    /// The reader accepts TSO frames with ECN (needs TSO4 or TSO6).
    pub const TUN_F_TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// The reader accepts UDP fragmentation-offload frames (needs `TUN_F_CSUM`).
    pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;
}

/// Why a TAP could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is longer than the kernel allows.
    #[error("tap name {name:?} is {len} bytes long; at most {max} bytes are allowed", len = name.len(), max = MAX_IFNAME_LEN)]
    NameTooLong {
        /// The rejected name.
        name: String,
    },
    /// The interface name is empty or contains characters the kernel rejects.
    #[error("invalid tap name {0:?}: it must be non-empty and must not contain '/', ':', whitespace or NUL")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed (permission, a name used by a non-TAP interface, a multi-queue tap...).
    #[error("cannot attach to tap {name:?} (TUNSETIFF): {source}")]
    SetIff {
        /// The requested name.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// `TUNSETOFFLOAD` refused the flags.
    #[error("tap {name}: TUNSETOFFLOAD {flags:#x} failed: {source}")]
    SetOffload {
        /// The interface.
        name: String,
        /// The refused flags.
        flags: u32,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("tap {name}: TUNSETVNETHDRSZ {size} failed: {source}")]
    SetVnetHdrSize {
        /// The interface.
        name: String,
        /// The refused size.
        size: i32,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// The fd could not be duplicated.
    #[error("tap {name}: cannot duplicate the fd: {source}")]
    Clone {
        /// The interface.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface. The fd is non-blocking: [`read`](Tap::read) returns
/// `ErrorKind::WouldBlock` when no frame is queued.
#[derive(Debug)]
pub struct Tap {
    file: File,
    if_name: String,
    /// For a TAP someone else made: the header size to put back when this fd closes.
    restore_vnet_hdr_size: Option<i32>,
}

/// Check an interface name the way the kernel's `dev_valid_name` does: 1 to 15 bytes,
/// not `.` or `..`, no `/`, `:`, whitespace or NUL.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    if name.len() > MAX_IFNAME_LEN {
        return Err(TapError::NameTooLong {
            name: name.to_string(),
        });
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(TapError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// An `ifreq` with `name` copied into `ifr_name` (the caller validated the length with
/// [`validate_name`], so a NUL always follows within the `IFNAMSIZ` bytes).
pub fn ifreq_with_name(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers and
    // pointers); all-zero bytes is a valid value for it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// The NUL-terminated name in `ifr_name`, as the kernel returned it.
fn name_from_ifreq(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tap {
    /// Open (creating it if it does not exist) the TAP interface `name`, with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking and close-on-exec.
    ///
    /// `name` may contain one `%d`, which the kernel replaces with the first free number
    /// (`"tap%d"` gives `tap0`, `tap1`, ...); [`if_name`](Tap::if_name) returns the result.
    /// A tap created here is not persistent: it disappears when the last fd to it (this
    /// `Tap` and its [`try_clone`](Tap::try_clone)s) is closed.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Self::open_with_flags(name, 0)
    }

    /// Create a new TAP called `name`; unlike [`open`](Tap::open), fail (`EBUSY`) if an
    /// interface of that name already exists rather than attach to it. The TAP is not
    /// persistent: it is removed when its last fd is closed.
    pub fn create(name: &str) -> Result<Tap, TapError> {
        Self::open_with_flags(name, libc::IFF_TUN_EXCL)
    }

    fn open_with_flags(name: &str, extra_flags: libc::c_int) -> Result<Tap, TapError> {
        validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;

        let mut ifr = ifreq_with_name(name);
        // IFF_TUN_EXCL is 0x8000: it does not fit a positive c_short, the cast keeps the bits.
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | extra_flags) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, and `ifr` is one, alive for
        // the duration of the call. The fd is ours.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let if_name = name_from_ifreq(&ifr);
        log::debug!("tap: opened {if_name}");
        Ok(Tap {
            file,
            if_name,
            restore_vnet_hdr_size: None,
        })
    }

    /// Create a new TAP with a name the kernel picks (`tap0`, `tap1`, ...).
    pub fn create_unnamed() -> Result<Tap, TapError> {
        Self::open("tap%d")
    }

    /// The interface's name.
    pub fn if_name(&self) -> &str {
        &self.if_name
    }

    /// Tell the kernel which offloads the reader of this fd handles (`offload::TUN_F_*`).
    /// The kernel refuses unknown flags and TSO/UFO without `TUN_F_CSUM`.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); no memory
        // is passed. The fd is ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if ret < 0 {
            return Err(TapError::SetOffload {
                name: self.if_name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Set the length of the virtio-net header in front of every frame (12 for
    /// `virtio_net_hdr_v1`, which virtio 1.x uses).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        let value: libc::c_int = size;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points to a live
        // local. The fd is ours.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &value) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: self.if_name.clone(),
                size,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Read one frame (virtio-net header first) into `buf`. A frame longer than `buf` is
    /// truncated by the kernel. `WouldBlock` means no frame is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and outlives the call.
        let ret = unsafe {
            libc::read(
                self.file.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }

    /// Write one frame (virtio-net header first). Fails with `EIO` while the interface is
    /// down, `EINVAL` for a malformed header.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes and outlives the call.
        let ret = unsafe {
            libc::write(
                self.file.as_raw_fd(),
                buf.as_ptr().cast::<libc::c_void>(),
                buf.len(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }

    /// A second fd to the same TAP (`dup`). The interface lives while any of them is open.
    pub fn try_clone(&self) -> Result<Tap, TapError> {
        let file = self.file.try_clone().map_err(|source| TapError::Clone {
            name: self.if_name.clone(),
            source,
        })?;
        Ok(Tap {
            file,
            if_name: self.if_name.clone(),
            restore_vnet_hdr_size: None,
        })
    }

    /// The length of the virtio-net header the TAP expects (the kernel's default is 10).
    pub fn vnet_hdr_size(&self) -> Result<i32, TapError> {
        let mut value: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer, which points to a
        // live local. The fd is ours.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut value) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: self.if_name.clone(),
                size: -1,
                source: io::Error::last_os_error(),
            });
        }
        Ok(value)
    }

    /// For a TAP that outlives minivmm (the user's own, persistent one): when this `Tap`
    /// is dropped, put the header size back as it is now and clear the offloads the guest
    /// negotiated, which is how `ip tuntap add` makes them, so the next program that
    /// opens the TAP does not receive GSO frames it never asked for. (The kernel has no
    /// call that reads offloads back, so "as found" means none.)
    pub fn restore_on_drop(&mut self) -> Result<(), TapError> {
        self.restore_vnet_hdr_size = Some(self.vnet_hdr_size()?);
        Ok(())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let Some(size) = self.restore_vnet_hdr_size else {
            return;
        };
        if let Err(e) = self.set_offload(0) {
            log::warn!("tap {}: cannot clear offloads: {e}", self.if_name);
        }
        if let Err(e) = self.set_vnet_hdr_size(size) {
            log::warn!("tap {}: cannot restore the header size: {e}", self.if_name);
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_validation() {
        assert!(matches!(
            validate_name("a-very-long-name-x"),
            Err(TapError::NameTooLong { .. })
        ));
        let e = validate_name("sixteen-chars-xx").unwrap_err().to_string();
        assert!(e.contains("at most 15 bytes"), "{e}");
        assert!(validate_name("fifteen-chars-x").is_ok());
        assert!(matches!(validate_name(""), Err(TapError::InvalidName(_))));
        assert!(matches!(
            validate_name("a/b"),
            Err(TapError::InvalidName(_))
        ));
        assert!(matches!(
            validate_name("a b"),
            Err(TapError::InvalidName(_))
        ));
        assert!(matches!(validate_name(".."), Err(TapError::InvalidName(_))));
        assert!(validate_name("tap%d").is_ok());
    }

    #[test]
    fn too_long_name_fails_before_opening() {
        let e = Tap::open("this-name-is-too-long").unwrap_err();
        assert!(matches!(e, TapError::NameTooLong { .. }), "{e}");
    }

    #[test]
    fn ifreq_name_round_trip() {
        let ifr = ifreq_with_name("mvm1n0");
        assert_eq!(name_from_ifreq(&ifr), "mvm1n0");
        let ifr = ifreq_with_name("fifteen-chars-x");
        assert_eq!(name_from_ifreq(&ifr), "fifteen-chars-x");
    }

    #[test]
    fn a_tap_marked_restore_on_drop_is_left_as_found() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            return;
        }
        // Non-persistent: it goes away with the last fd, so the test leaves nothing behind.
        let mut tap = Tap::create("mvrestore%d").unwrap();
        let witness = tap.try_clone().unwrap();
        let before = witness.vnet_hdr_size().unwrap();
        tap.restore_on_drop().unwrap();
        tap.set_vnet_hdr_size(12).unwrap();
        tap.set_offload(offload::TUN_F_CSUM | offload::TUN_F_TSO4)
            .unwrap();
        assert_eq!(witness.vnet_hdr_size().unwrap(), 12);
        let name = tap.if_name().to_string();
        assert!(tso_on(&name));
        drop(tap);
        assert_eq!(witness.vnet_hdr_size().unwrap(), before);
        assert!(!tso_on(&name));
    }

    /// Whether TCP segmentation offload is on for `name` (`ethtool -k`'s
    /// `tcp-segmentation-offload`), through the legacy `ETHTOOL_GTSO` request.
    fn tso_on(name: &str) -> bool {
        const ETHTOOL_GTSO: u32 = 0x1e;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut value = EthtoolValue {
            cmd: ETHTOOL_GTSO,
            data: 0,
        };
        let mut ifr = ifreq_with_name(name);
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: SIOCETHTOOL reads the ifreq and reads/writes the `ethtool_value` its
        // data pointer names; both are locals alive for the call.
        let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
        assert_eq!(ret, 0, "{}", io::Error::last_os_error());
        value.data != 0
    }
}
