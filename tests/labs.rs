//! Labs (`minivmm up/ls/ssh/console/down`), each test in a network namespace of its own with
//! its own state directory, so that bridges, taps and addresses exist only in there:
//!
//! * bad lab files (a clash of names, a clash of addresses, an address outside its network,
//!   a missing file, an unknown key, a bridge name taken on the host): one line per problem,
//!   exit 2, nothing created;
//! * VMs that fail at once (no boot): `up` reports them crashed, `ls` too, `down` removes the
//!   bridge, `down` twice is harmless, `--purge` removes the state;
//! * a killed `up` (two test guests that print cloud-init's final message themselves): a
//!   second `up` adopts the VMs that run instead of starting others and waits until they are
//!   ready, a third changes nothing, `ls` and `console` show them, `down` powers them off
//!   (ACPI) and leaves no process, tap or bridge;
//! * the `ssh-pair` lab end to end on the Debian server image (see `docs/labs/ssh-pair.md`),
//!   with `MINIVMM_TEST_SERVERS=lab` or `1` (`./test.sh` sets `lab`: CI runs it). The other
//!   labs run with `MINIVMM_TEST_ALL_LABS=1` too (`./test.sh --all-labs`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use minivmm_tests::{
    debian_dir, guest_file, minivmm_bin, repo_root, servers, wait, Budget, CpuSlots, NetNs,
    Servers, TempDir,
};

const BAD_INPUT: i32 = 2;

/// A lab's state directory inside a scratch directory, and the namespace it runs in.
struct LabEnv {
    // Dropped in this order: VMs (by down or kill) before the namespace.
    ns: NetNs,
    dir: TempDir,
}

