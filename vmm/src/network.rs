//! Host-side network plumbing for virtio-net: Linux bridges, the TAP interfaces minivmm
//! creates on them, and guest MAC addresses.
//!
//! A guest NIC is a TAP interface on the host (`devices::virtio::net::tap`). For the guest to
//! reach anything, that TAP has to be up and plugged into something, usually a Linux bridge
//! (a software switch) that also carries the host's address for the guest network. This
//! module does that host configuration; the device itself only reads and writes frames.
//!
//! How: raw `ioctl`s on an `AF_INET` datagram socket, the interface `brctl` and `ifconfig`
//! used before netlink: `SIOCBRADDBR`/`SIOCBRDELBR` create and delete a bridge,
//! `SIOCBRADDIF` plugs an interface into one, `SIOCGIFFLAGS`/`SIOCSIFFLAGS` bring an
//! interface up or down, `SIOCSIFADDR`/`SIOCSIFNETMASK` set a bridge's (primary) IPv4
//! address, and `SIOCETHTOOL`(`ETHTOOL_GDRVINFO`) tells a bridge from other interfaces.
//! Compared with running `ip(8)` this needs no process spawn, no dependency on iproute2,
//! and gives an errno instead of text to parse; compared with netlink it needs no
//! message-building code for the little we do. Everything here acts on the network
//! namespace of the calling thread.
//!
//! TAP lifetime: a TAP created by `TUNSETIFF` exists while an fd to it is open, unless it is
//! made persistent (`TUNSETPERSIST`). minivmm never sets persist on the TAPs it creates
//! ([`ManagedTap::create`]), so they vanish with the VM, even if it crashes: nothing is
//! left behind to clean up. A TAP the user names (`tap=NAME`, [`ManagedTap::open_existing`])
//! is the user's: minivmm attaches to it but never reconfigures or removes it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use devices::virtio::net::tap::{ifreq_with_name, Tap, TapError, MAX_IFNAME_LEN};

