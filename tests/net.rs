//! End to end: virtio-net. Guests of the project's test guest (resources/guest) talk to each
//! other and to the host through a Linux bridge, and minivmm's host-side network handling
//! (taps it creates, `minivmm network create/delete`, errors) leaves nothing behind.
//!
//! Isolation: every test creates its own network namespace ([`NetNs`]) and runs minivmm,
//! the bridge, the taps and the host ends of the connections inside it, with addresses
//! from 10.99.0.0/24. No traffic leaves the namespace, and the namespace is removed when
//! the test ends, failed or not.
//!
//! The guest is configured by the shell command in `minivmm_run=` (busybox `ip`, `ping`)
//! and moves data with the test guest's `mvtool send`/`mvtool recv`, which generate and hash
//! the data inside the process that sends or receives it: on PVM hosts every byte the
//! guest kernel copies is emulated, and `seq | nc` or `nc | sha256sum` would copy it twice
//! more through a pipe. `ping -c 1 -w N` waits for a peer in one process (a retry loop
//! would start one every second). Transfers are a few MiB. Needs root (namespaces,
//! bridges, taps).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use minivmm_tests::{guest_file, pattern, sha256_hex, start_together, Finished, Guest, NetNs};

/// The host's address on a test bridge (given with `minivmm network create --cidr`).
const HOST_IP: &str = "10.99.0.1";
const BRIDGE: &str = "mvmbr0";

/// A namespace with the test bridge, the host at [`HOST_IP`].
fn netns_with_bridge() -> NetNs {
    let ns = NetNs::new("net");
    ns.create_bridge(BRIDGE, Some("10.99.0.1/24"));
    ns
}

/// The name of the tap minivmm `pid` created for its first NIC (`vmm::network::tap_name`).
fn tap_of(pid: u32) -> String {
    format!("mvm{pid}n0")
}

/// The tap minivmm logged for eth0 ("eth0: tap mvm123n0, MAC ...").
fn logged_tap(f: &Finished) -> String {
    let rest = f
        .stderr
        .split("eth0: tap ")
        .nth(1)
        .unwrap_or_else(|| panic!("no 'eth0: tap' line in the log: {f}"));
    rest.split(|c: char| c == ',' || c.is_whitespace())
        .next()
        .unwrap()
        .to_string()
}

// --- data ---------------------------------------------------------------------------------

/// What busybox `seq 1 n` prints (and `mvtool send ... seq n` sends): distinct lines, so a
/// lost, repeated or reordered segment changes the bytes.
fn seq_bytes(n: u32) -> Vec<u8> {
    let mut s = String::new();
    for i in 1..=n {
        writeln!(s, "{i}").unwrap();
    }
    s.into_bytes()
}

/// Shell functions for the guest commands: `up ADDR` configures eth0; `waitping ADDR`
/// pings ADDR once a second (2 s reply timeout) until it answers, up to `tries` times,
/// printing `PING-OK ADDR` or `PING-FAIL ADDR`. The second between tries is slept in a
/// shell builtin (`read -t` on a FIFO nobody writes): `sleep` would be one more process.
fn guest_prelude(tries: u32) -> String {
    format!(
        "up() {{ ip link set eth0 up && ip addr add $1/24 dev eth0; }}; \
         waitping() {{ i=0; while [ $i -lt {tries} ]; do \
         if ping -c 1 -W 2 $1 >/dev/null 2>&1; then echo PING-OK $1; return 0; fi; \
         i=$((i+1)); read -t 1 x <> /etc/wait.fifo; done; echo PING-FAIL $1; return 1; }}; "
    )
}

/// Assert a VM ended by itself with status 0 and its tap is gone from the namespace.
fn assert_ended_cleanly(ns: &NetNs, f: &Finished) {
    assert_eq!(f.code(), 0, "{f}");
    let tap = logged_tap(f);
    let links = ns.links();
    assert!(
        !links.contains(&tap),
        "tap {tap} remains after the VM ended: {links:?}"
    );
}

fn assert_console_has(f: &Finished, needle: &str) {
    assert!(f.stdout.contains(needle), "console lacks {needle:?}: {f}");
}

// --- tests that boot ---------------------------------------------------------------------------

