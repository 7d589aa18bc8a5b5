//! `minivmm up LAB`: from a lab file to running, ready VMs.
//!
//! 1. Read and check the lab file, then check it against the host (a bridge name taken by
//!    an interface this lab did not make, a control socket path too long for a Unix
//!    socket, a missing host tool). Any problem: one line each, exit 2, nothing created.
//! 2. Under the lab's lock: copy the lab file into the state directory, make the keys (lab
//!    key, host keys, `known_hosts`) and, if asked for, the CA and certificates; create the
//!    bridges (recorded before they are made, so `down` finds them whatever happens next).
//! 3. Start the VMs in file order, at most `jobs` vCPUs booting at once: each gets its own
//!    sparse (or reflinked) copy of its base image, its extra disks, a fresh seed, and a
//!    keeper ([`crate::keeper`]) that runs its minivmm.
//! 4. Wait until each prints cloud-init's final message (or the Debian image's "boot
//!    finished") on its console, or its minivmm ends, or `timeout` passes; write `ready`
//!    with the time it took.
//!
//! Running it again changes nothing that runs: VMs that are up are left alone (and shown
//! as such), VMs that are down or crashed are started again with the disks they have, and
//! VMs still booting (a killed `up`) are waited for. A lab that is up from a different
//! lab file is refused: `down` it first.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::keeper::Launch;
use crate::seed::{HostKey, Secrets, ServerCert, READY_MARKER};
use crate::state::{boot_id, write_atomic, LabDir, VmDir, VmState};
use crate::validate::{self, Lab, Problem, Problems, Vm};
use crate::Error;

/// The file `down` leaves in the lab's directory: an `up` that is still waiting starts no
/// more VMs.
pub const DOWN_MARK: &str = "down-requested";

/// Longest Unix socket path (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How `up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// How long each VM may take to become ready, from its start.
    pub timeout: Duration,
    /// At most this many vCPUs boot at once (0: the host's core count).
    pub jobs: usize,
    /// The minivmm binary the VMs run (normally this one).
    pub minivmm: PathBuf,
    /// Told each step as it happens (a VM started, ready, failed), one line each.
    pub progress: fn(&str),
}

/// One line of the table `up` prints.
#[derive(Clone, Debug)]
pub struct VmResult {
    /// The VM.
    pub name: String,
    /// Its first address.
    pub address: String,
    /// What happened.
    pub state: String,
    /// Seconds from its start to ready (or to the end of waiting).
    pub seconds: Option<f64>,
    /// Whether it is up and ready.
    pub ok: bool,
}

/// What `up` did.
#[derive(Clone, Debug)]
pub struct UpReport {
    /// The lab.
    pub lab: String,
    /// One per VM, in file order.
    pub vms: Vec<VmResult>,
    /// Wall time of the whole command.
    pub seconds: f64,
}

impl UpReport {
    /// The table.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "VM".to_string(),
            "ADDRESS".to_string(),
            "STATE".to_string(),
            "TOOK".to_string(),
        ]];
        for v in &self.vms {
            rows.push([
                v.name.clone(),
                v.address.clone(),
                v.state.clone(),
                v.seconds.map_or("-".into(), |s| format!("{s:.0} s")),
            ]);
        }
        let mut out = crate::ls::format_table(&rows);
        out.push_str(&format!(
            "lab {}: {} of {} VMs ready ({:.0} s)\n",
            self.lab,
            self.vms.iter().filter(|v| v.ok).count(),
            self.vms.len(),
            self.seconds
        ));
        out
    }
}

