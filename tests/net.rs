//! End to end: virtio-net. Guests of the project's test guest (resources/guest) talk to each
//! other and to the host through a Linux bridge, and minivmm's host-side network handling
//! (taps it creates, `minivmm network create/delete`, errors) leaves nothing behind.
//!
//! Isolation: every test creates its own network namespace (`mvmtest-<pid>-<n>`) and runs
//! minivmm, the bridge, the taps and the host ends of the connections inside it, with
//! addresses from 10.99.0.0/24. No traffic leaves the namespace, and the namespace is
//! removed when the test ends, failed or not ([`Netns`]'s `Drop`).
//!
//! The guest is configured by the shell command in `minivmm_run=` (busybox `ip`, `ping`,
//! `nc`, `seq`, `sha256sum`). On PVM hosts guest kernel code runs in KVM's instruction
//! emulator, so boots take 30-100 s and the guest's network stack is slow: transfers are
//! a few MiB, data is generated (`seq`) and hashed (`sha256sum`) in guest user space, and
//! the VMs of one test run in parallel. Needs root (namespaces, bridges, taps).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use minivmm_tests::{boot_deadline, guest_dir, minivmm_bin, Finished};

/// The host's address on a test bridge (given with `minivmm network create --cidr`).
const HOST_IP: &str = "10.99.0.1";
const BRIDGE: &str = "mvmbr0";

// --- network namespace ------------------------------------------------------------------

