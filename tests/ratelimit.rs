//! End to end: disk and network rate limits (`--disk ...,bw=,iops=`, `--net ...,bw=`),
//! measured from a running guest and from the host.
//!
//! Every limit lets a device that was idle burst for one second's worth; the measurements
//! start after a warm-up that spends that burst. A rate may never be more than 10 % above
//! its limit. Below it, a disk's rate is held to the limit too, within 10 %, once the
//! guest's own pace is allowed for: the same reads from an unlimited disk, timed in the
//! same boot just before, say how long the guest itself takes to issue them, and a
//! limited run may take at most that much longer than the limit alone needs. On an idle
//! PVM host the guest reads several MB/s and about 37 direct 4 KiB requests per second,
//! so the allowance is a tenth of the limit's time; on a host busy with other VMs it grows
//! with the guest's slowness (a run at 113 KB/s against 128 KiB/s failed the plain ±10 %
//! while another VM booted on the same two cores).

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use minivmm_tests::{Guest, NetNs, TempDir};

const HOST_IP: &str = "10.97.0.1";
const BRIDGE: &str = "mvrlbr0";
const DISK_BW: u64 = 128 << 10;
const DISK_IOPS: u64 = 5;
const NET_BW: u64 = 16 << 10;
/// The guest sends the text of `seq 1 SEQ_N` (about 170 KB).
const SEQ_N: u32 = 30_000;

fn seq_len(n: u32) -> usize {
    (1..=n).map(|i| i.to_string().len() + 1).sum()
}

/// `measured` within 10 % of `limit`.
fn within_10_percent(measured: f64, limit: u64) -> bool {
    let l = limit as f64;
    (0.9 * l..=1.1 * l).contains(&measured)
}

/// A limited transfer of `amount` (bytes or requests) that took `secs`, against `limit`
/// per second, when the same transfer from an unlimited disk took `free_secs`: never more
/// than 10 % above the limit, and no slower than the limit's own time plus the guest's
/// own pace, with 10 % to spare.
fn held_to_limit(amount: f64, secs: f64, free_secs: f64, limit: u64) -> bool {
    let l = limit as f64;
    let rate = amount / secs;
    let slowest = amount / (amount / l + free_secs.max(0.0));
    rate <= 1.1 * l && rate >= 0.9 * slowest
}