/// Whether `prog` can be found on `PATH`.
fn have_tool(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Check the lab against this host; problems are reported like the lab file's own.
fn host_problems(lab: &Lab, ld: &LabDir) -> Vec<Problem> {
    let mut list = Vec::new();
    let ours = ld.bridges();
    for (i, n) in lab.networks.iter().enumerate() {
        if vmm::network::interface_exists(&n.name) && !ours.contains(&n.name) {
            list.push(Problem {
                key: format!("network[{i}].name"),
                message: format!(
                    "an interface named {} exists on this host and this lab did not make it",
                    n.name
                ),
            });
        }
    }
    for (i, vm) in lab.vms.iter().enumerate() {
        let sock = ld.vm(&vm.name).api_sock();
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            list.push(Problem {
                key: format!("vm[{i}].name"),
                message: format!(
                    "the control socket {} is longer than a Unix socket path may be ({} bytes): \
                     use a shorter state directory",
                    sock.display(),
                    MAX_SOCKET_PATH
                ),
            });
        }
    }
    let mut tools = vec!["ssh-keygen", "cp"];
    if lab.has_ca() {
        tools.push("openssl");
    }
    if lab.vms.iter().any(|v| v.disks.iter().any(|d| d.ext4)) {
        tools.push("mkfs.ext4");
    }
    for t in tools {
        if !have_tool(t) {
            list.push(Problem {
                key: String::new(),
                message: format!("{t} is not installed on this host (needed to make the lab)"),
            });
        }
    }
    list
}

