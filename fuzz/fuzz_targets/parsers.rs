//! Fuzz the parsers behind minivmm's flags (`cli/src/flags.rs`: `--disk`, `--net`,
//! `--memory`, `--serial`, `--rng`, `--shutdown-timeout`, `--cidr`) and the VMM's own
//! (`bw=`/`iops=` rates, MAC addresses). They take user text; they must never panic, and
//! what they accept must mean what it says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use minivmm_cli::flags;

fuzz_target!(|s: &str| {
    if let Ok(r) = vmm::config::parse_rate(s) {
        assert!(r > 0, "{s:?} parsed to a zero rate");
    }
    if let Ok(mac) = vmm::network::parse_mac(s) {
        assert_eq!(mac[0] & 1, 0, "{s:?}: a multicast MAC was accepted");
        assert_ne!(mac, [0; 6], "{s:?}: the zero MAC was accepted");
        let text = devices::virtio::net::format_mac(&mac);
        assert_eq!(vmm::network::parse_mac(&text).unwrap(), mac);
    }
    if let Ok(d) = flags::parse_disk(s) {
        assert!(!d.path.as_os_str().is_empty(), "{s:?}: an empty disk path");
        assert_ne!(d.limit.bytes_per_sec, Some(0));
        assert_ne!(d.limit.ops_per_sec, Some(0));
    }
    if let Ok(n) = flags::parse_net(s) {
        if let Some(mac) = n.mac {
            assert_eq!(mac[0] & 1, 0, "{s:?}: a multicast MAC was accepted");
        }
        assert_ne!(n.limit.bytes_per_sec, Some(0));
    }
    if let Ok((_, len)) = flags::parse_cidr(s) {
        assert!(len <= 32);
    }
    let _ = flags::parse_size_arg(s);
    let _ = flags::parse_duration(s);
    let _ = flags::parse_serial(s);
    let _ = flags::parse_rng(s);
});
