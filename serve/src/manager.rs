//! The VMs: each one a child `minivmm` process, its state directory, its console, and its
//! life (created, running, paused, stopped, crashed).
//!
//! A VM's process is this same binary (`std::env::current_exe()`) with `--name`,
//! `--api-sock STATE/vms/NAME/api.sock`, `--serial stdio` and the flags of its
//! [`VmSpec`]; its stdin and stdout are pipes to the manager (the serial console), its
//! stderr goes to `minivmm.log` beside them. One watcher thread per run reads the console
//! into the VM's [`Console`] and, at the end of the output, reaps the process and records
//! how it ended. Everything else the manager asks of a running VM (pause, resume, the
//! power button, stop, counters) goes through that VM's own control API (the `api`
//! crate's client), exactly as `minivmm pause --api-sock ...` would.
//!
//! Processes are started by one long-lived thread (the spawner) with `PR_SET_PDEATHSIG`:
//! if the manager dies without stopping them (SIGKILL, a crash), the kernel sends each VM
//! SIGINT, which stops it at once and lets it remove its socket and taps. The death
//! signal follows the thread that forked, hence the one thread that outlives them all.
//!
//! Locks: `Manager::vms` (the name table) is only held to look up, insert or remove;
//! each VM's `op` serialises the actions on it (start, stop, pause, ..., delete), and is
//! held through the whole action, so a VM never sees two at once; `inner` is held only
//! for short updates and reads. Order: `vms` before `op` before `inner` before `stdin`.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::config::{CreateVm, Image, VmSpec};
use crate::console::Console;
use crate::stats::{Raw, Sample, HISTORY};

/// How long a starting VM has to answer on its API (its process built the VM and started
/// it) before the start is reported done anyway.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped VM's process has to exit before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Requests to a VM's own API (a pause waits for every vCPU and device to park).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// The most VMs one manager holds.
pub const MAX_VMS: usize = 64;
/// How long a console ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// The most tickets waiting at once (the oldest go first).
const MAX_TICKETS: usize = 256;

/// An answer other than success: a status code and one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The HTTP status.
    pub status: u16,
    /// The `error` text.
    pub message: String,
}

impl Failure {
    /// A failure with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Made, never started.
    Created,
    /// Its process runs the guest.
    Running,
    /// Its process runs, the guest is paused.
    Paused,
    /// Its process ended with exit code 0, or was stopped or killed by the manager.
    Stopped,
    /// Its process ended otherwise (a non-zero code, a signal the manager did not send).
    Crashed,
}

