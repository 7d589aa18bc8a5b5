//! Fuzz the parsers behind minivmm's flags: sizes (`--memory`), rates (`bw=`, `iops=`)
//! and MAC addresses (`mac=`). They take user text; they must never panic, and what they
//! accept must mean what it says.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let _ = vmm::config::parse_size(s);
    if let Ok(r) = vmm::config::parse_rate(s) {
        assert!(r > 0, "{s:?} parsed to a zero rate");
    }
    if let Ok(mac) = vmm::network::parse_mac(s) {
        assert_eq!(mac[0] & 1, 0, "{s:?}: a multicast MAC was accepted");
        assert_ne!(mac, [0; 6], "{s:?}: the zero MAC was accepted");
        assert_eq!(vmm::network::parse_mac(&devices::virtio::net::format_mac(&mac)).unwrap(), mac);
    }
});