/// Two VMs on one bridge: each pings the other (VM1 waiting for VM2 to boot), VM1 sends
/// `seq 1 330000` (2.1 MiB) to VM2 over TCP and both print the SHA-256 of what they sent
/// and received, VM2 answers over TCP so VM1 ends only after VM2 had its turn; both exit 0,
/// and their taps are gone once they end.
#[test]
fn two_vms_ping_each_other_and_move_data_over_tcp() {
    let ns = netns_with_bridge();
    const N: u32 = 330_000;
    let expected = sha256_hex(&seq_bytes(N));
    let pre = guest_prelude(120);
    let vm1_cmd = format!(
        "{pre} up 10.99.0.11; waitping 10.99.0.12 || exit 1; \
         mvtool send 10.99.0.12 5000 seq {N} || exit 1; echo VM1-SENT; \
         echo FROM-VM2: $(mvtool recv 5001 text)"
    );
    // VM2 pings VM1 after the transfer (VM1 waits for VM2's answer, so it is still up):
    // no background job, see tests/README.md, "A PVM host bug".
    let vm2_cmd = format!(
        "{pre} up 10.99.0.12; mvtool recv 5000; waitping 10.99.0.11; \
         mvtool send 10.99.0.11 5001 text vm2-says-bye"
    );
    let br = format!("bridge={BRIDGE}");
    let guest = |name: &str, cmd: &str| {
        Guest::new()
            .args(&["--name", name, "--net", &br])
            .run(cmd)
            .work(Duration::from_secs(120))
    };
    let (g1, g2) = (guest("vm1", &vm1_cmd), guest("vm2", &vm2_cmd));
    let mut vms = start_together(Some(&ns), &[&g1, &g2]);
    let vm2 = vms.pop().unwrap();
    let vm1 = vms.pop().unwrap();
    let f2 = vm2.finish();
    let f1 = vm1.finish();
    let both = format!("=== VM1 ===\n{f1}\n=== VM2 ===\n{f2}");
    let checks = [
        (&f1, "PING-OK 10.99.0.12".to_string()),
        (&f2, "PING-OK 10.99.0.11".to_string()),
        (&f1, format!("sent {} {expected}", seq_bytes(N).len())),
        (&f2, format!("received {} {expected}", seq_bytes(N).len())),
        (&f1, "FROM-VM2: vm2-says-bye".to_string()),
    ];
    for (f, needle) in checks {
        assert!(
            f.stdout.contains(&needle),
            "console lacks {needle:?}\n{both}"
        );
    }
    assert_ended_cleanly(&ns, &f1);
    assert_ended_cleanly(&ns, &f2);
    assert_ne!(logged_tap(&f1), logged_tap(&f2));
    assert_eq!(ns.links().len(), 2, "only lo and the bridge should remain");
    eprintln!("two VMs: {:?} and {:?}", f1.elapsed, f2.elapsed);
}

