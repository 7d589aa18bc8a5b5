//! `minivmm serve`: a manager for many VMs, with a REST API under `/api/v1` and a web page
//! (consoles in the browser), on a loopback address only. How it works and its security
//! model: `docs/serve.md`; the API in OpenAPI 3: `docs/serve-api.json`.
//!
//! Only this crate knows TCP, HTTP routing, WebSockets and the browser; each VM is a
//! child `minivmm` process with its own control API (the `api` crate), which the manager
//! is a client of.
//!
//! | module | owns |
//! |---|---|
//! | [`manager`] | the VMs: their processes, state directories, life and actions |
//! | [`config`] | the body that creates a VM, its checks, the images |
//! | [`console`] | each VM's console: `console.log`, scrollback, viewers |
//! | [`stats`] | the 1 s sampler: CPU, memory, disk and network rates |
//! | [`server`] | connections, and the Host / Origin / token checks |
//! | [`rest`] | the REST endpoints |
//! | [`http`] | one request in, one response out (the `api` crate's parser) |
//! | [`websocket`] | the console's WebSocket framing |
//! | [`assets`] | the embedded web page |
//! | [`signals`] | SIGINT / SIGTERM / SIGHUP as a file descriptor |
#![deny(missing_docs)]

pub mod assets;
pub mod config;
pub mod console;
pub mod http;
pub mod manager;
pub mod rest;
pub mod server;
pub mod signals;
pub mod stats;
pub mod websocket;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `minivmm serve`'s options.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `--listen`: a loopback address and port (`127.0.0.1:8080`; port 0 picks one).
    pub listen: String,
    /// `--state-dir` (default: `$MINIVMM_STATE_DIR`, `/run/minivmm` as root,
    /// `$XDG_RUNTIME_DIR/minivmm` otherwise).
    pub state_dir: Option<PathBuf>,
    /// `--guest-dir`: the built test guest (default: `$MINIVMM_TEST_GUEST`, else the
    /// newest complete build under `~/.cache/minivmm/guest/`).
    pub guest_dir: Option<PathBuf>,
    /// Whether this `minivmm` has `--cloud-init` (for `user_data`).
    pub cloud_init: bool,
}

/// Why the manager could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `--listen` cannot be used.
    #[error("--listen {0}: {1}")]
    Listen(String, String),
    /// The state directory cannot be used.
    #[error("--state-dir {0}: {1}")]
    StateDir(String, String),
    /// The guest directory has no test guest.
    #[error("--guest-dir {0}: {1}")]
    GuestDir(String, String),
    /// The host failed.
    #[error("{0}: {1}")]
    Host(&'static str, #[source] std::io::Error),
}

impl ServeError {
    /// Whether the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ServeError::Host(..))
    }
}

/// The longest Unix socket path (`sun_path` less its NUL).
const SOCKET_PATH_MAX: usize = 107;

/// `--listen`: a loopback address only (`localhost:PORT` means `127.0.0.1:PORT`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, ServeError> {
    let bad = |why: &str| ServeError::Listen(s.to_string(), why.to_string());
    let addr: SocketAddr = match s.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}").parse(),
        None => s.parse(),
    }
    .map_err(|_| bad("expected a loopback address and port, e.g. 127.0.0.1:8080"))?;
    if !addr.ip().is_loopback() {
        return Err(bad(
            "only loopback addresses (127.0.0.0/8, ::1) are accepted: the manager starts VMs \
             for whoever holds its token, and must not be reachable from other machines",
        ));
    }
    Ok(addr)
}

/// The default state directory.
fn default_state_dir() -> Result<PathBuf, ServeError> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("MINIVMM_STATE_DIR") {
        return Ok(d);
    }
    // SAFETY: geteuid only returns this process's effective user id.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/run/minivmm"));
    }
    env("XDG_RUNTIME_DIR")
        .map(|d| d.join("minivmm"))
        .ok_or_else(|| {
            ServeError::StateDir(
                "(default)".into(),
                "neither MINIVMM_STATE_DIR nor XDG_RUNTIME_DIR is set: give --state-dir".into(),
            )
        })
}

/// The guest directory: as given (it must hold `vmlinux`), or found.
fn guest_dir(given: Option<PathBuf>) -> Result<Option<PathBuf>, ServeError> {
    if let Some(d) = given {
        if !d.join("vmlinux").is_file() {
            return Err(ServeError::GuestDir(
                d.display().to_string(),
                "no vmlinux there (resources/guest/build.sh builds the test guest and prints \
                 its directory)"
                    .into(),
            ));
        }
        return Ok(Some(std::path::absolute(&d).unwrap_or(d)));
    }
    if let Some(d) = std::env::var_os("MINIVMM_TEST_GUEST").map(PathBuf::from) {
        if d.join("vmlinux").is_file() {
            return Ok(Some(d));
        }
    }
    Ok(config::newest_guest_dir())
}

/// The state directory, locked for this manager, with an empty `vms/`.
struct StateDir {
    root: PathBuf,
    vms: PathBuf,
    /// Holds the `flock` until the manager ends.
    _lock: std::fs::File,
    /// Whether this manager made `root` (then it removes it at the end).
    created: bool,
}