/// `up`: see the module docs.
pub fn up(lab_arg: &str, opts: &UpOptions) -> Result<UpReport, Error> {
    let t0 = Instant::now();
    let path = crate::lab_file(lab_arg)?;
    let lab = validate::load(&path).map_err(Error::BadLab)?;
    let ld = LabDir::new(&opts.state_dir, &lab.name);
    let problems = host_problems(&lab, &ld);
    if !problems.is_empty() {
        return Err(Error::BadLab(Problems {
            file: path,
            list: problems,
        }));
    }
    // Up from another lab file: nothing may change while any of its VMs runs.
    let copy = ld.file("lab.toml");
    if let Some(old) = crate::state::read(&copy) {
        let running: Vec<String> = ld
            .vm_names()
            .into_iter()
            .filter(|v| ld.vm(v).pid().is_some())
            .collect();
        if old != lab.source && !running.is_empty() {
            return Err(Error::BadInput(format!(
                "lab {} is up ({}) from a different lab file: run `minivmm down {}` first",
                lab.name,
                running.join(", "),
                lab.name
            )));
        }
    }
    std::fs::create_dir_all(&opts.state_dir).map_err(Error::io(&opts.state_dir))?;
    // The lock is held while things are made and started, not while up waits: down may
    // run meanwhile (and then up starts no more VMs).
    let lock = ld.lock().map_err(Error::io(&ld.file("lock")))?;
    let _ = std::fs::remove_file(ld.file(DOWN_MARK));
    write_atomic(&copy, lab.source.as_bytes()).map_err(Error::io(&copy))?;
    let src = ld.file("source");
    write_atomic(&src, lab.file.display().to_string().as_bytes()).map_err(Error::io(&src))?;

    let secrets = make_keys(&lab, &ld)?;
    for n in &lab.networks {
        if !vmm::network::bridge_exists(&n.name) {
            ld.add_bridge(&n.name)
                .map_err(Error::io(&ld.file("bridges")))?;
            vmm::network::create_bridge(&n.name, n.host.map(|h| (h, n.prefix)))
                .map_err(|e| Error::Network(format!("network {}: {e}", n.name)))?;
        }
    }

    drop(lock);
    let jobs = if opts.jobs == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.jobs
    };
    let mut results: Vec<Option<VmResult>> = vec![None; lab.vms.len()];
    let mut pending: VecDeque<usize> = VecDeque::new();
    let mut booting: Vec<Booting> = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        let vd = ld.vm(&vm.name);
        match vd.state() {
            VmState::Running => {
                results[i] = Some(VmResult {
                    name: vm.name.clone(),
                    address: address(vm),
                    state: "running (was up)".into(),
                    seconds: vd.ready_after(),
                    ok: true,
                })
            }
            VmState::Booting => {
                (opts.progress)(&format!("{}: booting already, waiting for it", vm.name));
                booting.push(Booting::resume(i, vd))
            }
            _ => pending.push_back(i),
        }
    }
    loop {
        // Start what fits: at least one VM boots, and at most `jobs` vCPUs.
        while let Some(&i) = pending.front() {
            let busy: usize = booting
                .iter()
                .map(|b| usize::from(lab.vms[b.index].cpus))
                .sum();
            if !booting.is_empty() && busy + usize::from(lab.vms[i].cpus) > jobs {
                break;
            }
            pending.pop_front();
            let vm = &lab.vms[i];
            let vd = ld.vm(&vm.name);
            let lock = ld.lock().map_err(Error::io(&ld.file("lock")))?;
            let started = if ld.file(DOWN_MARK).exists() {
                Err(Error::BadInput("the lab is being taken down".into()))
            } else {
                start(&lab, vm, &vd, &secrets, opts)
            };
            drop(lock);
            match started {
                Ok(()) => {
                    (opts.progress)(&format!(
                        "{}: started (minivmm console {}/{} shows its boot)",
                        vm.name, lab.name, vm.name
                    ));
                    booting.push(Booting::resume(i, vd));
                }
                Err(e) => {
                    results[i] = Some(VmResult {
                        name: vm.name.clone(),
                        address: address(vm),
                        state: format!("not started: {e}"),
                        seconds: None,
                        ok: false,
                    })
                }
            }
        }
        if booting.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        let mut still = Vec::new();
        for mut b in booting {
            let vm = &lab.vms[b.index];
            if let Some(r) = b.poll(vm, opts.timeout) {
                (opts.progress)(&format!(
                    "{}: {} after {:.0} s",
                    vm.name,
                    r.state,
                    r.seconds.unwrap_or(0.0)
                ));
                results[b.index] = Some(r);
            } else {
                still.push(b);
            }
        }
        booting = still;
    }
    let report = UpReport {
        lab: lab.name.clone(),
        vms: results.into_iter().flatten().collect(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok(report)
}

/// A VM's first address, for the table.
fn address(vm: &Vm) -> String {
    vm.nics
        .first()
        .map_or("-".into(), |n| n.address.to_string())
}

/// The lab key, host keys, `known_hosts`, CA and certificates; returns what the seeds need.
fn make_keys(lab: &Lab, ld: &LabDir) -> Result<Secrets, Error> {
    let key = ld.file("key");
    crate::keys::ssh_key(&key, &format!("minivmm-lab-{}", lab.name))?;
    let mut known = String::new();
    for vm in &lab.vms {
        let vd = ld.vm(&vm.name);
        std::fs::create_dir_all(&vd.path).map_err(Error::io(&vd.path))?;
        let hk = vd.file("ssh_host_ed25519_key");
        crate::keys::ssh_key(&hk, &format!("root@{}", vm.name))?;
        let public = read_text(&crate::keys::pub_path(&hk))?;
        let mut names = vec![vm.name.clone()];
        names.extend(vm.nics.iter().map(|n| n.address.to_string()));
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        known.push_str(&format!("{} {kind} {blob}\n", names.join(",")));
    }
    let kh = ld.file("known_hosts");
    write_atomic(&kh, known.as_bytes()).map_err(Error::io(&kh))?;
    let ca_cert = if lab.has_ca() {
        crate::keys::ca(&ld.path, &lab.name)?;
        for vm in lab.vms.iter().filter(|v| v.certificate) {
            crate::keys::server_cert(&ld.path, &ld.vm(&vm.name).path, vm)?;
        }
        Some(read_text(&ld.file("ca.crt"))?)
    } else {
        None
    };
    Ok(Secrets {
        lab_public: read_text(&crate::keys::pub_path(&key))?,
        lab_private: read_text(&key)?,
        known_hosts: known,
        ca_cert,
    })
}

fn read_text(p: &Path) -> Result<String, Error> {
    std::fs::read_to_string(p).map_err(Error::io(p))
}

/// Copy `from` to `to` sparsely (or as a reflink where the file system can), through a
/// temporary name.
fn copy_image(from: &Path, to: &Path) -> Result<(), Error> {
    let tmp = to.with_extension("img.tmp");
    let out = Command::new("cp")
        .args(["--reflink=auto", "--sparse=always"])
        .arg(from)
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Tool(format!("cp: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Tool(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, to).map_err(Error::io(to))
}

/// An empty sparse disk of `size` bytes, with an ext4 file system labelled `label` if asked.
fn make_disk(to: &Path, size: u64, ext4: Option<&str>) -> Result<(), Error> {
    let tmp = to.with_extension("img.tmp");
    let f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.set_len(size).map_err(Error::io(&tmp))?;
    drop(f);
    if let Some(label) = ext4 {
        let out = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                label,
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ])
            .arg(&tmp)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Tool(format!("mkfs.ext4: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Tool(format!(
                "mkfs.ext4 {}: {}",
                to.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    std::fs::rename(&tmp, to).map_err(Error::io(to))
}

/// The minivmm arguments of `vm`.
pub fn vm_args(lab: &Lab, vm: &Vm, vd: &VmDir) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    let mut a = vec!["--kernel".to_string(), p(&vm.kernel)];
    if let Some(i) = &vm.initrd {
        a.extend(["--initrd".into(), p(i)]);
    }
    if vm.base_disk.is_some() {
        a.extend(["--disk".into(), p(&vd.file("disk.img"))]);
    }
    for d in &vm.disks {
        a.extend([
            "--disk".into(),
            format!(
                "{},serial={}",
                p(&vd.file(&format!("{}.img", d.name))),
                d.name
            ),
        ]);
    }
    a.extend(["--cloud-init".into(), p(&vd.file("seed"))]);
    a.extend(["--name".into(), vm.name.clone()]);
    a.extend(["--memory".into(), format!("{}M", vm.memory >> 20)]);
    a.extend(["--cpus".into(), vm.cpus.to_string()]);
    for n in &vm.nics {
        a.extend([
            "--net".into(),
            format!("bridge={},mac={}", n.network, validate::format_mac(&n.mac)),
        ]);
    }
    // Interfaces keep the kernel's names (eth0, ...), which network-config names.
    let mut cmdline = "net.ifnames=0".to_string();
    if let Some(c) = &vm.cmdline {
        cmdline.push(' ');
        cmdline.push_str(c);
    }
    a.extend(["--cmdline".into(), cmdline]);
    a.extend(["--serial".into(), "stdio".into()]);
    a.extend(["--api-sock".into(), p(&vd.api_sock())]);
    // down stops a VM hard itself after its own timeout; this is the backstop.
    a.extend(["--shutdown-timeout".into(), "600s".into()]);
    a.extend(["--log-level".into(), "info".into()]);
    let _ = lab;
    a
}

/// Make what `vm` needs that is missing, write its seed, and start its keeper.
fn start(lab: &Lab, vm: &Vm, vd: &VmDir, secrets: &Secrets, opts: &UpOptions) -> Result<(), Error> {
    std::fs::create_dir_all(&vd.path).map_err(Error::io(&vd.path))?;
    if let Some(base) = &vm.base_disk {
        let disk = vd.file("disk.img");
        if !disk.exists() {
            copy_image(base, &disk)?;
        }
    }
    for d in &vm.disks {
        let f = vd.file(&format!("{}.img", d.name));
        if !f.exists() {
            make_disk(&f, d.size, d.ext4.then_some(d.name.as_str()))?;
        }
    }
    // The seed, fresh for every start.
    let hk = vd.file("ssh_host_ed25519_key");
    let host_key = HostKey {
        private: read_text(&hk)?,
        public: read_text(&crate::keys::pub_path(&hk))?,
    };
    let cert = if vm.certificate {
        Some(ServerCert {
            cert: read_text(&vd.file("server.crt"))?,
            key: read_text(&vd.file("server.key"))?,
        })
    } else {
        None
    };
    let seed = vd.file("seed");
    std::fs::create_dir_all(&seed).map_err(Error::io(&seed))?;
    let lab_part = crate::seed::lab_cloud_config(lab, vm, secrets, &host_key, cert.as_ref());
    for (name, text) in [
        (
            "user-data",
            crate::seed::user_data(&lab_part, vm.user_data.as_deref()),
        ),
        ("meta-data", crate::seed::meta_data(lab, vm)),
        ("network-config", crate::seed::network_config(vm)),
    ] {
        let f = seed.join(name);
        write_atomic(&f, text.as_bytes()).map_err(Error::io(&f))?;
    }
    let fifo = vd.file("console.in");
    if !fifo.exists() {
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::BadInput(format!("{}: a NUL in the path", fifo.display())))?;
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(Error::io(&fifo)(std::io::Error::last_os_error()));
        }
    }
    let launch = Launch {
        minivmm: opts.minivmm.display().to_string(),
        args: vm_args(lab, vm, vd),
    };
    let cfg = vd.file("config.json");
    write_atomic(
        &cfg,
        serde_json::to_string_pretty(&launch)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(Error::io(&cfg))?;
    for stale in ["exit", "ready", "stopping", "pid", "keeper.pid"] {
        let _ = std::fs::remove_file(vd.file(stale));
    }
    let console_len = std::fs::metadata(vd.file("console.log")).map_or(0, |m| m.len());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let started = vd.file("started");
    write_atomic(
        &started,
        format!("{}\n{now:.3}\n{console_len}\n", boot_id()).as_bytes(),
    )
    .map_err(Error::io(&started))?;
    let mut cmd = Command::new(&opts.minivmm);
    cmd.arg("lab-keeper")
        .arg(&vd.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches only the new process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::Tool(format!("starting the keeper of {}: {e}", vm.name)))?;
    let kp = vd.file("keeper.pid");
    write_atomic(&kp, child.id().to_string().as_bytes()).map_err(Error::io(&kp))?;
    // The keeper is not ours to wait for (dropping the handle neither waits nor kills):
    // once up exits, init reaps it.
    drop(child);
    Ok(())
}

/// A VM `up` waits for.
struct Booting {
    index: usize,
    vd: VmDir,
    /// When it was started (wall clock, seconds since the epoch).
    started: f64,
    /// How far console.log has been searched.
    pos: u64,
}

impl Booting {
    fn resume(index: usize, vd: VmDir) -> Self {
        let started = crate::state::read(&vd.file("started"))
            .and_then(|s| s.lines().nth(1).and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(now_secs);
        let pos = vd.console_offset();
        Self {
            index,
            vd,
            started,
            pos,
        }
    }

    /// Whether the VM has said it is ready in console.log since `pos`: the lab's
    /// `final_message` ([`READY_MARKER`]), or the line minivmm's Debian image prints once
    /// cloud-init's final stage and its services are done ([`BOOT_FINISHED`]). That image
    /// sends cloud-init's output, the final message included, to a log file, not to the
    /// console (a `tee` per stage costs seconds on PVM hosts).
    fn saw_marker(&mut self, vm: &Vm) -> bool {
        let needles = [
            format!("{READY_MARKER} {} after ", vm.name),
            BOOT_FINISHED.to_string(),
        ];
        let Ok(mut f) = std::fs::File::open(self.vd.file("console.log")) else {
            return false;
        };
        let longest = needles.iter().map(String::len).max().unwrap_or(0);
        let from = self.pos.saturating_sub(longest as u64);
        if f.seek(SeekFrom::Start(from)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return false;
        }
        self.pos = from + buf.len() as u64;
        needles
            .iter()
            .any(|n| buf.windows(n.len()).any(|w| w == n.as_bytes()))
    }

    /// The VM's result once it is ready, has ended or has run out of time.
    fn poll(&mut self, vm: &Vm, timeout: Duration) -> Option<VmResult> {
        let took = now_secs() - self.started;
        let result = |state: String, ok| VmResult {
            name: vm.name.clone(),
            address: address(vm),
            state,
            seconds: Some(took),
            ok,
        };
        if self.saw_marker(vm) {
            let f = self.vd.file("ready");
            if let Err(e) = write_atomic(&f, format!("{took:.1}\n").as_bytes()) {
                log::warn!("{}: {e}", f.display());
            }
            return Some(result("running".into(), true));
        }
        match self.vd.state() {
            VmState::Booting | VmState::Running => {}
            other => {
                let tail = last_line(&self.vd.file("minivmm.log"));
                return Some(result(format!("{other}: {tail}"), false));
            }
        }
        if took > timeout.as_secs_f64() {
            return Some(result(
                format!(
                    "not ready after {:.0} s (still booting: see {})",
                    timeout.as_secs_f64(),
                    self.vd.file("console.log").display()
                ),
                false,
            ));
        }
        None
    }
}

/// The console line with which the Debian server image's init (vminit) ends a boot, after
/// cloud-init's final stage (resources/guest/README.md).
const BOOT_FINISHED: &str = "vminit: boot finished: ";

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The last non-empty line of a log file (why a VM ended).
fn last_line(p: &Path) -> String {
    crate::state::read(p)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}