/// Host and guest over TCP through the bridge: the guest sends `seq 1 330000` (2.1 MiB) to
/// a listener on the host's bridge address, which checks every byte; then the host
/// connects to a listener in the guest and sends 2 MiB of pseudo-random bytes, whose
/// SHA-256 the guest prints. The tap is gone once the VM ends.
///
/// The guest runs the `vmlinux-acpi-only` kernel (no `VIRTIO_MMIO_CMDLINE_DEVICES`), so
/// this boot also shows that ACPI alone describes the disk and the network card: the
/// command line has no `virtio_mmio.device=`, and the guest has `vda` and `eth0`.
#[test]
fn host_and_guest_exchange_data_over_tcp_on_a_kernel_that_finds_devices_by_acpi_alone() {
    let ns = netns_with_bridge();
    const N: u32 = 330_000;
    let to_guest = pattern(0x9e37_79b9_7f4a_7c15, 2 << 20);
    let to_guest_len = to_guest.len();
    let to_guest_sha = sha256_hex(&to_guest);

    let guest = Guest::new()
        .kernel("vmlinux-acpi-only")
        .args(&["--name", "hostguest", "--net", &format!("bridge={BRIDGE}")])
        .run(&format!(
            "{} echo BLOCK: /sys/block/*; echo NET: /sys/class/net/*; \
             up 10.99.0.2; waitping {HOST_IP} || exit 1; \
             mvtool send {HOST_IP} 7000 seq {N} || exit 1; echo GUEST-SENT; \
             mvtool recv 7001",
            guest_prelude(120)
        ))
        .work(Duration::from_secs(120));
    let budget = guest.budget();
    let host = ns.spawn_in(move || -> Result<Vec<u8>, String> {
        let listener = TcpListener::bind((HOST_IP, 7000)).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > budget.wall {
                        return Err("the guest never connected".into());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(budget.wall)).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got)
            .map_err(|e| format!("reading from {peer}: {e}"))?;
        drop(conn);

        // Now the other way: the guest listens on 7001 once its upload is done.
        let guest: SocketAddr = "10.99.0.2:7001".parse().unwrap();
        let start = Instant::now();
        let mut conn = loop {
            match TcpStream::connect_timeout(&guest, Duration::from_secs(2)) {
                Ok(c) => break c,
                Err(e) if start.elapsed() > budget.wall => {
                    return Err(format!("connecting to the guest: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        conn.set_write_timeout(Some(budget.wall)).unwrap();
        conn.write_all(&to_guest)
            .map_err(|e| format!("sending to the guest: {e}"))?;
        conn.shutdown(Shutdown::Write).unwrap();
        // Wait for the guest to close its end (it has read everything then).
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        Ok(got)
    });

    let f = guest.start_in(Some(&ns)).finish();
    let got = host.join().unwrap();
    assert!(!f.stdout.contains("virtio_mmio.device="), "{f}");
    assert!(f.has_line("BLOCK: /sys/block/vda"), "{f}");
    assert!(
        f.has_line("NET: /sys/class/net/eth0 /sys/class/net/lo"),
        "{f}"
    );
    assert_console_has(&f, &format!("PING-OK {HOST_IP}"));
    assert_console_has(&f, "GUEST-SENT");
    let got = got.unwrap_or_else(|e| panic!("host side: {e}\n{f}"));
    let want = seq_bytes(N);
    assert_eq!(got.len(), want.len(), "bytes the host received\n{f}");
    assert!(got == want, "the host received other bytes than sent\n{f}");
    assert_console_has(&f, &format!("received {to_guest_len} {to_guest_sha}"));
    assert_ended_cleanly(&ns, &f);
    eprintln!("host and guest: {:?}", f.elapsed);
}

/// VmRSS of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A counter of the tap, read in the namespace's sysfs.
fn tap_stat(ns: &NetNs, tap: &str, stat: &str) -> u64 {
    let out = ns
        .command(std::path::Path::new("cat"))
        .arg(format!("/sys/class/net/{tap}/statistics/{stat}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("reading {stat} of {tap}: {out:?}"))
}

/// A guest that never brings eth0 up posts no RX buffers. The host floods it with UDP
/// frames (to its MAC, through the bridge) for 10 s: minivmm must leave them queued in
/// the kernel (the tap drops the excess) rather than buffer them, so its RSS barely grows.
/// The guest waits on its console after printing FLOOD-READY, idle, until the host types a
/// line once the flood is over; then it brings eth0 up and reaches the host: the device
/// still works.
#[test]
fn flood_to_a_guest_without_rx_buffers_does_not_grow_minivmm() {
    let ns = netns_with_bridge();
    let mac = "02:00:0a:63:00:02";
    let cmd = format!(
        "{} echo FLOOD-READY; read x; echo FLOOD-WAIT-DONE; \
         up 10.99.0.2; waitping {HOST_IP}",
        guest_prelude(30)
    );
    let mut vm = Guest::new()
        .args(&[
            "--name",
            "flood",
            "--net",
            &format!("bridge={BRIDGE},mac={mac}"),
        ])
        .run(&cmd)
        .work(Duration::from_secs(60))
        .start_in(Some(&ns));
    let pid = vm.pid();
    assert!(
        vm.wait_for("FLOOD-READY"),
        "the guest did not come up: {}",
        vm.console()
    );
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "minivmm");
    let tap = tap_of(pid);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);
    let tx_before = tap_stat(&ns, &tap, "tx_packets") + tap_stat(&ns, &tap, "tx_dropped");

    ns.ip(&[
        "neigh",
        "replace",
        "10.99.0.2",
        "lladdr",
        mac,
        "dev",
        BRIDGE,
        "nud",
        "permanent",
    ]);
    let flood = ns.spawn_in(|| {
        let sock = UdpSocket::bind((HOST_IP, 0)).unwrap();
        let payload = vec![0x5a_u8; 1000];
        let end = Instant::now() + Duration::from_secs(10);
        let mut sent = 0u64;
        while Instant::now() < end {
            // ENOBUFS and the like when queues are full: keep going.
            if sock
                .send_to(&payload, (Ipv4Addr::new(10, 99, 0, 2), 9))
                .is_ok()
            {
                sent += 1;
            }
        }
        sent
    });
    let mut peak = before;
    while !flood.is_finished() {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let sent = flood.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    peak = peak.max(after);
    let reached = tap_stat(&ns, &tap, "tx_packets") + tap_stat(&ns, &tap, "tx_dropped") - tx_before;
    eprintln!(
        "flood: {sent} datagrams sent, {reached} reached the tap; VmRSS {before} KiB before, \
         peak {peak} KiB, {after} KiB after"
    );
    assert!(
        reached > 10_000,
        "the flood did not reach the tap ({reached} frames): the test proves nothing"
    );
    assert!(
        peak.saturating_sub(before) < 4096,
        "minivmm's RSS grew by {} KiB under a flood the guest cannot take",
        peak - before
    );

    vm.type_in(b"flood-over\n");
    let f = vm.finish();
    assert_console_has(&f, "FLOOD-WAIT-DONE");
    assert_console_has(&f, &format!("PING-OK {HOST_IP}"));
    assert_ended_cleanly(&ns, &f);
}

// --- tests without a boot ------------------------------------------------------------------------

/// Bad `--net` values and missing interfaces: exit code 2, one stderr line that names the
/// problem, and no interface left behind (also when a second NIC fails after the first
/// one's tap was created).
#[test]
fn bad_net_options_fail_cleanly() {
    let ns = netns_with_bridge();
    let before = ns.links();
    let kernel = guest_file("vmlinux");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--net", "bridge=mvmbr0,mac=zz:00:00:00:00:01"],
            &["MAC", "zz:00:00:00:00:01"],
        ),
        (
            &["--net", "bridge=mvmbr0,mac=01:00:5e:00:00:01"],
            &["MAC", "multicast"],
        ),
        (
            &["--net", "bridge=mvmbr0,mac=02:00:00:00:01"],
            &["MAC", "02:00:00:00:01"],
        ),
        (
            &["--net", "bridge=nosuchbr0"],
            &["nosuchbr0", "does not exist"],
        ),
        (&["--net", "bridge=lo"], &["lo", "not a bridge"]),
        (&["--net", "tap=notap0"], &["notap0", "does not exist"]),
        (
            &["--net", "tap=averyveryverylongtapname"],
            &["averyveryverylongtapname", "15 bytes"],
        ),
        (
            &["--net", "bridge=averyveryverylongbridge"],
            &["averyveryverylongbridge", "15 bytes"],
        ),
        // The first NIC's tap exists when the second fails: it must go too.
        (
            &["--net", "bridge=mvmbr0", "--net", "bridge=nosuchbr1"],
            &["nosuchbr1", "does not exist"],
        ),
    ];
    for (args, words) in cases {
        let mut all = vec!["--kernel", &kernel];
        all.extend_from_slice(args);
        let out = ns.minivmm(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        for w in *words {
            assert!(
                stderr.contains(w),
                "{args:?}: {stderr:?} does not name {w:?}"
            );
        }
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert_eq!(ns.links(), before, "{args:?} left interfaces behind");
    }
}

/// `minivmm network create BR --cidr` makes an up bridge with the address; a second
/// create fails; `delete` removes it, and deleting it again fails. Nothing else changes.
#[test]
fn network_create_and_delete() {
    let ns = NetNs::new("net");
    let before = ns.links();
    ns.create_bridge(BRIDGE, Some("10.99.0.1/24"));
    let addr = ns.ip(&["-o", "-4", "addr", "show", "dev", BRIDGE]);
    assert!(addr.contains("inet 10.99.0.1/24"), "{addr}");
    let link = ns.ip(&["-o", "link", "show", "dev", BRIDGE]);
    assert!(link.contains(",UP"), "{link}");
    let detail = ns.ip(&["-d", "-o", "link", "show", "dev", BRIDGE]);
    assert!(detail.contains("bridge"), "not a bridge: {detail}");

    let again = ns.minivmm(&["network", "create", BRIDGE]);
    assert_ne!(again.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );

    let del = ns.minivmm(&["network", "delete", BRIDGE]);
    assert!(del.status.success(), "{del:?}");
    assert_eq!(ns.links(), before);
    let del = ns.minivmm(&["network", "delete", BRIDGE]);
    assert_ne!(del.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("does not exist"),
        "{del:?}"
    );

    // Without --cidr: a bridge without an IPv4 address.
    let out = ns.minivmm(&["network", "create", "mvmbr1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(ns
        .ip(&["-o", "-4", "addr", "show", "dev", "mvmbr1"])
        .is_empty());
    let out = ns.minivmm(&["network", "delete", "mvmbr1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(ns.links(), before);
}