impl StateDir {
    fn open(path: &Path) -> Result<Self, ServeError> {
        let shown = path.display().to_string();
        let bad = |why: String| ServeError::StateDir(shown.clone(), why);
        let root = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
        let longest = root.join("vms").join("x".repeat(32)).join("api.sock");
        if longest.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(bad(format!(
                "too long: the VMs' sockets there would pass the {SOCKET_PATH_MAX} bytes of a \
                 Unix socket path"
            )));
        }
        let created = !root.exists();
        manager::private_dir(&root).map_err(|e| bad(e.to_string()))?;
        let undo = |e: ServeError| {
            if created {
                let _ = std::fs::remove_dir(&root);
            }
            e
        };
        let lock_path = root.join("serve.lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| undo(bad(e.to_string())))?;
        // SAFETY: flock only takes a descriptor we own and a flag.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = std::fs::read_to_string(&lock_path).unwrap_or_default();
            return Err(bad(format!(
                "another minivmm serve (pid {}) uses it",
                pid.trim()
            )));
        }
        let _ = lock.set_len(0);
        let _ = writeln!(lock, "{}", std::process::id());
        let vms = root.join("vms");
        if vms.exists() {
            log::warn!(
                "{}: removing what a manager that did not stop cleanly left",
                vms.display()
            );
            let _ = std::fs::remove_dir_all(&vms);
        }
        if let Err(e) = manager::private_dir(&vms) {
            let _ = std::fs::remove_file(&lock_path);
            return Err(undo(bad(e.to_string())));
        }
        Ok(Self {
            root,
            vms,
            _lock: lock,
            created,
        })
    }

    /// Remove what this manager made.
    fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.vms) {
            log::error!("removing {}: {e}", self.vms.display());
        }
        let _ = std::fs::remove_file(self.root.join("serve.lock"));
        if self.created {
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}

/// Run the manager until SIGINT, SIGTERM or SIGHUP; then stop every VM, remove the state
/// it made, and return.
pub fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let addr = parse_listen(&opts.listen)?;
    let state_path = match opts.state_dir {
        Some(d) => d,
        None => default_state_dir()?,
    };
    let guest = guest_dir(opts.guest_dir)?;
    let exe = std::env::current_exe().map_err(|e| ServeError::Host("finding minivmm itself", e))?;
    // Before any thread exists: every thread inherits the blocked signals.
    let signals = signals::take().map_err(|e| ServeError::Host("signal mask", e))?;
    let listener = TcpListener::bind(addr)
        .map_err(|e| ServeError::Listen(opts.listen.clone(), e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Host("the listening socket", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ServeError::Host("the listening socket", e))?;
    let state = StateDir::open(&state_path)?;
    let started = (|| {
        let token =
            manager::random_hex().map_err(|e| ServeError::Host("reading /dev/urandom", e))?;
        let images = config::images(guest.as_deref());
        let manager = Arc::new(
            manager::Manager::new(state.vms.clone(), images, exe, opts.cloud_init)
                .map_err(|e| ServeError::Host("starting the spawner thread", e))?,
        );
        let m = manager.clone();
        std::thread::Builder::new()
            .name("sampler".into())
            .stack_size(128 * 1024)
            .spawn(move || stats::run(m))
            .map_err(|e| ServeError::Host("starting the sampler thread", e))?;
        Ok((token, manager))
    })();
    let (token, manager) = match started {
        Ok(t) => t,
        Err(e) => {
            state.remove();
            return Err(e);
        }
    };
    match &guest {
        Some(g) => log::info!("images from {}", g.display()),
        None => log::warn!(
            "no test guest found (resources/guest/build.sh builds it; --guest-dir names it): \
             no images, VMs need a kernel"
        ),
    }
    log::info!("state in {}", state.root.display());
    let ctx = Arc::new(server::Ctx::new(manager.clone(), addr, token.clone()));
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "minivmm serve: http://{}/#token={token}",
            server::host_of(addr)
        );
        let _ = out.flush();
    }
    let ended = accept_loop(&listener, &signals, &ctx);
    drop(listener);
    manager.shutdown();
    state.remove();
    match ended {
        Ok(sig) => {
            log::info!("signal {sig}: stopped every VM, removed the state");
            Ok(())
        }
        Err(e) => Err(ServeError::Host("waiting for connections", e)),
    }
}

/// Accept connections until a stopping signal arrives: its number.
fn accept_loop(
    listener: &TcpListener,
    signals: &std::os::fd::OwnedFd,
    ctx: &Arc<server::Ctx>,
) -> std::io::Result<i32> {
    loop {
        let (conn, sig) = signals::poll2(listener.as_raw_fd(), signals.as_raw_fd(), -1)?;
        if sig {
            if let Some(s) = signals::read(signals) {
                return Ok(s);
            }
        }
        if conn {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => server::accept(ctx, stream),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment rather than spin.
                        log::warn!("accept: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_listened_on() {
        assert!(parse_listen("127.0.0.1:0").is_ok());
        assert!(parse_listen("127.1.2.3:8080").is_ok());
        assert!(parse_listen("[::1]:8080").is_ok());
        assert_eq!(
            parse_listen("localhost:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        for bad in [
            "0.0.0.0:8080",
            "192.168.1.2:80",
            "[::]:80",
            "example.com:80",
            "8080",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.is_bad_input(), "{bad}");
            assert!(
                e.to_string().starts_with(&format!("--listen {bad}: ")),
                "{e}"
            );
        }
    }
}