impl LabEnv {
    fn new(tag: &str) -> Self {
        Self {
            ns: NetNs::new(tag),
            dir: TempDir::new(&format!("minivmm-labs-{tag}")),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// A `minivmm SUBCOMMAND ... --state-dir STATE` command in the namespace.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ns.command(&minivmm_bin());
        c.args(&args[..1])
            .arg("--state-dir")
            .arg(self.state())
            .args(&args[1..])
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running minivmm")
    }

    /// Write a lab file into the scratch directory.
    fn lab(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(&format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// The pids of the minivmm processes whose command line mentions this state directory
    /// (VMs and keepers).
    fn processes(&self) -> Vec<u32> {
        let want = self.state().display().to_string();
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("minivmm") && cmd.contains(&want) {
                v.push(pid);
            }
        }
        v
    }

    /// Interfaces in the namespace besides `lo`.
    fn links(&self) -> Vec<String> {
        self.ns.links().into_iter().filter(|l| l != "lo").collect()
    }
}

impl Drop for LabEnv {
    /// A failed test must not leave VMs running.
    fn drop(&mut self) {
        for pid in self.processes() {
            // SAFETY: kill(2) on a process whose command line names our scratch directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// `up` of `lab` must fail with exit 2, one `minivmm: FILE: ...` line per expected
/// problem (each containing its needle, in order), and create nothing.
fn refused(env: &LabEnv, lab: &str, needles: &[&str]) {
    let o = env.run(&["up", lab]);
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{}", show(&o));
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), needles.len(), "{}", show(&o));
    for (l, n) in lines.iter().zip(needles) {
        assert!(
            l.starts_with(&format!("minivmm: {lab}: ")),
            "{l:?} does not name the lab file"
        );
        assert!(l.contains(n), "{l:?} should contain {n:?}");
    }
    assert!(o.stdout.is_empty(), "{}", show(&o));
    assert!(
        !env.state().exists(),
        "up created {}",
        env.state().display()
    );
    assert_eq!(env.links(), Vec::<String>::new(), "up created interfaces");
}

/// A lab of `vms` VMs booting `kernel` with `disk` (paths), on bridge `bridge`.
fn lab_text(bridge: &str, kernel: &str, disk: Option<&str>, vms: &[(&str, &str)]) -> String {
    let mut t = format!(
        "description = \"a test lab\"\n\n[[network]]\nname = \"{bridge}\"\ncidr = \
         \"10.77.0.0/24\"\nhost = \"10.77.0.1\"\n"
    );
    for (name, addr) in vms {
        t.push_str(&format!(
            "\n[[vm]]\nname = \"{name}\"\nkernel = \"{kernel}\"\nmemory = \"128M\"\n\
             nics = [{{ network = \"{bridge}\", address = \"{addr}\" }}]\n"
        ));
        if let Some(d) = disk {
            t.push_str(&format!("disk = \"{d}\"\n"));
        }
    }
    t
}

#[test]
fn bad_lab_files_are_refused_before_anything_exists() {
    let env = LabEnv::new("labbad");
    let k = env.dir.join("vmlinux");
    std::fs::write(&k, b"not really a kernel").unwrap();
    let k = k.display().to_string();
    let good = lab_text(
        "tlab0",
        &k,
        None,
        &[("a", "10.77.0.10"), ("b", "10.77.0.11")],
    );

    // A clash of names.
    let lab = env.lab("names", &good.replace("name = \"b\"", "name = \"a\""));
    refused(&env, &lab, &["vm[1].name: a second VM named 'a'"]);
    // A clash of addresses (with each other, with the host).
    let lab = env.lab(
        "addresses",
        &good.replace("10.77.0.11", "10.77.0.10").replace(
            "address = \"10.77.0.10\" }]\n\n[[vm]]",
            "address = \"10.77.0.1\" }]\n\n[[vm]]",
        ),
    );
    refused(
        &env,
        &lab,
        &["vm[0].nics[0].address: 10.77.0.1 is already the host on 'tlab0'"],
    );
    let lab = env.lab("addresses2", &good.replace("10.77.0.11", "10.77.0.10"));
    refused(
        &env,
        &lab,
        &["vm[1].nics[0].address: 10.77.0.10 is already used by a"],
    );
    // An address outside its network, and a missing file, in one file: both reported.
    let lab = env.lab(
        "outside",
        &good
            .replace("10.77.0.11", "10.78.0.11")
            .replace(&format!("kernel = \"{k}\"\nmemory = \"128M\"\nnics = [{{ network = \"tlab0\", address = \"10.77.0.10\""),
                &format!("kernel = \"{k}.missing\"\nmemory = \"128M\"\nnics = [{{ network = \"tlab0\", address = \"10.77.0.10\"")),
    );
    refused(
        &env,
        &lab,
        &[
            "vm[0].kernel: ",
            "vm[1].nics[0].address: 10.78.0.11 is outside network 'tlab0' (10.77.0.0/24)",
        ],
    );
    // A missing image.
    let lab = env.lab(
        "image",
        "[[vm]]\nname = \"a\"\nimage = \"./no-such-image\"\n",
    );
    refused(&env, &lab, &["vm[0].image: image directory"]);
    // A misspelt key.
    let lab = env.lab("key", &format!("{good}memroy = \"1G\"\n"));
    refused(&env, &lab, &["unknown field `memroy`"]);
    // A bridge name that an interface of the host already has.
    env.ns.create_bridge("tlab0", None);
    let lab = env.lab("taken", &good);
    let o = env.run(&["up", &lab]);
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("network[0].name: an interface named tlab0 exists"),
        "{}",
        show(&o)
    );
    assert!(!env.state().exists());
    // A lab name that is no lab file.
    let o = env.run(&["up", "no-such-lab"]);
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{}", show(&o));
    assert_eq!(text(&o.stderr).lines().count(), 1, "{}", show(&o));
}

#[test]
fn vms_that_fail_at_once_are_crashed_and_down_twice_is_harmless() {
    let env = LabEnv::new("labfail");
    // A "kernel" minivmm refuses at once (exit 2): no boot, but every step of up runs.
    let k = env.dir.join("vmlinux");
    std::fs::write(&k, "not a kernel\n".repeat(100)).unwrap();
    let lab = env.lab(
        "fail",
        &lab_text(
            "tfail0",
            &k.display().to_string(),
            None,
            &[("a", "10.77.0.10"), ("b", "10.77.0.11")],
        ),
    );
    let o = env.run(&["up", &lab, "--timeout", "60s"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = text(&o.stdout);
    for vm in ["a ", "b "] {
        let line = out
            .lines()
            .find(|l| l.starts_with(vm))
            .unwrap_or_else(|| panic!("no row for {vm}: {}", show(&o)));
        assert!(line.contains("crashed (code 2)"), "{line}");
    }
    assert!(out.contains("0 of 2 VMs ready"), "{}", show(&o));
    assert_eq!(env.links(), ["tfail0"], "the bridge, and no tap");
    let ls = env.run(&["ls"]);
    assert!(ls.status.success(), "{}", show(&ls));
    assert_eq!(
        text(&ls.stdout)
            .lines()
            .filter(|l| l.starts_with("fail ") && l.contains("crashed (code 2)"))
            .count(),
        2,
        "{}",
        show(&ls)
    );
    // Files of the state directory, as documented.
    let ld = env.state().join("labs/fail");
    for f in ["lab.toml", "key", "key.pub", "known_hosts", "bridges"] {
        assert!(ld.join(f).is_file(), "{f}");
    }
    for f in [
        "seed/user-data",
        "seed/network-config",
        "config.json",
        "exit",
        "console.log",
    ] {
        assert!(ld.join("vms/a").join(f).is_file(), "{f}");
    }
    for _ in 0..2 {
        let o = env.run(&["down", "fail"]);
        assert!(o.status.success(), "{}", show(&o));
        assert!(text(&o.stdout).contains("lab fail is down"), "{}", show(&o));
        assert_eq!(env.links(), Vec::<String>::new());
    }
    let o = env.run(&["down", &lab, "--purge"]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(!ld.exists());
    let o = env.run(&["down", "fail"]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(text(&o.stdout).contains("not up"), "{}", show(&o));
    assert!(env.processes().is_empty());
}

/// The pids in the `pid` files of a lab's VMs.
fn vm_pids(env: &LabEnv, lab: &str, vms: &[&str]) -> Vec<Option<u32>> {
    vms.iter()
        .map(|vm| {
            std::fs::read_to_string(env.state().join(format!("labs/{lab}/vms/{vm}/pid")))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// The row of `vm` in an `ls` or `up` table, split into columns.
fn row(table: &str, col: usize, vm: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(col) == Some(vm))
        .unwrap_or_else(|| panic!("no row for {vm}:\n{table}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn killed_up_is_adopted_up_twice_changes_nothing_and_down_cleans_up() {
    let env = LabEnv::new("labkill");
    let _slots = CpuSlots::take(2);
    // The test guest has no cloud-init: its command line makes it print what cloud-init's
    // final message would, then wait (shell builtins only). The marker is put together in
    // the guest, so that /init's echo of the command does not already contain it.
    let kernel = guest_file("vmlinux");
    let disk = guest_file("rootfs.ext4");
    let mut spec = lab_text(
        "tkill0",
        &kernel,
        Some(&disk),
        &[("a", "10.77.0.10"), ("b", "10.77.0.11")],
    );
    for vm in ["a", "b"] {
        spec = spec.replacen(
            &format!("name = \"{vm}\"\n"),
            &format!(
                "name = \"{vm}\"\ncmdline = 'minivmm_run=\"m=minivmm-lab; echo $m: ready {vm} \
                 after 1 s; read x <> /etc/wait.fifo\"'\n"
            ),
            1,
        );
    }
    let lab = env.lab("kill", &spec);
    let timeout = format!(
        "{}s",
        minivmm_tests::boot_budget(Duration::from_secs(20))
            .wall
            .as_secs()
    );
    let mut up = env
        .cmd(&["up", &lab, "--timeout", &timeout])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for both VMs to run, then kill up.
    let t0 = Instant::now();
    let pids = loop {
        let p = vm_pids(&env, "kill", &["a", "b"]);
        if p.iter().all(|p| p.is_some_and(alive)) {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the VMs did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    up.kill().unwrap();
    up.wait().unwrap();
    let ls = text_of(&env.run(&["ls", "kill"]));
    for (vm, pid) in ["a", "b"].iter().zip(&pids) {
        let r = row(&ls, 1, vm);
        assert_eq!(r[2], "booting", "{ls}");
        assert_eq!(r[4], pid.unwrap().to_string(), "{ls}");
    }
    // A second up adopts them (the same pids) instead of starting others, and waits until
    // they are ready.
    let o = env.run(&["up", &lab, "--timeout", &timeout]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(vm_pids(&env, "kill", &["a", "b"]), pids);
    let table = text(&o.stdout);
    for vm in ["a", "b"] {
        let r = row(&table, 0, vm);
        assert_eq!(r[2], "running", "{table}");
    }
    assert!(table.contains("2 of 2 VMs ready"), "{table}");
    assert!(
        text(&o.stderr).contains("a: booting already, waiting for it"),
        "{}",
        show(&o)
    );
    // A third changes nothing.
    let o = env.run(&["up", &lab]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        text(&o.stdout).matches("running (was up)").count(),
        2,
        "{}",
        show(&o)
    );
    assert_eq!(vm_pids(&env, "kill", &["a", "b"]), pids);
    let ls = text_of(&env.run(&["ls"]));
    let r = row(&ls, 1, "a");
    assert_eq!(r[2], "running", "{ls}");
    assert_eq!(r[3], "10.77.0.10", "{ls}");
    assert!(r[7].ends_with('M'), "RSS column: {ls}");
    assert_eq!(
        env.links().iter().filter(|l| l.starts_with("mvm")).count(),
        2,
        "one tap per VM: {:?}",
        env.links()
    );
    // The console: attach, type, detach with Ctrl-A x; the VM runs on.
    let mut c = env
        .cmd(&["console", "kill/a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(b"\r\x01x").unwrap();
    }
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("detached from kill/a"),
        "{}",
        show(&o)
    );
    assert!(
        text(&o.stdout).contains("minivmm-lab: ready a"),
        "{}",
        show(&o)
    );
    assert!(alive(pids[0].unwrap()));
    // A VM name that is no lab's.
    let o = env.run(&["console", "nope"]);
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{}", show(&o));

    // down: the guests' acpid powers them off.
    let o = env.run(&["down", "kill", "--timeout", &timeout]);
    assert!(o.status.success(), "{}", show(&o));
    let out = text(&o.stdout);
    assert!(out.contains("a: powered off"), "{out}");
    assert!(out.contains("b: powered off"), "{out}");
    assert!(env.processes().is_empty(), "{:?}", env.processes());
    assert_eq!(env.links(), Vec::<String>::new(), "taps or bridge left");
    let ls = text_of(&env.run(&["ls"]));
    assert_eq!(row(&ls, 1, "a")[2], "stopped", "{ls}");
    let o = env.run(&["down", "kill"]);
    assert!(o.status.success(), "{}", show(&o));
}

fn text_of(o: &Output) -> String {
    assert!(o.status.success(), "{}", show(o));
    text(&o.stdout)
}

#[test]
fn a_failed_ssh_login_is_told_from_a_failed_command() {
    use std::os::unix::process::ExitStatusExt;
    let ssh_error = std::process::ExitStatus::from_raw(255 << 8);
    let failed_cmd = std::process::ExitStatus::from_raw(1 << 8);
    let refused = "student@10.30.0.10: Permission denied (publickey,password).\n";
    assert!(login_failed(ssh_error, refused, "10.30.0.10"));
    assert!(login_failed(
        ssh_error,
        "Connection closed by 10.30.0.10 port 22\n",
        "10.30.0.10"
    ));
    // Another VM's refusal (an ssh run inside the VM), a command's own status, or a
    // message on a later line: the command's.
    assert!(!login_failed(ssh_error, refused, "10.30.0.1"));
    assert!(!login_failed(
        ssh_error,
        "student@vm1: Permission denied (publickey).\n",
        "10.20.0.11"
    ));
    assert!(!login_failed(failed_cmd, refused, "10.30.0.10"));
    assert!(!login_failed(
        ssh_error,
        &format!("output\n{refused}"),
        "10.30.0.10"
    ));
}

// --- labs on the Debian server image ---------------------------------------------------------

/// Reference-host time of one Debian lab VM's boot to cloud-init's final message, with
/// margin (scaled by the host's speed, like every budget). The slowest measured: ssh-pair's
/// vm1 (its first-boot git commands) 582 s at factor 2.72, 214 s; mysql-tls-backup's db
/// 851 s at 3.14, 271 s. Half as much again on top: in `./test.sh` (CI) the lab shares the
/// host with the tests that boot nothing.
const DEBIAN_BOOT_BASE: Duration = Duration::from_secs(360);

/// Reference-host time one `minivmm ssh VM -- CMD` of a check may take. The longest,
/// web-data-clients' load, took 513 s on a PVM host at speed factor 2.87: 179 s of
/// reference-host time.
const SSH_BASE: Duration = Duration::from_secs(400);

/// How many times [`UpLab::try_ssh`] tries a login that failed before its command ran.
const SSH_TRIES: u32 = 3;

/// Whether ssh's exit `status` and `stderr` say that the login to `addr` failed before any
/// command ran: exit 255 (ssh's own errors), with the first line naming `addr` as ssh
/// does for a refused key ("student@ADDR: Permission denied (publickey,...)") or a
/// connection lost during the handshake ("Connection closed by ADDR port 22").
fn login_failed(status: std::process::ExitStatus, stderr: &str, addr: &str) -> bool {
    let first = stderr.lines().next().unwrap_or_default();
    status.code() == Some(255)
        && (first.contains(&format!("@{addr}: Permission denied (publickey"))
            || first.starts_with(&format!("Connection closed by {addr} port 22"))
            || first.starts_with(&format!("Connection reset by {addr} port 22")))
}

/// A running lab, taken down (and its state purged) on drop.
struct UpLab<'a> {
    env: &'a LabEnv,
    name: String,
    /// Each VM's address, from `up`'s table.
    addrs: Vec<(String, String)>,
}

impl<'a> UpLab<'a> {
    /// `up` the shipped lab `name`: every VM must be ready within the budget.
    fn up(env: &'a LabEnv, name: &str, vms: usize) -> (Self, f64) {
        let budget = Budget::scaled(DEBIAN_BOOT_BASE * vms.div_ceil(2) as u32);
        let lab = repo_root().join(format!("labs/{name}.toml"));
        let t0 = Instant::now();
        let o = env
            .cmd(&["up", &lab.display().to_string()])
            .arg("--timeout")
            .arg(format!("{}s", budget.wall.as_secs()))
            .env("MINIVMM_DEBIAN_DIR", debian_dir())
            .output()
            .unwrap();
        let took = t0.elapsed().as_secs_f64();
        let addrs = text(&o.stdout)
            .lines()
            .skip_while(|l| !l.starts_with("VM "))
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string()))
            })
            .collect();
        let me = Self {
            env,
            name: name.to_string(),
            addrs,
        };
        assert!(o.status.success(), "{}\n{}", show(&o), me.consoles());
        eprintln!("up {name}: {took:.0} s\n{}", text(&o.stdout));
        // For ./test.sh's summary: what each lab costs on this host.
        if let Ok(path) = std::env::var("MINIVMM_TEST_SUMMARY") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
                let _ = writeln!(f, "lab {name} {vms} {took:.0}");
            }
        }
        (me, took)
    }

    /// The lab's VM directories' parent in the state directory.
    fn vms_dir(&self) -> PathBuf {
        self.env.state().join(format!("labs/{}/vms", self.name))
    }

    /// VM `vm`'s whole console log.
    fn console(&self, vm: &str) -> String {
        std::fs::read_to_string(self.vms_dir().join(vm).join("console.log")).unwrap_or_default()
    }

    /// The last lines of each VM's console, for a failure message.
    fn consoles(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(self.vms_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let log = std::fs::read_to_string(e.path().join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            s.push_str(&format!(
                "--- {} console (last lines)\n",
                e.file_name().to_string_lossy()
            ));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// `minivmm ssh VM -- CMD` (a shell command line): whether it succeeded, and its stdout
    /// (on success) or its stderr and stdout (on failure).
    ///
    /// A login that ssh itself reports as failed before the command ran (exit 255, and
    /// its message names the VM's address: a refused key, a connection closed or reset
    /// during the handshake) is tried again, up to [`SSH_TRIES`] times, and said on
    /// stderr: on PVM hosts a guest's sshd now and then refuses the lab key it accepts
    /// on the next login (tests/README.md, "A PVM host bug"). The command itself runs
    /// once: a failure after the login (any other message, or another host's, such as an
    /// ssh run inside the VM) is the command's and is returned as it is.
    ///
    /// A command still running after [`SSH_BASE`] times the host's speed factor is killed
    /// and fails: a guest that hangs fails a check instead of hanging the test.
    fn try_ssh(&self, vm: &str, cmd: &str) -> (bool, String) {
        let addr = self
            .addrs
            .iter()
            .find(|(name, _)| name == vm)
            .map(|(_, a)| a.as_str());
        let mut tries = 1;
        loop {
            let (status, out, err) = self.ssh_once(vm, cmd);
            match status {
                Some(s) if s.success() => return (true, out),
                Some(s) if tries < SSH_TRIES && addr.is_some_and(|a| login_failed(s, &err, a)) => {
                    eprintln!(
                        "ssh {vm} {cmd:?}: the login failed (try {tries} of {SSH_TRIES}), \
                         trying again: {}",
                        err.trim()
                    );
                    tries += 1;
                    std::thread::sleep(Duration::from_secs(2));
                }
                Some(_) => return (false, format!("{err}{out}")),
                None => {
                    return (
                        false,
                        format!(
                            "killed after {:.0?} (SSH_BASE times the speed factor)\n{err}{out}",
                            SSH_BASE.mul_f64(minivmm_tests::speed::factor())
                        ),
                    )
                }
            }
        }
    }

    /// One `minivmm ssh VM -- CMD`, killed at its deadline (`minivmm ssh` has exec'd ssh:
    /// that ends the connection); its status (None if killed), stdout and stderr.
    fn ssh_once(&self, vm: &str, cmd: &str) -> (Option<std::process::ExitStatus>, String, String) {
        let child = self
            .env
            .cmd(&["ssh", &format!("{}/{vm}", self.name), "--", cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let f = wait(child, SSH_BASE.mul_f64(minivmm_tests::speed::factor()));
        (f.status, f.stdout, f.stderr)
    }

    /// `minivmm ssh VM -- CMD`, which must succeed; its stdout.
    fn ssh(&self, vm: &str, cmd: &str) -> String {
        let (ok, out) = self.try_ssh(vm, cmd);
        assert!(ok, "ssh {vm} {cmd:?}: {out}");
        out
    }

    /// `minivmm ssh VM -- CMD` that must fail; its stderr and stdout.
    fn ssh_fails(&self, vm: &str, cmd: &str) -> String {
        let (ok, out) = self.try_ssh(vm, cmd);
        assert!(!ok, "ssh {vm} {cmd:?} succeeded: {out}");
        out
    }

    /// After a failure: take the lab down (its disks then hold a clean file system) and
    /// keep each VM's console log and its /var/log (read from the disk with debugfs) under
    /// `target/tmp/lab-logs/LAB-SECONDS/VM/`, since the state is purged next. A lab run costs
    /// tens of minutes on a PVM host; what went wrong in it should not need another.
    fn keep_logs(&self) {
        let _ = self.env.run(&["down", &self.name, "--timeout", "120s"]);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("lab-logs")
            .join(format!("{}-{secs}", self.name));
        for e in std::fs::read_dir(self.vms_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let to = keep.join(e.file_name());
            if std::fs::create_dir_all(&to).is_err() {
                continue;
            }
            let _ = std::fs::copy(e.path().join("console.log"), to.join("console.log"));
            // The image's root file system is its first partition, at 1 MiB.
            let o = Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump /var/log {}", to.display()))
                .arg(format!(
                    "{}?offset=1048576",
                    e.path().join("disk.img").display()
                ))
                .output();
            if o.is_err() || !to.join("log").is_dir() {
                eprintln!("{}: /var/log not read from its disk: {o:?}", to.display());
            }
        }
        eprintln!(
            "lab {}: the VMs' consoles and /var/log are kept in {}",
            self.name,
            keep.display()
        );
    }
}

impl Drop for UpLab<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        let o = self
            .env
            .run(&["down", &self.name, "--timeout", "120s", "--purge"]);
        if !std::thread::panicking() {
            assert!(o.status.success(), "{}", show(&o));
            assert!(self.env.processes().is_empty(), "processes left");
            assert_eq!(
                self.env.links(),
                Vec::<String>::new(),
                "taps or bridges left"
            );
        }
    }
}

#[test]
fn ssh_pair() {
    if !servers(Servers::Lab) {
        return;
    }
    let env = LabEnv::new("sshpair");
    let _slots = CpuSlots::take(2);
    let (lab, _) = UpLab::up(&env, "ssh-pair", 2);
    let pids = vm_pids(&env, "ssh-pair", &["vm1", "vm2"]);

    // vm2 reaches vm1 by name with the lab key; the host key is known (no question).
    assert_eq!(lab.ssh("vm2", "ssh vm1 hostname").trim(), "vm1");
    // Clone vm1's repository, commit, push back: the commit is in vm1's repository.
    lab.ssh(
        "vm2",
        "set -e; git clone -q vm1:/srv/git/project.git && cd project && \
         echo 'from vm2' > vm2.txt && git add vm2.txt && git commit -q -m 'pushed from vm2' && \
         git push -q origin main",
    );
    let log = lab.ssh("vm1", "git -C /srv/git/project.git log --format=%s main");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["pushed from vm2", "first commit"],
        "{log}"
    );
    // scp a file: the same checksum on both sides.
    let sum2 = lab.ssh(
        "vm2",
        "set -e; head -c 300000 /usr/bin/ssh > data.bin; scp -q data.bin vm1:data.bin; \
         sha256sum data.bin",
    );
    let sum1 = lab.ssh("vm1", "sha256sum data.bin");
    assert_eq!(
        sum1.split_whitespace().next(),
        sum2.split_whitespace().next()
    );
    assert_eq!(sum1.len(), 64 + 2 + "data.bin\n".len(), "{sum1}");

    // up again: nothing changes.
    let o = env
        .cmd(&["up", "ssh-pair"])
        .env("MINIVMM_LABS_DIR", repo_root().join("labs"))
        .env("MINIVMM_DEBIAN_DIR", debian_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        text(&o.stdout).matches("running (was up)").count(),
        2,
        "{}",
        show(&o)
    );
    assert_eq!(vm_pids(&env, "ssh-pair", &["vm1", "vm2"]), pids);
    let _ = lab.ssh_fails("vm9", "true");
}

/// Whether the labs beyond ssh-pair run (`MINIVMM_TEST_ALL_LABS=1`, `./test.sh --all-labs`):
/// each boots three or four Debian VMs, which on a PVM host costs a quarter of an hour or
/// more. Without it the test says so and passes.
fn all_labs() -> bool {
    if !servers(Servers::Lab) {
        return false;
    }
    let on = std::env::var("MINIVMM_TEST_ALL_LABS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED: set MINIVMM_TEST_ALL_LABS=1 (./test.sh --all-labs) to run this lab");
    }
    on
}

/// The checks of one lab test. A failed check is recorded and the test goes on, so that one
/// run (tens of minutes of boots on a PVM host) reports every problem; `finish` then fails
/// the test with all of them.
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: &str, detail: &str) {
        if !ok {
            eprintln!("CHECK FAILED: {what}: {detail}");
            self.0.push(format!("{what}: {detail}"));
        }
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} check(s) failed:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Run `cmd` on `vm` until it succeeds with `want(output)` (replication, timers), for up
/// to `budget`'s wall time; returns the last output.
fn eventually(
    lab: &UpLab,
    vm: &str,
    cmd: &str,
    want: impl Fn(&str) -> bool,
    budget: Budget,
) -> String {
    let t0 = Instant::now();
    loop {
        let (ok, out) = lab.try_ssh(vm, cmd);
        if (ok && want(&out)) || t0.elapsed() > budget.wall {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Where vminit put its MariaDB without AVX-512 in place (PVM hosts: the guest kernel does
/// not save those registers), the server's log (`out`, from `grep 'InnoDB: Using'`) shows
/// it computed its CRC-32C without them, every time it started.
fn mariadb_crc_check(lab: &UpLab, c: &mut Checks, vm: &str, out: &str) {
    if !lab.console(vm).contains("MariaDB without AVX-512") {
        return;
    }
    let starts: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("InnoDB: Using"))
        .collect();
    c.check(
        !starts.is_empty() && starts.iter().all(|l| !l.contains("AVX512")),
        &format!("{vm}'s mariadbd uses no AVX-512 (vminit's copy)"),
        out,
    );
}

#[test]
fn mysql_tls_backup() {
    if !all_labs() {
        return;
    }
    let env = LabEnv::new("labmysql");
    let _slots = CpuSlots::take(2);
    let (lab, _) = UpLab::up(&env, "mysql-tls-backup", 3);
    let mut c = Checks(Vec::new());
    // CRUD as the application user, over TLS with the server's certificate checked.
    let (ok, out) = lab.try_ssh(
        "client",
        "set -e; shop add juice 2.80; shop price tea 3.20; shop rm cocoa",
    );
    c.check(ok, "shop add, price, rm", &out);
    let want = ["tea\t3.20", "coffee\t4.20", "juice\t2.80"];
    let (_, list) = lab.try_ssh("client", "shop list");
    c.check(list.lines().eq(want), "shop list after CRUD", &list);
    let (_, cipher) = lab.try_ssh("client", "mariadb -N -e \"SHOW STATUS LIKE 'Ssl_cipher'\"");
    c.check(
        cipher.split_whitespace().nth(1).is_some(),
        "the client's connection uses TLS",
        &cipher,
    );
    // A plain-text connection is refused. MariaDB refuses a REQUIRE SSL account's plain
    // connection with "Access denied" before require_secure_transport's "insecure
    // transport"; the same account and password over TLS worked above (shop), so the
    // refusal is for the missing TLS.
    let (ok, err) = lab.try_ssh(
        "client",
        "mariadb --no-defaults --skip-ssl -h db -u app -papp-secret -e 'SELECT 1'",
    );
    c.check(
        !ok && (err.contains("insecure transport") || err.contains("Access denied")),
        "a plain-text connection is refused",
        &err,
    );
    // The replica follows, over TLS.
    let replica = eventually(
        &lab,
        "backup",
        "sudo mariadb -N -e 'SELECT name FROM shop.products ORDER BY id'",
        |out| out.contains("juice"),
        Budget::scaled(Duration::from_secs(60)),
    );
    c.check(
        replica.lines().eq(["tea", "coffee", "juice"]),
        "the replica's rows",
        &replica,
    );
    let (_, status) = lab.try_ssh(
        "backup",
        "sudo mariadb -e 'SHOW SLAVE STATUS\\G'; sudo grep -h 'InnoDB: Using' /var/log/mariadb.log",
    );
    for want in [
        "Slave_IO_Running: Yes",
        "Slave_SQL_Running: Yes",
        "Master_SSL_Allowed: Yes",
        "Master_SSL_Verify_Server_Cert: Yes",
    ] {
        c.check(status.contains(want), want, &status);
    }
    mariadb_crc_check(&lab, &mut c, "backup", &status);
    // db's accounts stay out of its binary log (sql_log_bin = 0): the replica has none.
    let (_, accounts) = lab.try_ssh(
        "backup",
        "sudo mariadb -N -e \"SELECT COUNT(*) FROM mysql.user WHERE user IN ('app', 'backup')\"",
    );
    c.check(
        accounts.trim() == "0",
        "the replica has none of db's accounts",
        &accounts,
    );
    // The replica's table is the primary's, row for row: CHECKSUM TABLE on both (the
    // replica may lag a moment, so it is asked until they agree or the budget ends).
    let checksum_cmd = |table: &str| format!("sudo mariadb -N -e 'CHECKSUM TABLE {table}'");
    let checksum_of = |out: &str| {
        out.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let (_, out) = lab.try_ssh(
        "db",
        &format!(
            "{}; sudo grep -h 'InnoDB: Using' /var/log/mariadb.log",
            checksum_cmd("shop.products")
        ),
    );
    let primary = checksum_of(&out);
    mariadb_crc_check(&lab, &mut c, "db", &out);
    c.check(
        primary.parse::<u64>().is_ok_and(|n| n > 0),
        "the primary's checksum",
        &out,
    );
    let out = eventually(
        &lab,
        "backup",
        &checksum_cmd("shop.products"),
        |out| checksum_of(out) == primary,
        Budget::scaled(Duration::from_secs(60)),
    );
    c.check(
        checksum_of(&out) == primary,
        "the replica's checksum is the primary's",
        &format!("{out} (primary {primary})"),
    );
    // How the test knows the backup's connections use TLS with a verified certificate:
    // the server's backup account is REQUIRE SSL (a plain connection is refused, checked
    // here too), the replica's status says SSL with the certificate checked (above), and
    // the same settings given another CA fail the certificate check, so the check is made.
    let (ok, err) = lab.try_ssh(
        "backup",
        "sudo mariadb --defaults-extra-file=/etc/lab/backup.cnf \
         --ssl-ca=/etc/ssl/certs/ca-certificates.crt -e 'SELECT 1'",
    );
    c.check(
        !ok && err.to_lowercase().contains("certificate"),
        "backup's settings with another CA fail the certificate check",
        &err,
    );
    let (ok, err) = lab.try_ssh(
        "backup",
        "mariadb --no-defaults --skip-ssl -h db -u backup -pbackup-secret -e 'SELECT 1'",
    );
    c.check(
        !ok && (err.contains("Access denied") || err.contains("insecure transport")),
        "backup's account is refused without TLS",
        &err,
    );
    // The backup account reads but cannot write.
    let (ok, err) = lab.try_ssh(
        "backup",
        "sudo mariadb --defaults-extra-file=/etc/lab/backup.cnf -e 'DELETE FROM shop.products'",
    );
    c.check(
        !ok && err.contains("denied"),
        "the backup account cannot write",
        &err,
    );
    // A dump on demand, on the dumps disk, with the new row; and the scheduled ones.
    let (ok, file) = lab.try_ssh("backup", "sudo db-backup");
    let file = file.trim();
    c.check(
        ok && file.starts_with("/var/backups/db/shop-"),
        "db-backup names its dump",
        file,
    );
    let (_, dump) = lab.try_ssh("backup", &format!("sudo cat {file}"));
    c.check(dump.contains("'juice'"), "the dump has the new row", "");
    // The dump restores: into a scratch database on the backup VM (its USE and CREATE
    // DATABASE lines dropped), with the primary's checksum.
    let (ok, out) = lab.try_ssh(
        "backup",
        &format!(
            "set -e; sudo mariadb -e 'DROP DATABASE IF EXISTS scratch; CREATE DATABASE scratch'; \
             sudo sed -e '/^CREATE DATABASE/d' -e '/^USE /d' {file} | sudo mariadb scratch; \
             {}",
            checksum_cmd("scratch.products")
        ),
    );
    c.check(
        ok && checksum_of(&out) == primary,
        "the restored dump's checksum is the primary's",
        &format!("{out} (primary {primary})"),
    );
    let (_, mount) = lab.try_ssh("backup", "findmnt -n -o SOURCE --target /var/backups/db");
    c.check(
        mount.trim() == "/dev/vdb",
        "the dumps are on their own disk",
        &mount,
    );
    let (_, dumps) = lab.try_ssh("backup", "ls /var/backups/db");
    c.check(
        dumps.lines().filter(|l| l.ends_with(".sql")).count() >= 2,
        "the timer's dump and the one on demand",
        &dumps,
    );
    c.finish();
}

#[test]
fn web_data_clients() {
    if !all_labs() {
        return;
    }
    let env = LabEnv::new("labweb");
    let _slots = CpuSlots::take(2);
    let (lab, _) = UpLab::up(&env, "web-data-clients", 4);
    let mut c = Checks(Vec::new());
    let (ok, added) = lab.try_ssh("client1", "notes add hello from client1");
    c.check(
        ok && added.contains("\"author\": \"10.40.0.31\""),
        "client1 adds a note through the web server",
        &added,
    );
    let (_, list) = lab.try_ssh("client2", "notes list");
    c.check(
        list.contains("The first note, made with the database.")
            && list.contains("hello from client1"),
        "client2 lists both notes",
        &list,
    );
    // The write made through the application is on the data server; the web server reads
    // it there with its own account (whose settings only root and www-data may read).
    let (_, n) = lab.try_ssh(
        "web",
        "sudo mariadb --defaults-extra-file=/etc/lab/notes.cnf -N -e \
         \"SELECT COUNT(*) FROM notes WHERE text = 'hello from client1'\"",
    );
    c.check(n.trim() == "1", "the note is on the data server", &n);
    let (_, out) = lab.try_ssh("data", "sudo grep -h 'InnoDB: Using' /var/log/mariadb.log");
    mariadb_crc_check(&lab, &mut c, "data", &out);
    // A client is turned away by the data server.
    let (ok, err) = lab.try_ssh(
        "client1",
        "mariadb -h data -u web -pweb-secret -e 'SELECT 1' notes",
    );
    c.check(
        !ok && err.contains("is not allowed to connect"),
        "a client connecting to the database is refused",
        &err,
    );
    // Both clients load the application at once; each reports its requests per second.
    // 20 requests each: on a PVM host every request costs the web VM a `mariadb` process and
    // the data VM a connection, about 25 s with both clients at it (50 took 23 minutes).
    const LOAD: usize = 20;
    let load_cmd = format!("notes load {LOAD}");
    let load_cmd = load_cmd.as_str();
    let lab = &lab;
    let loads: Vec<(bool, String)> = std::thread::scope(|s| {
        let runs: Vec<_> = ["client1", "client2"]
            .map(|vm| s.spawn(move || lab.try_ssh(vm, load_cmd)))
            .into_iter()
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (vm, (ok, load)) in ["client1", "client2"].iter().zip(&loads) {
        let rate = load
            .trim()
            .strip_prefix(&format!("{LOAD} requests in "))
            .and_then(|r| r.split(": ").nth(1))
            .and_then(|r| r.strip_suffix(" requests/s"))
            .and_then(|r| r.parse::<f64>().ok());
        c.check(
            *ok && rate.is_some_and(|r| r > 0.0),
            &format!("{vm}: {load_cmd} reports its rate"),
            load,
        );
        eprintln!("web-data-clients {vm}: {}", load.trim());
    }
    c.finish();
}
