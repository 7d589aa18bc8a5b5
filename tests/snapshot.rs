//! End to end: snapshot and restore. One guest boots once; everything else is restores of
//! its snapshot, which take milliseconds instead of the boot's tens of seconds.
//!
//! The guest runs a shell loop on its console: it prints `count N` about once a second
//! and runs any line typed on the console (`read` and `eval`, builtins only). That
//! makes the checks direct:
//!
//! - the counter of a restored VM continues from where the snapshot stopped it (not from
//!   0: nothing booted), and keeps counting;
//! - a line typed into the restored console is run, and its output comes back;
//! - a write to the data disk (`/dev/vdb`, the restore's own copy) reaches the host file;
//! - the guest's clock (`/proc/uptime`) goes on from the snapshot's, neither backwards nor
//!   by more than the time that really passed;
//! - two restores of the one snapshot run at once with different names, MACs and data
//!   disks on one bridge and ping each other (a clone must be told its new MAC inside:
//!   Linux read the old one at boot; see vmm/src/snapshot/mod.rs);
//! - a truncated or foreign snapshot directory, or options that do not fit it: exit 2,
//!   one line, and no tap, socket or process left behind.
//!
//! Runs in its own network namespace with a bridge and 10.99.2.0/24 addresses.

use std::path::Path;
use std::time::{Duration, Instant};

use minivmm_tests::{guest_file, minivmm_bin, Budget, CpuSlots, Guest, NetNs, TempDir, Vm};

const BRIDGE: &str = "snapbr0";

/// The guest's console loop (see the module documentation): a counter in a background
/// subshell (it sleeps in `read -t 1` on a FIFO nobody writes, a builtin), and in the
/// foreground every console line is run. `exit` typed in ends it, and the guest reboots.
const LOOP: &str = "ip link set eth0 up; (i=0; while :; do echo count $i; i=$((i+1)); \
                    read -t 1 x <> /etc/wait.fifo; done) & \
                    while read line; do eval $line; done";

/// The numbers of the `count N` lines in `console`, in order.
fn counts(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

/// The value printed after `key` on its own line (`key VALUE`), first match.
fn value_after<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
}

/// `minivmm snapshot --api-sock SOCK DIR --then THEN`, checked.
fn take_snapshot(sock: &Path, dir: &Path, then: &str) -> String {
    let out = std::process::Command::new(minivmm_bin())
        .args(["snapshot", "--api-sock"])
        .arg(sock)
        .arg(dir)
        .args(["--then", then])
        .output()
        .expect("running minivmm snapshot");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "minivmm snapshot failed: {text}");
    text
}

/// A restore of `snap` in `ns`, with its own name, NIC and data disk (`vdb`; `vda` is
/// the shared read-only root, as in the snapshot).
fn restore(ns: &NetNs, snap: &Path, name: &str, disk: &Path, sock: &Path) -> Vm {
    let args = [
        "--restore",
        &snap.display().to_string(),
        "--name",
        name,
        "--net",
        &format!("bridge={BRIDGE}"),
        "--disk",
        &format!("{},readonly=on", guest_file("rootfs.ext4")),
        "--disk",
        &disk.display().to_string(),
        "--api-sock",
        &sock.display().to_string(),
        "--log-level",
        "info",
    ];
    Vm::start(
        Some(ns),
        &args.iter().map(|s| s.as_ref()).collect::<Vec<&str>>(),
        Budget::scaled(Duration::from_secs(90)),
        CpuSlots::take(1),
    )
}

/// The MAC minivmm logged for eth0.
fn logged_mac(log: &str) -> String {
    let rest = log
        .split("MAC ")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in the log: {log}"));
    rest.split_whitespace().next().unwrap().to_string()
}

fn uptime(console: &str, key: &str) -> f64 {
    value_after(console, key)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no '{key}' line: {console}"))
}

