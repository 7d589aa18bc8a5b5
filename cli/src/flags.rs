//! The text of minivmm's flags, parsed into the VMM's configuration types: one function per
//! flag that takes a value, each returning the one-line message clap shows for bad input.
//! In a library of its own so that `fuzz/fuzz_targets/parsers.rs` can feed them anything.

use std::path::PathBuf;

use vmm::config::{
    parse_rate, parse_size, BlockConfig, HostInterface, NetConfig, RateLimit, SerialMode,
};

/// `--cidr ADDR/LEN` (an IPv4 address and a prefix length).
pub fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = || format!("'{s}': expected an IPv4 address and prefix length, e.g. 10.0.0.1/24");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((addr, len))
}

/// `--rng`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RngArg {
    /// No entropy device.
    None,
    /// Read entropy from this file.
    Source(PathBuf),
}

/// `--rng src=PATH|none`.
pub fn parse_rng(s: &str) -> Result<RngArg, String> {
    match s {
        "none" => Ok(RngArg::None),
        _ => match s.strip_prefix("src=") {
            Some(p) if !p.is_empty() => Ok(RngArg::Source(PathBuf::from(p))),
            _ => Err(format!("'{s}': expected src=PATH or none")),
        },
    }
}

/// `--net tap=NAME|bridge=BR[,mac=MAC][,bw=RATE][,pps=N]`.
pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut backend = None;
    let mut mac = None;
    let mut limit = RateLimit::default();
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => {
                backend = Some(HostInterface::Tap(name.to_string()))
            }
            Some(("bridge", br)) if !br.is_empty() => {
                backend = Some(HostInterface::Bridge(br.to_string()))
            }
            Some(("mac", m)) => mac = Some(vmm::network::parse_mac(m).map_err(|e| e.to_string())?),
            Some(("bw", rate)) => limit.bytes_per_sec = Some(parse_rate(rate)?),
            Some(("pps", rate)) => limit.ops_per_sec = Some(parse_rate(rate)?),
            _ => {
                return Err(format!(
                    "'{opt}': expected tap=NAME or bridge=BR, and mac=MAC, bw=BYTES/s, pps=N"
                ))
            }
        }
    }
    let host = backend.ok_or_else(|| format!("'{s}': needs tap=NAME or bridge=BR"))?;
    Ok(NetConfig { host, mac, limit })
}

/// `--shutdown-timeout`: `30s`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("'{s}': expected a duration such as 30s, 500ms or 10");
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1000)
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(scale)
        .map(std::time::Duration::from_millis)
        .ok_or_else(bad)
}

/// `--memory`: a size such as `256M` or `2G`.
pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// `--serial stdio|file:PATH|none`.
pub fn parse_serial(s: &str) -> Result<SerialMode, String> {
    match s {
        "stdio" => Ok(SerialMode::Stdio),
        "none" => Ok(SerialMode::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialMode::File(PathBuf::from(p))),
            _ => Err(format!("'{s}': expected stdio, file:PATH or none")),
        },
    }
}

/// `--disk PATH[,readonly=on|off][,serial=ID][,bw=RATE][,iops=N]`.
pub fn parse_disk(s: &str) -> Result<BlockConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty disk path")?;
    let mut disk = BlockConfig {
        path: PathBuf::from(path),
        read_only: false,
        serial: None,
        limit: Default::default(),
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("readonly", "on")) => disk.read_only = true,
            Some(("readonly", "off")) => disk.read_only = false,
            Some(("serial", id)) => disk.serial = Some(id.to_string()),
            Some(("bw", rate)) => disk.limit.bytes_per_sec = Some(parse_rate(rate)?),
            Some(("iops", rate)) => disk.limit.ops_per_sec = Some(parse_rate(rate)?),
            _ => {
                return Err(format!(
                    "unknown disk option '{opt}' (readonly=on|off, serial=ID, bw=BYTES/s, \
                     iops=N)"
                ))
            }
        }
    }
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("a.img,readonly=on,serial=xyz").unwrap();
        assert_eq!(d.path, PathBuf::from("a.img"));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("xyz"));
        assert!(!parse_disk("b.img").unwrap().read_only);
        assert!(parse_disk("").is_err());
        assert!(parse_disk("a.img,bogus=1").is_err());
        assert!(parse_disk("a.img,readonly=maybe").is_err());
    }

    #[test]
    fn serial_modes() {
        assert_eq!(parse_serial("stdio"), Ok(SerialMode::Stdio));
        assert_eq!(parse_serial("none"), Ok(SerialMode::None));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialMode::File("/tmp/x".into()))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1234").is_err());
    }

    #[test]
    fn net_specs() {
        let n = parse_net("bridge=br0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.host, HostInterface::Bridge("br0".into()));
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            parse_net("tap=tap0").unwrap().host,
            HostInterface::Tap("tap0".into())
        );
        assert!(parse_net("mac=02:00:00:00:00:01").is_err());
        assert!(parse_net("bridge=br0,mac=01:00:00:00:00:01").is_err()); // multicast
        assert!(parse_net("bridge=br0,mac=zz").is_err());
        assert!(parse_net("bridge=").is_err());
        assert!(parse_net("vde=x").is_err());
    }

    #[test]
    fn rng_specs() {
        assert_eq!(parse_rng("none"), Ok(RngArg::None));
        assert_eq!(
            parse_rng("src=/dev/random"),
            Ok(RngArg::Source("/dev/random".into()))
        );
        assert!(parse_rng("src=").is_err());
        assert!(parse_rng("/dev/random").is_err());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.1/24"),
            Ok(("10.0.0.1".parse().unwrap(), 24))
        );
        assert!(parse_cidr("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
    }
}