/// Seconds between two `/proc/uptime` readings the guest printed as `key=<secs>`.
fn uptime(f: &minivmm_tests::Finished, key: &str) -> f64 {
    f.value(key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {f}"))
}

/// One boot: vdb limited in bytes/s, vdc in requests/s, eth0 in bytes/s; vdd unlimited.
#[test]
fn disk_and_network_limits_hold_within_ten_percent() {
    let t = TempDir::new("minivmm-ratelimit");
    let bw_img = t.join("bw.img");
    let iops_img = t.join("iops.img");
    std::fs::write(&bw_img, vec![0x5au8; 4 << 20]).unwrap();
    std::fs::write(&iops_img, vec![0xa5u8; 1 << 20]).unwrap();
    // The same reads without a limit: the guest's own pace, in the same boot.
    let free_img = t.join("free.img");
    std::fs::write(&free_img, vec![0x3cu8; 1 << 20]).unwrap();
    let ns = NetNs::new("ratelimit");
    ns.create_bridge(BRIDGE, Some(&format!("{HOST_IP}/24")));

    // Each timed run starts with the device's burst spent by a warm-up of three seconds'
    // worth (the bucket refills while a slow guest drains it: one second's worth is not
    // enough). `read u x < /proc/uptime` takes the uptime with a shell builtin.
    let cmd = format!(
        "dmesg -n 1; ip link set eth0 up && ip addr add 10.97.0.2/24 dev eth0; \
         dd if=/dev/vdd of=/dev/null bs=64k count=2 iflag=direct 2>/dev/null; \
         read u x < /proc/uptime; echo free-bw-start=$u; \
         dd if=/dev/vdd of=/dev/null bs=64k count=8 skip=2 iflag=direct 2>/dev/null; \
         read u x < /proc/uptime; echo free-bw-end=$u; \
         dd if=/dev/vdd of=/dev/null bs=4k count={ops} skip=160 iflag=direct 2>/dev/null; \
         read u x < /proc/uptime; echo free-iops-end=$u; \
         dd if=/dev/vdb of=/dev/null bs=64k count=6 iflag=direct 2>/dev/null; \
         read u x < /proc/uptime; echo bw-start=$u; \
         dd if=/dev/vdb of=/dev/null bs=64k count=8 skip=6 iflag=direct 2>/dev/null; \
         read u x < /proc/uptime; echo bw-end=$u; \
         dd if=/dev/vdc of=/dev/null bs=4k count={warm} iflag=direct 2>/dev/null; \
         read u x < /proc/uptime; echo iops-start=$u; \
         dd if=/dev/vdc of=/dev/null bs=4k count={ops} skip={warm} iflag=direct \
           2>/dev/null; \
         read u x < /proc/uptime; echo iops-end=$u; \
         i=0; until ping -c 1 -W 2 {HOST_IP} >/dev/null 2>&1; do i=$((i+1)); \
           [ $i -ge 60 ] && break; read -t 1 x <> /etc/wait.fifo; done; \
         mvtool send {HOST_IP} 7100 seq {SEQ_N}; echo send-status=$?",
        ops = 3 * DISK_IOPS,
        warm = 3 * DISK_IOPS,
    );
    let (bw_a, iops_a) = (
        format!("{},bw={}", bw_img.display(), DISK_BW),
        format!("{},iops={DISK_IOPS}", iops_img.display()),
    );
    let net = format!("bridge={BRIDGE},bw={NET_BW}");
    let guest = Guest::new()
        .args(&["--disk", &bw_a, "--disk", &iops_a, "--net", &net])
        .args(&["--disk", &free_img.display().to_string()])
        .run(&cmd)
        .work(Duration::from_secs(120));
    let wall = guest.budget().wall;
    // The host receives and times the upload: bytes per second after the first
    // second's burst has arrived.
    let host = ns.spawn_in(move || -> Result<(usize, f64), String> {
        let listener = TcpListener::bind((HOST_IP, 7100)).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > wall {
                        return Err("the guest never connected".into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(wall)).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let (mut total, mut mark) = (0usize, None);
        loop {
            let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            total += n;
            if mark.is_none() && total as u64 >= 3 * NET_BW {
                mark = Some((total, Instant::now()));
            }
        }
        let (at, t) = mark.ok_or("too little data")?;
        Ok((total, (total - at) as f64 / t.elapsed().as_secs_f64()))
    });
    let f = guest.start_in(Some(&ns)).finish();
    assert_eq!(f.code(), 0, "{f}");
    assert_eq!(f.value("send-status"), "0", "{f}");

    let free_bw_secs = uptime(&f, "free-bw-end") - uptime(&f, "free-bw-start");
    let free_iops_secs = uptime(&f, "free-iops-end") - uptime(&f, "free-bw-end");
    let bytes = (8u64 * 65536) as f64;
    let bw_secs = uptime(&f, "bw-end") - uptime(&f, "bw-start");
    let bw = bytes / bw_secs;
    assert!(
        held_to_limit(bytes, bw_secs, free_bw_secs, DISK_BW),
        "disk: {bw:.0} B/s against a limit of {DISK_BW} (unlimited, the same reads took \
         {free_bw_secs:.2} s): {f}"
    );
    let ops = (3 * DISK_IOPS) as f64;
    let iops_secs = uptime(&f, "iops-end") - uptime(&f, "iops-start");
    let iops = ops / iops_secs;
    assert!(
        held_to_limit(ops, iops_secs, free_iops_secs, DISK_IOPS),
        "disk: {iops:.1} requests/s against a limit of {DISK_IOPS} (unlimited, the same \
         requests took {free_iops_secs:.2} s): {f}"
    );
    let (total, net_bw) = host.join().unwrap().unwrap_or_else(|e| panic!("{e}: {f}"));
    assert_eq!(total, seq_len(SEQ_N), "{f}");
    // TCP payload: the limit counts whole frames (headers too, about 5 % of a full one).
    assert!(
        within_10_percent(net_bw, NET_BW),
        "network: {net_bw:.0} B/s of TCP payload against a limit of {NET_BW}: {f}"
    );
    eprintln!(
        "measured: disk {bw:.0} B/s, {iops:.1} req/s (unlimited: the same reads in \
         {free_bw_secs:.2} s and {free_iops_secs:.2} s); network {net_bw:.0} B/s"
    );
}