impl State {
    /// The name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Crashed => "crashed",
        }
    }

    /// Whether a process exists.
    pub fn alive(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

/// One run of a VM's process.
struct Run {
    child: Child,
    pid: u32,
    since: Instant,
    /// The manager killed it (SIGKILL): an ending by that signal is "stopped".
    killed: bool,
}

pub(crate) struct Inner {
    pub(crate) state: State,
    run: Option<Run>,
    /// Runs so far; a watcher only records the end of its own.
    pub(crate) runs: u64,
    exit_code: Option<i32>,
    /// Why the last run failed (minivmm's last line on stderr).
    message: Option<String>,
    /// Removed from the manager: never started again.
    deleted: bool,
    pub(crate) history: VecDeque<Sample>,
    pub(crate) last_raw: Option<Raw>,
}

/// One VM.
pub struct Vm {
    /// Its name.
    pub name: String,
    /// `STATE/vms/NAME`.
    pub dir: PathBuf,
    /// What it is made of.
    pub spec: VmSpec,
    /// Its console.
    pub console: Console,
    op: Mutex<()>,
    pub(crate) inner: Mutex<Inner>,
    ended: Condvar,
    stdin: Mutex<Option<ChildStdin>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vm {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Its API socket.
    pub fn api_sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// The pid and run number of its process, if it runs.
    pub(crate) fn process(&self) -> Option<(u32, u64, Instant)> {
        let g = self.lock();
        match (&g.run, g.state.alive()) {
            (Some(r), true) => Some((r.pid, g.runs, r.since)),
            _ => None,
        }
    }

    /// One request to the VM's own API; its JSON answer.
    pub fn api(&self, method: &str, path: &str, timeout: Duration) -> Result<Value, Failure> {
        match api::client::request(&self.api_sock(), method, path, None, timeout) {
            Ok(r) if r.ok() => Ok(r.body),
            Ok(r) => Err(Failure::new(
                if r.status == 409 { 409 } else { 500 },
                format!("VM '{}': {}", self.name, r.error_text()),
            )),
            Err(e) => {
                if !self.state().alive() {
                    return Err(self.not_alive(path.trim_start_matches("/vm/")));
                }
                Err(Failure::new(
                    500,
                    format!("VM '{}': its control API does not answer: {e}", self.name),
                ))
            }
        }
    }

    fn not_alive(&self, what: &str) -> Failure {
        Failure::new(
            409,
            format!(
                "VM '{}' is {}: cannot {what} it",
                self.name,
                self.state().name()
            ),
        )
    }

    /// Refuse `what` unless the VM is in one of `states`.
    fn require(&self, what: &str, states: &[State]) -> Result<(), Failure> {
        let s = self.state();
        if states.contains(&s) {
            Ok(())
        } else {
            Err(Failure::new(
                409,
                format!("cannot {what} VM '{}': it is {}", self.name, s.name()),
            ))
        }
    }

    /// Bytes typed on a console viewer, for the guest's serial port. Every Ctrl-A is
    /// doubled: the VM's process reads its stdin as a terminal, where Ctrl-A starts a
    /// console command (Ctrl-A x quits); a web viewer's keys all go to the guest.
    pub fn input(&self, bytes: &[u8]) {
        use std::io::Write;
        let mut out = Vec::with_capacity(bytes.len() + 4);
        for &b in bytes {
            out.push(b);
            if b == 0x01 {
                out.push(0x01);
            }
        }
        if let Some(stdin) = lock(&self.stdin).as_mut() {
            // A VM that ended meanwhile has closed the pipe: the input is dropped.
            let _ = stdin.write_all(&out);
        }
    }

    /// Wait up to `t` for the process to end; whether it has.
    fn wait_ended(&self, t: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .ended
            .wait_timeout_while(g, t, |g| g.run.is_some())
            .unwrap_or_else(|e| e.into_inner());
        g.run.is_none()
    }

    /// SIGKILL the process (the manager's doing: it ends "stopped").
    fn kill(&self) {
        if let Some(run) = self.lock().run.as_mut() {
            run.killed = true;
            // The child is not reaped while `run` holds it: the pid is still its own.
            let _ = run.child.kill();
        }
    }

    /// Stop the process now: the VM's `PUT /vm/stop` (it exits 0), SIGKILL after
    /// [`STOP_GRACE`]. Returns once it has ended (or could not be ended).
    fn stop_hard(&self) {
        if self.lock().run.is_none() {
            return;
        }
        if let Err(f) = self.api("PUT", "/vm/stop", STOP_GRACE) {
            log::info!("{}", f.message);
        }
        if !self.wait_ended(STOP_GRACE) {
            log::warn!(
                "VM '{}' did not stop in {STOP_GRACE:?}: killing it",
                self.name
            );
            self.kill();
            if !self.wait_ended(STOP_GRACE) {
                log::error!("VM '{}': its process does not end after SIGKILL", self.name);
            }
        }
    }

    /// Record how run `number` ended (called by its watcher once the process is reaped).
    fn ended(&self, g: &mut Inner, status: ExitStatus) {
        let killed = g.run.as_ref().is_some_and(|r| r.killed);
        g.run = None;
        let code = match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        };
        g.exit_code = Some(code);
        g.state = if code == 0 || (killed && status.signal() == Some(libc::SIGKILL)) {
            State::Stopped
        } else {
            State::Crashed
        };
        g.message = (g.state == State::Crashed).then(|| self.last_log_line(code));
        g.last_raw = None;
        *lock(&self.stdin) = None;
        // A killed process leaves its socket file; nobody listens there any more.
        let _ = std::fs::remove_file(self.api_sock());
        log::info!(
            "VM '{}' ended: {} (exit code {code})",
            self.name,
            g.state.name()
        );
        self.ended.notify_all();
    }

    /// The last line minivmm wrote to its log, without its `minivmm: ` prefix.
    fn last_log_line(&self, code: i32) -> String {
        let text = std::fs::read(self.dir.join("minivmm.log")).unwrap_or_default();
        let tail = &text[text.len().saturating_sub(4096)..];
        String::from_utf8_lossy(tail)
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("minivmm: ").to_string())
            .unwrap_or_else(|| format!("minivmm exited with code {code}"))
    }

    /// The VM as `GET /api/v1/vms/{name}` shows it.
    pub fn info(&self) -> Value {
        let g = self.lock();
        let alive = g.state.alive();
        let run = g.run.as_ref().filter(|_| alive);
        let round = |x: f64| (x * 10.0).round() / 10.0;
        let stats = g
            .history
            .back()
            .map_or_else(Sample::zero, Sample::stats_json);
        json!({
            "name": self.name,
            "state": g.state.name(),
            "pid": run.map(|r| r.pid),
            "exit_code": g.exit_code,
            "message": g.message,
            "uptime_s": run.map(|r| round(r.since.elapsed().as_secs_f64())),
            "cpus": self.spec.cpus,
            "memory_mib": self.spec.memory_mib,
            "image": self.spec.create.image,
            "config": serde_json::to_value(&self.spec.create).unwrap_or(Value::Null),
            "stats": stats,
            "history": g.history.iter().map(Sample::json).collect::<Vec<_>>(),
        })
    }

    /// Add a sample (see `stats.rs`) to run `number`'s history.
    pub(crate) fn push_sample(&self, number: u64, s: Sample, raw: Raw) {
        let mut g = self.lock();
        if g.runs != number || !g.state.alive() {
            return;
        }
        if g.history.len() == HISTORY {
            g.history.pop_front();
        }
        g.history.push_back(s);
        g.last_raw = Some(raw);
    }
}