#[test]
fn a_restored_vm_goes_on_where_it_stopped_and_clones_talk() {
    let tmp = TempDir::new("snapshot");
    let ns = NetNs::new("snap");
    ns.create_bridge(BRIDGE, None);
    let data = tmp.join("data.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
    let sock = tmp.join("base.sock");
    let snap = tmp.join("snap");

    // The one boot.
    let base = Guest::new().run(LOOP).args(&[
        "--disk",
        &data.display().to_string(),
        "--net",
        &format!("bridge={BRIDGE}"),
        "--name",
        "base",
        "--api-sock",
        &sock.display().to_string(),
    ]);
    let mut vm = base.start_in(Some(&ns));
    assert!(
        vm.wait_for("count 2"),
        "the guest did not count: {}",
        vm.console()
    );
    vm.type_in(b"read u x < /proc/uptime; echo UPTIME-$((1+1)) $u\n");
    assert!(vm.wait_for("UPTIME-2 "), "{}", vm.console());
    let report = take_snapshot(&sock, &snap, "stop");
    let snapshot_taken = Instant::now();
    let f = vm.finish();
    assert_eq!(f.code(), 0, "the snapshotted VM did not stop cleanly: {f}");
    let last = *counts(&f.stdout).last().unwrap();
    let before = uptime(&f.stdout, "UPTIME-2 ");
    assert!(!sock.exists(), "the API socket was left behind");
    eprintln!("snapshot: {report}");
    let meta = std::fs::metadata(snap.join("memory")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < meta.len() / 2,
        "the memory file is not sparse: {} of {} bytes allocated",
        meta.blocks() * 512,
        meta.len()
    );

    // Restore A: the counter goes on, the console, the disk and the clock work.
    let data_a = tmp.join("data-a.img");
    std::fs::copy(&data, &data_a).unwrap();
    let sock_a = tmp.join("a.sock");
    let started = Instant::now();
    let mut a = restore(&ns, &snap, "clone-a", &data_a, &sock_a);
    let next = format!("count {}", last + 1);
    assert!(
        a.wait_for(&next),
        "no '{next}' after the restore: {}\n{}",
        a.console(),
        a.log()
    );
    eprintln!("restore to '{next}': {:?}", started.elapsed());
    let seen = counts(&a.console());
    assert!(
        seen.iter().all(|&n| n > last),
        "the restored guest counted from {seen:?}, the snapshot stopped at {last}"
    );
    a.type_in(b"echo token-$((6*7))\n");
    assert!(
        a.wait_for("token-42"),
        "console input was not run: {}",
        a.console()
    );
    a.type_in(b"echo disk-written-by-clone-a > /dev/vdb; sync; echo DISK-$((1+1))\n");
    assert!(a.wait_for("DISK-2"), "{}", a.console());
    let on_host = std::fs::read(&data_a).unwrap();
    assert!(
        on_host.starts_with(b"disk-written-by-clone-a\n"),
        "the write did not reach the clone's disk"
    );
    assert!(
        std::fs::read(&data).unwrap().iter().all(|&b| b == 0),
        "the clone wrote to the original's disk"
    );
    a.type_in(b"read u x < /proc/uptime; echo UPTIME-$((2+1)) $u\n");
    assert!(a.wait_for("UPTIME-3 "), "{}", a.console());
    let after = uptime(&a.console(), "UPTIME-3 ");
    let passed = snapshot_taken.elapsed().as_secs_f64();
    assert!(
        after >= before && after <= before + passed + 5.0,
        "guest uptime {before} s before the snapshot, {after} s after the restore, \
         {passed:.1} s of real time later"
    );

    // Restore B at the same time: the same guest, another name, MAC and disk.
    let data_b = tmp.join("data-b.img");
    std::fs::copy(&data, &data_b).unwrap();
    let sock_b = tmp.join("b.sock");
    let mut b = restore(&ns, &snap, "clone-b", &data_b, &sock_b);
    assert!(
        b.wait_for(&next),
        "clone B did not resume: {}\n{}",
        b.console(),
        b.log()
    );
    let (mac_a, mac_b) = (logged_mac(&a.log()), logged_mac(&b.log()));
    assert_ne!(mac_a, mac_b, "the clones got the same MAC");
    // Each guest is told its new MAC and an address; B pings A.
    a.type_in(
        format!("ip link set eth0 address {mac_a}; ip addr add 10.99.2.11/24 dev eth0; echo A-$((1+1))\n")
            .as_bytes(),
    );
    assert!(a.wait_for("A-2"), "{}", a.console());
    b.type_in(
        format!(
            "ip link set eth0 address {mac_b}; ip addr add 10.99.2.12/24 dev eth0; \
             ping -c 1 -W 5 10.99.2.11 >/dev/null && echo PING-$((7*7)) || echo PING-FAIL\n"
        )
        .as_bytes(),
    );
    assert!(
        b.wait_for("PING-49"),
        "the clones cannot reach each other: {}\n{}",
        b.console(),
        a.console()
    );

    // Stopped through their API sockets: exit 0, taps and sockets gone.
    for (vm, sock) in [(a, &sock_a), (b, &sock_b)] {
        let out = std::process::Command::new(minivmm_bin())
            .args(["stop", "--api-sock"])
            .arg(sock)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let f = vm.finish();
        assert_eq!(f.code(), 0, "{f}");
        assert!(!sock.exists());
    }
    assert!(
        !ns.links().iter().any(|l| l.starts_with("mvm")),
        "taps left behind: {:?}",
        ns.links()
    );

    // Bad snapshot directories: exit 2, one line naming the problem, nothing left.
    let bad = |dir: &Path, extra: &[&str], expect: &str| {
        let mut args = vec!["--restore".to_string(), dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = ns.minivmm(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{dir:?} {extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(err.contains(expect), "expected '{expect}' in: {err}");
    };
    let copy = |name: &str| {
        let d = tmp.join(name);
        std::fs::create_dir(&d).unwrap();
        for f in ["memory", "snapshot.json"] {
            std::fs::copy(snap.join(f), d.join(f)).unwrap();
        }
        d
    };
    bad(&tmp.join("nonexistent"), &[], "nonexistent");
    let empty = tmp.join("empty");
    std::fs::create_dir(&empty).unwrap();
    bad(&empty, &[], "not a minivmm snapshot");
    let truncated = copy("truncated");
    std::fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("memory"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    bad(&truncated, &[], "truncated");
    let cut = copy("cut-json");
    let json = std::fs::read(cut.join("snapshot.json")).unwrap();
    std::fs::write(cut.join("snapshot.json"), &json[..json.len() / 2]).unwrap();
    bad(&cut, &[], "not valid JSON");
    let foreign = copy("foreign");
    std::fs::write(
        foreign.join("snapshot.json"),
        br#"{"format": "qemu-savevm"}"#,
    )
    .unwrap();
    bad(&foreign, &[], "not a minivmm snapshot");
    let newer = copy("newer");
    let text = String::from_utf8(json.clone()).unwrap();
    std::fs::write(
        newer.join("snapshot.json"),
        text.replacen("\"version\": 1", "\"version\": 99", 1),
    )
    .unwrap();
    bad(&newer, &[], "version 99");
    // A VM booted with --cloud-init saved its seed as /proc/self/fd/N, which names
    // something else (or nothing) in the restoring process: refused unless --disk replaces
    // it.
    let seeded = copy("seeded");
    let mut doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    doc["config"]["disks"][0]["path"] = "/proc/self/fd/3".into();
    std::fs::write(seeded.join("snapshot.json"), doc.to_string()).unwrap();
    bad(&seeded, &[], "cloud-init seed");
    bad(&snap, &["--disk", "/nonexistent.img"], "--disk");
    bad(
        &snap,
        &[
            "--net",
            &format!("bridge={BRIDGE}"),
            "--net",
            &format!("bridge={BRIDGE}"),
        ],
        "network interface",
    );
    assert!(
        !ns.links().iter().any(|l| l.starts_with("mvm")),
        "a refused restore left a tap: {:?}",
        ns.links()
    );
}