/// A network namespace for one test, deleted on drop (processes still in it lose it when
/// they end; [`Vm`] kills its minivmm on drop, and is declared after the namespace, so it
/// is dropped first).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("mvmtest-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("running ip netns add (iproute2)");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS args`, which must succeed; its stdout.
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The names of all interfaces in the namespace.
    fn links(&self) -> Vec<String> {
        // "5: mvm123n0: <BROADCAST,...> ..." (veth/vlan names carry "@peer").
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// A command that runs `program` inside the namespace.
    fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run minivmm with `args` in the namespace to the end (for commands that do not boot).
    fn minivmm(&self, args: &[&str]) -> Output {
        let mut c = self.command(&minivmm_bin());
        c.args(args).stdin(Stdio::null());
        c.output().expect("starting minivmm")
    }

    /// `minivmm network create BRIDGE --cidr 10.99.0.1/24`, which must succeed.
    fn create_bridge(&self) {
        let out = self.minivmm(&["network", "create", BRIDGE, "--cidr", "10.99.0.1/24"]);
        assert!(
            out.status.success(),
            "minivmm network create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run `f` on a thread that has joined the namespace (`setns` acts on the calling
    /// thread only): host-side sockets opened there live in the namespace.
    fn spawn_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("opening the namespace");
            // SAFETY: setns() takes an fd we own and a flag; it changes only this thread's
            // network namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

// --- a VM running in the background -----------------------------------------------------

/// A minivmm process booting the test guest with `minivmm_run=<cmd>`; its console and log
/// are collected while it runs. Killed on drop if still running.
struct Vm {
    child: Option<Child>,
    /// The console input: an empty pipe, held open for the VM's life.
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Vm {
    /// Boot the guest in `ns` with the NICs `nets` (`--net` values) running `run_cmd`.
    fn start(ns: &Netns, name: &str, nets: &[&str], run_cmd: &str) -> Vm {
        assert!(!run_cmd.contains('"'), "the guest command cannot hold '\"'");
        let dir = guest_dir();
        let mut c = ns.command(&minivmm_bin());
        c.arg("--kernel")
            .arg(dir.join("vmlinux"))
            .arg("--initrd")
            .arg(dir.join("initramfs.cpio"))
            .args(["--name", name, "--log-level", "info"])
            .arg("--cmdline")
            .arg(format!("minivmm_run=\"{run_cmd}\""));
        for n in nets {
            c.args(["--net", n]);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting minivmm");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let collect = |pipe: Box<dyn Read + Send>, sink: Arc<Mutex<String>>| {
            std::thread::spawn(move || {
                let mut r = BufReader::new(pipe);
                let mut line = Vec::new();
                while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            })
        };
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap()), stdout.clone()),
            collect(Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ];
        Vm {
            stdin: child.stdin.take(),
            child: Some(child),
            stdout,
            stderr,
            readers,
            started: Instant::now(),
        }
    }

    /// minivmm's pid (`ip netns exec` execs it, so it is the child's).
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Wait until the console shows `needle` (true) or the VM ended or `timeout` passed.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.stdout.lock().unwrap().contains(needle) {
                return true;
            }
            if let Ok(Some(_)) = self.child.as_mut().unwrap().try_wait() {
                // Give the reader a moment for the last output.
                std::thread::sleep(Duration::from_millis(200));
                return self.stdout.lock().unwrap().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Wait for the VM to end (killing it after `deadline` from its start).
    fn finish(mut self) -> Finished {
        let deadline = boot_deadline() + Duration::from_secs(120);
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if self.started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(self.stdin.take());
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap());
        Finished {
            status,
            stdout,
            stderr,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

/// What busybox `seq 1 n` prints: distinct lines, so a lost, repeated or reordered segment
/// changes the bytes.
fn seq_bytes(n: u32) -> Vec<u8> {
    let mut s = String::new();
    for i in 1..=n {
        writeln!(s, "{i}").unwrap();
    }
    s.into_bytes()
}

/// `n` bytes from a fixed xorshift generator.
fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// The SHA-256 of `data` in hex, by the host's `sha256sum` (coreutils).
fn sha256(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Shell functions for the guest commands: `up ADDR` configures eth0; `waitping ADDR`
/// pings ADDR once a second (2 s reply timeout) until it answers, up to `tries` times,
/// printing `PING-OK ADDR` or `PING-FAIL ADDR`.
fn guest_prelude(tries: u32) -> String {
    format!(
        "up() {{ ip link set eth0 up && ip addr add $1/24 dev eth0; }}; \
         waitping() {{ i=0; while [ $i -lt {tries} ]; do \
         if ping -c 1 -W 2 $1 >/dev/null 2>&1; then echo PING-OK $1; return 0; fi; \
         i=$((i+1)); sleep 1; done; echo PING-FAIL $1; return 1; }}; "
    )
}

/// Assert a VM ended by itself with status 0 and its tap is gone from the namespace.
fn assert_ended_cleanly(ns: &Netns, f: &Finished) {
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

/// Two VMs on one bridge: each pings the other (the first to boot waits, retrying, for the
/// other), VM1 sends `seq 1 330000` (2.1 MiB) to VM2 over TCP and both print the SHA-256 of
/// what they sent and received, VM2 answers over TCP so VM1 ends only after VM2 had its
/// turn; both exit 0, and their taps are gone once they end.
#[test]
fn two_vms_ping_each_other_and_move_data_over_tcp() {
    let ns = Netns::new();
    ns.create_bridge();
    const N: u32 = 330_000;
    let expected = sha256(&seq_bytes(N));
    let pre = guest_prelude(120);
    let vm1_cmd = format!(
        "{pre} up 10.99.0.11; waitping 10.99.0.12 || exit 1; \
         echo TX-SHA $(seq 1 {N} | sha256sum); \
         i=0; until seq 1 {N} | nc 10.99.0.12 5000; do i=$((i+1)); [ $i -ge 60 ] && exit 1; sleep 1; done; \
         echo VM1-SENT; echo FROM-VM2: $(timeout 200 nc -l -p 5001)"
    );
    // The receiving nc runs in the foreground: busybox nc half-closes the connection when
    // its stdin ends, and the sending nc then stops early, so the listener's stdin must not
    // be /dev/null (which a background job gets); the console never ends.
    let vm2_cmd = format!(
        "{pre} up 10.99.0.12; (waitping 10.99.0.11 > /tmp/ping) & \
         echo RX-SHA $(timeout 300 nc -l -p 5000 | sha256sum); wait; cat /tmp/ping; \
         i=0; until echo vm2-says-bye | nc 10.99.0.11 5001; do i=$((i+1)); [ $i -ge 60 ] && exit 1; sleep 1; done"
    );
    let br = format!("bridge={BRIDGE}");
    let vm1 = Vm::start(&ns, "vm1", &[&br], &vm1_cmd);
    let vm2 = Vm::start(&ns, "vm2", &[&br], &vm2_cmd);
    let f2 = vm2.finish();
    let f1 = vm1.finish();
    let both = format!("=== VM1 ===\n{f1}\n=== VM2 ===\n{f2}");
    let checks = [
        (&f1, "PING-OK 10.99.0.12".to_string()),
        (&f2, "PING-OK 10.99.0.11".to_string()),
        (&f1, format!("TX-SHA {expected}")),
        (&f2, format!("RX-SHA {expected}")),
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
#[test]
fn host_and_guest_exchange_data_over_tcp() {
    let ns = Netns::new();
    ns.create_bridge();
    const N: u32 = 330_000;
    let to_guest = pseudo_random(2 << 20);
    let to_guest_sha = sha256(&to_guest);

    let host = ns.spawn_in(move || -> Result<Vec<u8>, String> {
        let limit = boot_deadline() + Duration::from_secs(60);
        let listener = TcpListener::bind((HOST_IP, 7000)).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > limit {
                        return Err("the guest never connected".into());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
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
                Err(e) if start.elapsed() > Duration::from_secs(120) => {
                    return Err(format!("connecting to the guest: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        conn.set_write_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        conn.write_all(&to_guest)
            .map_err(|e| format!("sending to the guest: {e}"))?;
        conn.shutdown(Shutdown::Write).unwrap();
        // Wait for the guest to close its end (it has read everything then).
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        Ok(got)
    });

    let cmd = format!(
        "{} up 10.99.0.2; waitping {HOST_IP} || exit 1; \
         i=0; until seq 1 {N} | nc {HOST_IP} 7000; do i=$((i+1)); [ $i -ge 60 ] && exit 1; sleep 1; done; \
         echo GUEST-SENT; echo HOST-RX-SHA $(timeout 200 nc -l -p 7001 | sha256sum)",
        guest_prelude(60)
    );
    let vm = Vm::start(&ns, "hostguest", &[&format!("bridge={BRIDGE}")], &cmd);
    let f = vm.finish();
    let got = host.join().unwrap();
    assert_console_has(&f, &format!("PING-OK {HOST_IP}"));
    assert_console_has(&f, "GUEST-SENT");
    let got = got.unwrap_or_else(|e| panic!("host side: {e}\n{f}"));
    let want = seq_bytes(N);
    assert_eq!(got.len(), want.len(), "bytes the host received\n{f}");
    assert!(got == want, "the host received other bytes than sent\n{f}");
    assert_console_has(&f, &format!("HOST-RX-SHA {to_guest_sha}"));
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
fn tap_stat(ns: &Netns, tap: &str, stat: &str) -> u64 {
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
/// The guest sleeps 60 s after printing FLOOD-READY (the flood takes ~13 s of that; the
/// serial console is not used to signal it). Afterwards the guest brings eth0 up and reaches the host: the device still works.
#[test]
fn flood_to_a_guest_without_rx_buffers_does_not_grow_minivmm() {
    let ns = Netns::new();
    ns.create_bridge();
    let mac = "02:00:0a:63:00:02";
    let cmd = format!(
        "{} echo FLOOD-READY; sleep 60; echo FLOOD-WAIT-DONE; \
         up 10.99.0.2; waitping {HOST_IP}",
        guest_prelude(30)
    );
    let mut vm = Vm::start(&ns, "flood", &[&format!("bridge={BRIDGE},mac={mac}")], &cmd);
    let pid = vm.pid();
    assert!(
        vm.wait_for("FLOOD-READY", boot_deadline()),
        "the guest did not come up"
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
    let ns = Netns::new();
    ns.create_bridge();
    let before = ns.links();
    let kernel = guest_dir().join("vmlinux").display().to_string();
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
    let ns = Netns::new();
    let before = ns.links();
    ns.create_bridge();
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