/// Reads run `number`'s console until the process closes it, then reaps the process.
fn watch(vm: Arc<Vm>, mut out: ChildStdout, number: u64) {
    let mut buf = vec![0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => vm.console.append(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("VM '{}': reading its console: {e}", vm.name);
                break;
            }
        }
    }
    loop {
        let mut g = vm.lock();
        if g.runs != number {
            return;
        }
        let Some(run) = g.run.as_mut() else { return };
        match run.child.try_wait() {
            Ok(Some(status)) => {
                vm.ended(&mut g, status);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                log::error!("VM '{}': waiting for its process: {e}", vm.name);
                return;
            }
        }
        drop(g);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The thread that starts every VM process (see the module documentation).
struct Spawner {
    tx: Mutex<mpsc::Sender<(Command, mpsc::Sender<std::io::Result<Child>>)>>,
}

impl Spawner {
    fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<std::io::Result<Child>>)>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_tied(&mut cmd));
                }
            })?;
        Ok(Self { tx: Mutex::new(tx) })
    }

    fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (tx, rx) = mpsc::channel();
        let gone = || std::io::Error::other("the spawner thread is gone");
        lock(&self.tx).send((cmd, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

/// Start `cmd` so that it gets SIGINT when this thread (and so the manager) dies.
fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec; it only makes the
    // async-signal-safe system calls prctl and getppid, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGINT as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The manager died before the prctl: nobody would stop this VM.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the manager is gone"));
            }
            Ok(())
        })
    };
    cmd.spawn()
}

struct Ticket {
    value: String,
    vm: String,
    expires: Instant,
}