/// Bridge ioctls (`linux/sockios.h`); the `libc` crate does not define them for Linux.
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
/// `ETHTOOL_GDRVINFO` (`linux/ethtool.h`): get driver name and version.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` from `linux/ethtool.h`.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// What went wrong with host networking. Messages name the interface and the step.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The bridge to attach to is not there.
    #[error("bridge {0} does not exist")]
    NoSuchBridge(String),
    /// An interface of that name exists but is not a bridge.
    #[error("{0} is not a bridge")]
    NotABridge(String),
    /// A bridge (or other interface) of that name already exists.
    #[error("cannot create bridge {0}: an interface of that name already exists")]
    AlreadyExists(String),
    /// The user-named TAP is not there.
    #[error("tap {0} does not exist (create it with `ip tuntap add {0} mode tap`, or give a bridge instead)")]
    NoSuchTap(String),
    /// An interface of that name exists but is not a TAP.
    #[error("{0} exists but is not a tap interface")]
    NotATap(String),
    /// An interface name is empty, too long, or has characters the kernel rejects.
    #[error("invalid interface name {0:?}: it must be 1 to 15 bytes, without '/', ':', whitespace or NUL")]
    InvalidName(String),
    /// The generated TAP name does not fit in 15 bytes.
    #[error("tap name {0} for NIC index {1} is longer than 15 bytes")]
    TapNameTooLong(String, u32),
    /// The prefix length is not 0..=32.
    #[error("invalid IPv4 prefix length /{0}: it must be 0 to 32")]
    InvalidPrefix(u8),
    /// A MAC address could not be parsed or is not a unicast address.
    #[error("invalid MAC address {mac:?}: {reason}")]
    InvalidMac {
        /// The text given.
        mac: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The control socket for the ioctls could not be created.
    #[error("cannot open a network control socket: {0}")]
    Socket(#[source] io::Error),
    /// A configuration step failed.
    #[error("cannot {what} {name}: {source}")]
    Ioctl {
        /// The step ("create bridge", "bring up", ...).
        what: &'static str,
        /// The interface.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Adding an interface to a bridge failed.
    #[error("cannot add {iface} to bridge {bridge}: {source}")]
    AttachToBridge {
        /// The interface.
        iface: String,
        /// The bridge.
        bridge: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The TAP could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
}

type Result<T> = std::result::Result<T, NetworkError>;

/// Check `name` as the kernel's `dev_valid_name` would (the TAP module's rules).
fn validate_name(name: &str) -> Result<()> {
    devices::virtio::net::tap::validate_name(name)
        .map_err(|_| NetworkError::InvalidName(name.to_string()))
}

/// An `AF_INET` datagram socket: the handle the interface ioctls go through.
struct CtlSocket(OwnedFd);

impl CtlSocket {
    fn new() -> Result<CtlSocket> {
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetworkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(CtlSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// ioctl with a pointer argument.
    ///
    /// # Safety
    /// `arg` must be what `request` expects, valid for the whole call.
    unsafe fn ioctl<T>(&self, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
        // SAFETY: the caller guarantees `arg` matches `request`; the fd is ours.
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The `ifreq` for `name` (validated by the caller).
    fn ifreq(name: &str) -> libc::ifreq {
        ifreq_with_name(name)
    }

    /// SIOCBRADDBR / SIOCBRDELBR on bridge `name`. The kernel copies IFNAMSIZ (16) bytes
    /// from the pointer whatever the name's length, so it gets a whole `ifr_name` array.
    fn bridge_ioctl(&self, request: libc::c_ulong, name: &str) -> io::Result<()> {
        let mut ifr = Self::ifreq(name);
        // SAFETY: the pointer is to `ifr.ifr_name`, IFNAMSIZ bytes, NUL-terminated
        // (validate_name keeps names to 15 bytes), alive for the call.
        unsafe { self.ioctl(request, ifr.ifr_name.as_mut_ptr()) }
    }

    fn if_index(&self, name: &str) -> io::Result<libc::c_int> {
        let mut ifr = Self::ifreq(name);
        // SAFETY: SIOCGIFINDEX reads the name and writes the index in one ifreq.
        unsafe { self.ioctl(libc::SIOCGIFINDEX, &mut ifr) }?;
        // SAFETY: the kernel filled in the `ifru_ifindex` member.
        Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
    }

    fn flags(&self, name: &str) -> io::Result<libc::c_short> {
        let mut ifr = Self::ifreq(name);
        // SAFETY: SIOCGIFFLAGS reads the name and writes the flags in one ifreq.
        unsafe { self.ioctl(libc::SIOCGIFFLAGS, &mut ifr) }?;
        // SAFETY: the kernel filled in the `ifru_flags` member.
        Ok(unsafe { ifr.ifr_ifru.ifru_flags })
    }

    fn set_up(&self, name: &str, up: bool) -> io::Result<()> {
        let flags = self.flags(name)?;
        let iff_up = libc::IFF_UP as libc::c_short;
        let mut ifr = Self::ifreq(name);
        ifr.ifr_ifru.ifru_flags = if up { flags | iff_up } else { flags & !iff_up };
        // SAFETY: SIOCSIFFLAGS reads one ifreq.
        unsafe { self.ioctl(libc::SIOCSIFFLAGS, &mut ifr) }
    }

    /// The name of the driver behind `name` ("bridge", "tun", "veth", ...).
    fn driver(&self, name: &str) -> io::Result<String> {
        // SAFETY: EthtoolDrvinfo is plain old data; all zeros is valid.
        let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
        info.cmd = ETHTOOL_GDRVINFO;
        let mut ifr = Self::ifreq(name);
        ifr.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
        // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes one ethtool_drvinfo through
        // `ifru_data`, which points to `info`, alive for the call.
        unsafe { self.ioctl(libc::SIOCETHTOOL, &mut ifr) }?;
        let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
        Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
    }

    fn set_ipv4(&self, name: &str, request: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
        let mut ifr = Self::ifreq(name);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sockaddr_in` and `sockaddr` are both 16 bytes; the union member is a
        // `sockaddr`, which the kernel reads as a `sockaddr_in` for AF_INET.
        unsafe {
            std::ptr::write(
                (&mut ifr.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<libc::sockaddr_in>(),
                sin,
            );
        }
        // SAFETY: SIOCSIFADDR/SIOCSIFNETMASK read one ifreq.
        unsafe { self.ioctl(request, &mut ifr) }
    }
}

fn ioctl_err(what: &'static str, name: &str) -> impl FnOnce(io::Error) -> NetworkError {
    let name = name.to_string();
    move |source| NetworkError::Ioctl { what, name, source }
}

/// Whether an interface called `name` exists (in this thread's network namespace).
pub fn interface_exists(name: &str) -> bool {
    validate_name(name).is_ok()
        && CtlSocket::new()
            .map(|s| s.if_index(name).is_ok())
            .unwrap_or(false)
}

/// Whether `name` is an existing Linux bridge.
pub fn bridge_exists(name: &str) -> bool {
    validate_name(name).is_ok()
        && CtlSocket::new()
            .and_then(|s| s.driver(name).map_err(NetworkError::Socket))
            .map(|d| d == "bridge")
            .unwrap_or(false)
}

/// Create the bridge `name`, give it `cidr` (address, prefix length) if asked, and bring it
/// up. Fails if an interface of that name exists. On failure nothing is left behind.
pub fn create_bridge(name: &str, cidr: Option<(Ipv4Addr, u8)>) -> Result<()> {
    validate_name(name)?;
    if let Some((_, prefix)) = cidr {
        if prefix > 32 {
            return Err(NetworkError::InvalidPrefix(prefix));
        }
    }
    let sock = CtlSocket::new()?;
    if let Err(e) = sock.bridge_ioctl(SIOCBRADDBR, name) {
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(NetworkError::AlreadyExists(name.to_string()));
        }
        return Err(ioctl_err("create bridge", name)(e));
    }
    let configure = || -> Result<()> {
        if let Some((addr, prefix)) = cidr {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            sock.set_ipv4(name, libc::SIOCSIFADDR, addr)
                .map_err(ioctl_err("set the address of", name))?;
            sock.set_ipv4(name, libc::SIOCSIFNETMASK, Ipv4Addr::from(mask))
                .map_err(ioctl_err("set the netmask of", name))?;
        }
        sock.set_up(name, true).map_err(ioctl_err("bring up", name))
    };
    if let Err(e) = configure() {
        if let Err(del) = sock.bridge_ioctl(SIOCBRDELBR, name) {
            log::warn!("network: could not remove half-created bridge {name}: {del}");
        }
        return Err(e);
    }
    log::info!("network: created bridge {name}");
    Ok(())
}

/// Bring the bridge `name` down and delete it (its ports are released, not deleted).
pub fn delete_bridge(name: &str) -> Result<()> {
    validate_name(name)?;
    let sock = CtlSocket::new()?;
    if sock.if_index(name).is_err() {
        return Err(NetworkError::NoSuchBridge(name.to_string()));
    }
    if !bridge_exists(name) {
        return Err(NetworkError::NotABridge(name.to_string()));
    }
    // The kernel refuses to delete a bridge that is up (EBUSY).
    sock.set_up(name, false)
        .map_err(ioctl_err("bring down", name))?;
    sock.bridge_ioctl(SIOCBRDELBR, name)
        .map_err(ioctl_err("delete bridge", name))?;
    log::info!("network: deleted bridge {name}");
    Ok(())
}

/// The name minivmm gives the TAP of NIC `index` of process `pid`: `mvm<pid>n<index>`.
pub fn tap_name(pid: u32, index: u32) -> Result<String> {
    let name = format!("mvm{pid}n{index}");
    if name.len() > MAX_IFNAME_LEN {
        return Err(NetworkError::TapNameTooLong(name, index));
    }
    Ok(name)
}

/// A TAP for a guest NIC, opened and ready for `devices::virtio::net::Net`.
///
/// Either minivmm created it ([`create`](ManagedTap::create): a generated name, plugged
/// into a bridge and up), or the user named an existing one
/// ([`open_existing`](ManagedTap::open_existing): used as it is). A created TAP is not
/// persistent, so the kernel removes it when the last fd to it closes: when this value is
/// dropped, or, after [`into_tap`](ManagedTap::into_tap), when the device drops its
/// [`Tap`]. A user's TAP stays.
#[derive(Debug)]
pub struct ManagedTap {
    tap: Tap,
    bridge: Option<String>,
    created: bool,
}

impl ManagedTap {
    /// Create the TAP `mvm<pid>n<index>`, plug it into `bridge` and bring it up.
    pub fn create(bridge: &str, index: u32) -> Result<ManagedTap> {
        validate_name(bridge)?;
        let sock = CtlSocket::new()?;
        if sock.if_index(bridge).is_err() {
            return Err(NetworkError::NoSuchBridge(bridge.to_string()));
        }
        if !bridge_exists(bridge) {
            return Err(NetworkError::NotABridge(bridge.to_string()));
        }
        let name = tap_name(std::process::id(), index)?;
        // Exclusive create: never hijack an interface that happens to have this name. If a
        // step below fails, dropping `tap` removes the interface again.
        let tap = Tap::create(&name)?;
        let port = sock
            .if_index(&name)
            .map_err(ioctl_err("look up the index of", &name))?;
        let mut ifr = CtlSocket::ifreq(bridge);
        ifr.ifr_ifru.ifru_ifindex = port;
        // SAFETY: SIOCBRADDIF reads one ifreq (bridge name, port index).
        unsafe { sock.ioctl(SIOCBRADDIF, &mut ifr) }.map_err(|source| {
            NetworkError::AttachToBridge {
                iface: name.clone(),
                bridge: bridge.to_string(),
                source,
            }
        })?;
        sock.set_up(&name, true)
            .map_err(ioctl_err("bring up", &name))?;
        log::info!("network: created tap {name} on bridge {bridge}");
        Ok(ManagedTap {
            tap,
            bridge: Some(bridge.to_string()),
            created: true,
        })
    }

    /// Open the user's existing TAP `name`, without changing its configuration (it should
    /// be up and connected already; that is the user's business).
    pub fn open_existing(name: &str) -> Result<ManagedTap> {
        validate_name(name)?;
        let sock = CtlSocket::new()?;
        if sock.if_index(name).is_err() {
            return Err(NetworkError::NoSuchTap(name.to_string()));
        }
        if sock.driver(name).map(|d| d != "tun").unwrap_or(true) {
            return Err(NetworkError::NotATap(name.to_string()));
        }
        let mut tap = Tap::open(name)?;
        tap.restore_on_drop()?;
        match sock.flags(name) {
            Ok(f) if f & libc::IFF_UP as libc::c_short == 0 => {
                log::warn!("network: tap {name} is down; the guest will not see traffic")
            }
            _ => {}
        }
        Ok(ManagedTap {
            tap,
            bridge: None,
            created: false,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        self.tap.if_name()
    }

    /// The bridge it was plugged into, for one minivmm created.
    pub fn bridge(&self) -> Option<&str> {
        self.bridge.as_deref()
    }

    /// Whether minivmm created it (and it goes away with its last fd).
    pub fn is_created(&self) -> bool {
        self.created
    }

    /// The open TAP.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Hand the TAP to the device. A created TAP now lives as long as that [`Tap`].
    pub fn into_tap(self) -> Tap {
        self.tap
    }
}

/// FNV-1a, 64 bits: a tiny hash whose output never changes between Rust releases (unlike
/// `std`'s `DefaultHasher`), so derived MAC addresses are stable across builds.
fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stable MAC address for NIC `index` of the VM identified by `seed` (its kernel and disk
/// paths, or an explicit id): the same inputs always give the same address, so the guest
/// keeps its DHCP lease across boots. The address is locally administered (bit 1 of the
/// first byte set) and unicast (bit 0 clear).
pub fn derive_mac(seed: &str, index: u32) -> [u8; 6] {
    let h = fnv1a64(
        seed.bytes()
            .chain(std::iter::once(0xff))
            .chain(index.to_le_bytes()),
    )
    .to_le_bytes();
    [(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]]
}

/// Parse `aa:bb:cc:dd:ee:ff` (hex digits, either case). Rejects malformed text and
/// addresses a NIC cannot have: multicast/broadcast and all zeros.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let invalid = |reason| NetworkError::InvalidMac {
        mac: s.to_string(),
        reason,
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts
            .next()
            .ok_or_else(|| invalid("expected six ':'-separated bytes"))?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid("each byte must be two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid("bad hex digit"))?;
    }
    if parts.next().is_some() {
        return Err(invalid("expected six ':'-separated bytes"));
    }
    if mac[0] & 0x01 != 0 {
        return Err(invalid(
            "it is a multicast address (lowest bit of the first byte set)",
        ));
    }
    if mac == [0; 6] {
        return Err(invalid("the all-zero address is not valid"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_local_unicast_and_distinct() {
        let a0 = derive_mac("/boot/vmlinux:/img/disk.raw", 0);
        assert_eq!(a0, derive_mac("/boot/vmlinux:/img/disk.raw", 0));
        let a1 = derive_mac("/boot/vmlinux:/img/disk.raw", 1);
        let b0 = derive_mac("/boot/vmlinux:/img/other.raw", 0);
        assert_ne!(a0, a1);
        assert_ne!(a0, b0);
        for seed in ["", "x", "a much longer seed with spaces", "vm-42"] {
            for i in 0..64 {
                let m = derive_mac(seed, i);
                assert_eq!(m[0] & 0x02, 0x02, "locally administered: {m:02x?}");
                assert_eq!(m[0] & 0x01, 0, "unicast: {m:02x?}");
                // And it is accepted by our own parser.
                let text = m
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                assert_eq!(parse_mac(&text).unwrap(), m);
            }
        }
        // The hash is FNV-1a: check it against the published test vector so that a change
        // to it (which would change every VM's MAC) cannot go unnoticed.
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn parse_mac_accepts_unicast_and_rejects_the_rest() {
        assert_eq!(
            parse_mac("02:00:5e:AB:cd:01").unwrap(),
            [0x02, 0x00, 0x5e, 0xab, 0xcd, 0x01]
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0",
            "02:00:00:00:00:001",
            "02-00-00-00-00-01",
            "02:00:00:00:00:zz",
            "02:00:00:00:00:+1",
            "02:00:00:00::01",
        ] {
            let e = parse_mac(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let e = parse_mac("01:00:5e:00:00:01").unwrap_err().to_string();
        assert!(e.contains("multicast"), "{e}");
        assert!(parse_mac("ff:ff:ff:ff:ff:ff").is_err());
        assert!(parse_mac("00:00:00:00:00:00").is_err());
    }

    #[test]
    fn tap_names_fit() {
        assert_eq!(tap_name(1234, 0).unwrap(), "mvm1234n0");
        // The largest pid Linux allows (2^22) still leaves room for 4-digit indexes.
        let n = tap_name(4_194_304, 9999).unwrap();
        assert!(n.len() <= MAX_IFNAME_LEN, "{n}");
        assert!(matches!(
            tap_name(4_194_304, 10_000),
            Err(NetworkError::TapNameTooLong(..))
        ));
    }

    #[test]
    fn names_are_validated() {
        in_netns(|| {
            for bad in ["", "a/b", "a b", "sixteen-chars-xx", "..", "a:b"] {
                assert!(matches!(
                    create_bridge(bad, None),
                    Err(NetworkError::InvalidName(_))
                ));
                assert!(!bridge_exists(bad));
                assert!(!interface_exists(bad));
            }
            assert!(matches!(
                create_bridge("mvmtestbrx", Some((Ipv4Addr::new(10, 0, 0, 1), 33))),
                Err(NetworkError::InvalidPrefix(33))
            ));
            assert!(!interface_exists("mvmtestbrx"));
        });
    }

    /// Run `f` on a thread of its own in a new, empty network namespace: nothing it creates
    /// is visible on the host, no traffic can leave, and the namespace (with everything in
    /// it) is destroyed when the thread and its fds are gone.
    fn in_netns(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            // SAFETY: unshare only changes the calling thread's network namespace.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            f();
        })
        .join()
        .unwrap();
    }

    fn is_up(name: &str) -> bool {
        let f = CtlSocket::new().unwrap().flags(name).unwrap();
        f & libc::IFF_UP as libc::c_short != 0
    }

    fn ipv4_of(name: &str, request: libc::c_ulong) -> Ipv4Addr {
        let sock = CtlSocket::new().unwrap();
        let mut ifr = CtlSocket::ifreq(name);
        // SAFETY: SIOCGIFADDR/SIOCGIFNETMASK write one ifreq.
        unsafe { sock.ioctl(request, &mut ifr) }.unwrap();
        // SAFETY: for AF_INET the kernel wrote a sockaddr_in into the sockaddr member.
        let sin = unsafe {
            std::ptr::read(
                (&ifr.ifr_ifru.ifru_addr as *const libc::sockaddr).cast::<libc::sockaddr_in>(),
            )
        };
        Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())
    }

    /// Send an ARP request for `target` out of `tap` (as a guest would) and wait up to 5 s
    /// for the reply; other frames (IPv6 neighbour discovery...) are skipped.
    fn arp_reply_through(tap: &Tap, target: Ipv4Addr) -> bool {
        let mac = [0x02, 0, 0, 0x12, 0x34, 0x56];
        let mut f = vec![0u8; 12]; // virtio-net header
        f.extend([0xff; 6]);
        f.extend(mac);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend(mac);
        f.extend([10, 77, 0, 2]);
        f.extend([0; 6]);
        f.extend(target.octets());
        tap.write(&f).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut buf = vec![0u8; 70000];
        while std::time::Instant::now() < deadline {
            match tap.read(&mut buf) {
                Ok(n) => {
                    let eth = &buf[12..n];
                    if eth.len() >= 42
                        && eth[12..14] == [0x08, 0x06]
                        && eth[20..22] == [0, 2]
                        && eth[28..32] == target.octets()
                    {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("tap read: {e}"),
            }
        }
        false
    }

    #[test]
    fn bridge_and_managed_tap_lifecycle() {
        in_netns(|| {
            // Answer ARP only for addresses of the interface the request came in on (this
            // namespace's sysctl, not the host's): so an ARP reply through the TAP proves the
            // TAP is a port of the bridge that holds the address.
            std::fs::write("/proc/sys/net/ipv4/conf/all/arp_ignore", "1").unwrap();
            let br = "mvmtestbr0";
            assert!(!bridge_exists(br));
            let addr = Ipv4Addr::new(10, 77, 0, 1);
            create_bridge(br, Some((addr, 24))).unwrap();
            assert!(bridge_exists(br));
            assert!(is_up(br));
            assert_eq!(ipv4_of(br, libc::SIOCGIFADDR), addr);
            assert_eq!(
                ipv4_of(br, libc::SIOCGIFNETMASK),
                Ipv4Addr::new(255, 255, 255, 0)
            );
            assert!(matches!(
                create_bridge(br, None),
                Err(NetworkError::AlreadyExists(_))
            ));

            let mt = ManagedTap::create(br, 3).unwrap();
            let name = mt.name().to_string();
            assert_eq!(name, format!("mvm{}n3", std::process::id()));
            assert!(mt.is_created());
            assert_eq!(mt.bridge(), Some(br));
            assert!(interface_exists(&name));
            assert!(!bridge_exists(&name));
            assert!(is_up(&name));
            // Plugged into the bridge: the bridge's address answers ARP through the TAP.
            mt.tap().set_vnet_hdr_size(12).unwrap();
            assert!(
                arp_reply_through(mt.tap(), addr),
                "no ARP reply from {addr} through {name}"
            );

            // The same name cannot be created twice while the first is alive.
            assert!(ManagedTap::create(br, 3).is_err());

            // Handing the TAP on keeps it alive; dropping the last fd removes it.
            let tap = mt.into_tap();
            assert!(interface_exists(&name));
            drop(tap);
            assert!(!interface_exists(&name));

            delete_bridge(br).unwrap();
            assert!(!bridge_exists(br));
            assert!(!interface_exists(br));
        });
    }

    #[test]
    fn errors_name_what_is_missing() {
        in_netns(|| {
            let e = ManagedTap::create("br0", 0).unwrap_err().to_string();
            assert_eq!(e, "bridge br0 does not exist");
            let e = ManagedTap::create("lo", 0).unwrap_err().to_string();
            assert_eq!(e, "lo is not a bridge");
            let e = ManagedTap::open_existing("tap7").unwrap_err().to_string();
            assert!(e.starts_with("tap tap7 does not exist"), "{e}");
            let e = ManagedTap::open_existing("lo").unwrap_err().to_string();
            assert_eq!(e, "lo exists but is not a tap interface");
            let e = delete_bridge("br0").unwrap_err().to_string();
            assert_eq!(e, "bridge br0 does not exist");
            let e = delete_bridge("lo").unwrap_err().to_string();
            assert_eq!(e, "lo is not a bridge");
        });
    }

    #[test]
    fn user_tap_is_used_as_is_and_kept() {
        in_netns(|| {
            // What `ip tuntap add usertap0 mode tap` does: a persistent TAP, down.
            let t = Tap::open("usertap0").unwrap();
            // SAFETY: TUNSETPERSIST takes an integer argument by value.
            let r = unsafe { libc::ioctl(t.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
            assert_eq!(r, 0);
            drop(t);
            assert!(interface_exists("usertap0"));

            let mt = ManagedTap::open_existing("usertap0").unwrap();
            assert!(!mt.is_created());
            assert_eq!(mt.bridge(), None);
            assert_eq!(mt.name(), "usertap0");
            // Not reconfigured: still down.
            assert!(!is_up("usertap0"));
            drop(mt);
            // Not removed.
            assert!(interface_exists("usertap0"));
            // Clean up like `ip tuntap del` (the namespace would delete it anyway).
            let t = Tap::open("usertap0").unwrap();
            // SAFETY: TUNSETPERSIST takes an integer argument by value.
            let r = unsafe { libc::ioctl(t.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong) };
            assert_eq!(r, 0);
            drop(t);
            assert!(!interface_exists("usertap0"));
        });
    }
}