/// Compare two secrets in time that depends only on their lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// 16 random bytes from the kernel, as 32 hex digits.
pub fn random_hex() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Every VM, and what they share.
pub struct Manager {
    vms_dir: PathBuf,
    /// The images VMs may name.
    pub images: Vec<Image>,
    exe: PathBuf,
    cloud_init: bool,
    vms: Mutex<BTreeMap<String, Arc<Vm>>>,
    shutting_down: AtomicBool,
    spawner: Spawner,
    started: Instant,
    tickets: Mutex<Vec<Ticket>>,
}

impl Manager {
    /// A manager keeping its VMs under `vms_dir` (which must exist), starting `exe` for
    /// each; `cloud_init` says whether `exe` has `--cloud-init`.
    pub fn new(
        vms_dir: PathBuf,
        images: Vec<Image>,
        exe: PathBuf,
        cloud_init: bool,
    ) -> std::io::Result<Self> {
        Ok(Self {
            vms_dir,
            images,
            exe,
            cloud_init,
            vms: Mutex::new(BTreeMap::new()),
            shutting_down: AtomicBool::new(false),
            spawner: Spawner::start()?,
            started: Instant::now(),
            tickets: Mutex::new(Vec::new()),
        })
    }

    /// Every VM, by name.
    pub fn list(&self) -> Vec<Arc<Vm>> {
        lock(&self.vms).values().cloned().collect()
    }

    /// The VM called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Vm>, Failure> {
        lock(&self.vms)
            .get(name)
            .cloned()
            .ok_or_else(|| Failure::new(404, format!("no VM named '{name}'")))
    }

    /// Whether the manager is stopping.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// `POST /api/v1/vms`: check the body, make the VM's directory and files, and start
    /// it if asked. A VM that fails to start is removed again (nothing is left behind):
    /// 400 with the VM process's own message when it refused its input, 500 otherwise.
    pub fn create(&self, body: &[u8]) -> Result<Arc<Vm>, Failure> {
        let create: CreateVm = serde_json::from_slice(body)
            .map_err(|e| Failure::new(400, format!("bad request body: {e}")))?;
        let spec = VmSpec::check(create, &self.images, self.cloud_init)
            .map_err(|m| Failure::new(400, m))?;
        let name = spec.create.name.clone();
        let dir = self.vms_dir.join(&name);
        let mut vms = lock(&self.vms);
        if self.shutting_down() {
            return Err(Failure::new(503, "the manager is shutting down"));
        }
        if vms.contains_key(&name) {
            return Err(Failure::new(
                409,
                format!("a VM named '{name}' exists already"),
            ));
        }
        if vms.len() >= MAX_VMS {
            return Err(Failure::new(
                409,
                format!("this manager holds at most {MAX_VMS} VMs: delete one first"),
            ));
        }
        let host = |what: &str| {
            let what = format!("{what} {}", dir.display());
            move |e: std::io::Error| Failure::new(500, format!("{what}: {e}"))
        };
        // A directory left by a VM of this name that could not be removed: replaced.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(host("creating"))?;
        let made = (|| {
            let config = serde_json::to_vec_pretty(&spec.create).unwrap_or_default();
            std::fs::write(dir.join("config.json"), config)?;
            if let Some(u) = &spec.create.user_data {
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(dir.join("user-data"))?
                    .write_all(u.as_bytes())?;
            }
            Console::new(&dir)
        })();
        let console = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(host("writing the files of")(e));
            }
        };
        let start = spec.create.start;
        let vm = Arc::new(Vm {
            name: name.clone(),
            dir,
            spec,
            console,
            op: Mutex::new(()),
            inner: Mutex::new(Inner {
                state: State::Created,
                run: None,
                runs: 0,
                exit_code: None,
                message: None,
                deleted: false,
                history: VecDeque::new(),
                last_raw: None,
            }),
            ended: Condvar::new(),
            stdin: Mutex::new(None),
        });
        vms.insert(name, vm.clone());
        // Taken before the table is let go: a shutdown that finds this VM waits for its
        // start to finish, then stops it.
        let op = lock(&vm.op);
        drop(vms);
        if start {
            if let Err(f) = self.start_locked(&vm) {
                self.discard(&vm);
                return Err(f);
            }
        }
        drop(op);
        log::info!("VM '{}' created", vm.name);
        Ok(vm)
    }

    /// Start `vm`'s process (its `op` lock held) and wait until its API answers.
    fn start_locked(&self, vm: &Arc<Vm>) -> Result<(), Failure> {
        if self.shutting_down() {
            return Err(Failure::new(503, "the manager is shutting down"));
        }
        if vm.lock().deleted {
            return Err(Failure::new(404, format!("no VM named '{}'", vm.name)));
        }
        vm.require("start", &[State::Created, State::Stopped, State::Crashed])?;
        let host = |what: &'static str| {
            let name = vm.name.clone();
            move |e: std::io::Error| Failure::new(500, format!("VM '{name}': {what}: {e}"))
        };
        let log = std::fs::File::create(vm.dir.join("minivmm.log")).map_err(host("its log"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(vm.spec.argv(&vm.dir))
            .current_dir(&vm.dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = self
            .spawner
            .spawn(cmd)
            .map_err(host("starting its minivmm process"))?;
        let out = child.stdout.take();
        *lock(&vm.stdin) = child.stdin.take();
        let number = {
            let mut g = vm.lock();
            g.runs += 1;
            g.run = Some(Run {
                pid: child.id(),
                child,
                since: Instant::now(),
                killed: false,
            });
            g.state = State::Running;
            g.exit_code = None;
            g.message = None;
            g.history.clear();
            g.last_raw = None;
            g.runs
        };
        if let Some(out) = out {
            let w = vm.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("console-{}", vm.name))
                .stack_size(64 * 1024)
                .spawn(move || watch(w, out, number));
            if let Err(e) = spawned {
                vm.kill();
                vm.wait_ended(STOP_GRACE);
                return Err(host("a thread for its console")(e));
            }
        }
        log::info!("VM '{}' started", vm.name);
        // Until its API answers, the process may still refuse its input (a kernel that
        // does not load, a locked disk): that is the caller's 400, in minivmm's words.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            {
                let g = vm.lock();
                if g.runs != number || g.run.is_none() {
                    let code = g.exit_code.unwrap_or(-1);
                    let msg = g
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("minivmm exited with code {code}"));
                    return Err(Failure::new(if code == 2 { 400 } else { 500 }, msg));
                }
            }
            let probe =
                api::client::request(&vm.api_sock(), "GET", "/vm", None, Duration::from_secs(2));
            if probe.is_ok_and(|r| r.ok()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                log::warn!(
                    "VM '{}': its API has not answered within {START_TIMEOUT:?}",
                    vm.name
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `PUT /api/v1/vms/{name}/{action}`.
    pub fn act(&self, vm: &Arc<Vm>, action: &str) -> Result<(), Failure> {
        let _op = lock(&vm.op);
        match action {
            "start" => self.start_locked(vm),
            "pause" => {
                vm.require("pause", &[State::Running])?;
                vm.api("PUT", "/vm/pause", API_TIMEOUT)?;
                let mut g = vm.lock();
                if g.state == State::Running {
                    g.state = State::Paused;
                }
                Ok(())
            }
            "resume" => {
                vm.require("resume", &[State::Paused])?;
                vm.api("PUT", "/vm/resume", API_TIMEOUT)?;
                let mut g = vm.lock();
                if g.state == State::Paused {
                    g.state = State::Running;
                }
                Ok(())
            }
            "power-button" => {
                vm.require("press the power button of", &[State::Running])?;
                vm.api("PUT", "/vm/power-button", API_TIMEOUT).map(drop)
            }
            "stop" => {
                vm.require("stop", &[State::Running, State::Paused])?;
                vm.stop_hard();
                Ok(())
            }
            "kill" => {
                vm.require("kill", &[State::Running, State::Paused])?;
                vm.kill();
                vm.wait_ended(STOP_GRACE);
                Ok(())
            }
            _ => Err(Failure::new(404, format!("no such action: {action}"))),
        }
    }

    /// `DELETE /api/v1/vms/{name}`: stop it hard if it runs, forget it, remove its
    /// directory.
    pub fn delete(&self, name: &str) -> Result<(), Failure> {
        let vm = self.get(name)?;
        let _op = lock(&vm.op);
        if vm.lock().deleted {
            return Err(Failure::new(404, format!("no VM named '{name}'")));
        }
        self.discard(&vm);
        if vm.dir.exists() {
            return Err(Failure::new(
                500,
                format!(
                    "VM '{name}' is gone, but {} could not be removed",
                    vm.dir.display()
                ),
            ));
        }
        log::info!("VM '{name}' deleted");
        Ok(())
    }

    /// Stop `vm`, take it out of the table, close its viewers and tickets, remove its
    /// directory (its `op` lock held).
    fn discard(&self, vm: &Arc<Vm>) {
        vm.stop_hard();
        vm.lock().deleted = true;
        {
            let mut vms = lock(&self.vms);
            if vms.get(&vm.name).is_some_and(|v| Arc::ptr_eq(v, vm)) {
                vms.remove(&vm.name);
            }
        }
        vm.console.close_viewers();
        lock(&self.tickets).retain(|t| t.vm != vm.name);
        if let Err(e) = std::fs::remove_dir_all(&vm.dir) {
            log::error!("removing {}: {e}", vm.dir.display());
        }
    }

    /// `POST /api/v1/vms/{name}/console-ticket`: a single-use ticket for `vm`'s console
    /// WebSocket, valid [`TICKET_TTL`].
    pub fn ticket(&self, vm: &Vm) -> Result<String, Failure> {
        let value =
            random_hex().map_err(|e| Failure::new(500, format!("reading /dev/urandom: {e}")))?;
        let mut t = lock(&self.tickets);
        let now = Instant::now();
        t.retain(|t| t.expires > now);
        if t.len() >= MAX_TICKETS {
            t.remove(0);
        }
        t.push(Ticket {
            value: value.clone(),
            vm: vm.name.clone(),
            expires: now + TICKET_TTL,
        });
        Ok(value)
    }

    /// Use up `ticket`: whether it was issued for VM `name` and is still valid.
    pub fn redeem(&self, ticket: &str, name: &str) -> bool {
        let mut t = lock(&self.tickets);
        let now = Instant::now();
        t.retain(|t| t.expires > now);
        match t.iter().position(|t| same_secret(&t.value, ticket)) {
            Some(i) => t.remove(i).vm == name,
            None => false,
        }
    }

    /// `GET /api/v1/manager`.
    pub fn info(&self) -> Value {
        let vms = self.list();
        let running = vms.iter().filter(|v| v.state().alive()).count();
        json!({
            "pid": std::process::id(),
            "rss_bytes": crate::stats::rss_bytes(std::process::id()).unwrap_or(0),
            "uptime_s": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "vms": vms.len(),
            "running": running,
        })
    }

    /// Stop every VM (in parallel: each as `stop` does, SIGKILL after [`STOP_GRACE`]),
    /// close their viewers, remove their directories. New VMs and starts are refused from
    /// the first moment.
    pub fn shutdown(&self) {
        {
            let _vms = lock(&self.vms);
            self.shutting_down.store(true, Ordering::SeqCst);
        }
        let all = self.list();
        std::thread::scope(|s| {
            for vm in &all {
                s.spawn(move || {
                    let _op = lock(&vm.op);
                    vm.stop_hard();
                    vm.console.close_viewers();
                });
            }
        });
        for vm in &all {
            if let Err(e) = std::fs::remove_dir_all(&vm.dir) {
                log::error!("removing {}: {e}", vm.dir.display());
            }
        }
    }

    /// Unix time now, in seconds.
    pub fn unix_now() -> f64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// `dir` exists and is a directory only this user can enter.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        let a = random_hex().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex().unwrap());
    }
}
