//! The socket: binding it (mode 0600, refusing a path where something listens, replacing a
//! stale one), serving it on one thread, and removing it when serving ends.
//!
//! One thread serves every client: it polls the listening socket, a stop eventfd and each
//! open connection, reads requests as they trickle in, and answers each as soon as it is
//! whole. A connection carries one request; the answer says `Connection: close` and the
//! server closes it once written. Requests run one after the other on this thread (a
//! snapshot holds the others back until it is written), but reading and writing never
//! block it: a client that connects and sends nothing, or half a request, or garbage,
//! gets its answer (400, or 408 after [`REQUEST_TIMEOUT`]) without holding up anybody
//! else, and at most [`MAX_CONNECTIONS`] are open at once (the next ones get 503).
//!
//! Nothing here touches the VM's threads: a request becomes a call on the [`Vm`] handle,
//! as a front-end's keystroke does.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmm::seccomp::{SeccompMode, ThreadKind};
use vmm::Vm;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::http::{parse_request, Limits, Parsed, Response};
use crate::{routes, ApiError};

/// How long a client has, from its connection, to send a whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to read its answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// A bound API socket, ready to [`serve`](ApiServer::serve).
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's (device, inode): only that file is removed at the end.
    id: (u64, u64),
    stop: EventFd,
    removed: AtomicBool,
}

impl ApiServer {
    /// Create the socket at `path`, mode 0600. A socket file where nothing listens (left
    /// by a minivmm that was killed) is replaced; a live socket or any other file is
    /// refused.
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        let shown = path.display().to_string();
        let bind_err = |source| ApiError::Bind {
            path: shown.clone(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(ApiError::InUse(shown)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    log::info!("--api-sock {shown}: replacing a stale socket file");
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Err(e) => return Err(bind_err(e)),
            },
            Ok(_) => return Err(ApiError::NotASocket(shown)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        // The socket file is created with mode 0600 from the start: no moment where
        // another user could connect.
        // SAFETY: umask only changes this process's file mode mask; it cannot fail.
        let old = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(path);
        // SAFETY: as above, putting the old mask back.
        unsafe { libc::umask(old) };
        let listener = listener.map_err(bind_err)?;
        let meta = std::fs::metadata(path).map_err(bind_err)?;
        let server = Self {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            stop: EventFd::new(EFD_NONBLOCK).map_err(|e| ApiError::Io("eventfd", e))?,
            removed: AtomicBool::new(false),
        };
        // From here on a failure removes the file again (Drop).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        server
            .listener
            .set_nonblocking(true)
            .map_err(|e| ApiError::Io("non-blocking socket", e))?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make [`serve`](ApiServer::serve) return (from any thread).
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }

    /// Install the API thread's seccomp filter, then answer requests on `vm` until
    /// [`stop`](ApiServer::stop); remove the socket file before returning, whatever
    /// happens (the front-end's thread may not be allowed to).
    pub fn serve(&self, vm: &Vm, seccomp: SeccompMode) -> Result<(), ApiError> {
        let _remove = RemoveOnDrop(self);
        vmm::seccomp::apply_kind(ThreadKind::Api, "api", seccomp)?;
        self.serve_loop(vm)
    }

    fn remove_file(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Only the file this server made: a later minivmm may have replaced it.
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("--api-sock {}: removing it: {e}", self.path.display());
            }
        }
    }

    fn serve_loop(&self, vm: &Vm) -> Result<(), ApiError> {
        let limits = Limits::default();
        let mut conns: Vec<Conn> = Vec::new();
        loop {
            let now = Instant::now();
            let mut fds = vec![
                pollfd(self.stop.as_raw_fd(), libc::POLLIN),
                pollfd(self.listener.as_raw_fd(), libc::POLLIN),
            ];
            fds.extend(conns.iter().map(|c| {
                let events = if c.out.is_some() {
                    libc::POLLOUT
                } else {
                    libc::POLLIN
                };
                pollfd(c.stream.as_raw_fd(), events)
            }));
            let timeout = conns
                .iter()
                .map(|c| c.deadline.saturating_duration_since(now))
                .min()
                .map_or(-1, |d| d.as_millis().clamp(1, 60_000) as i32);
            // SAFETY: polling descriptors we own, in a vector that outlives the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ApiError::Io("poll", e));
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
            // Existing connections first: what a client sent while a long request ran is
            // read before its deadline is looked at.
            for (c, fd) in conns.iter_mut().zip(&fds[2..]) {
                if fd.revents != 0 {
                    c.ready(vm, &limits);
                }
            }
            if fds[1].revents != 0 {
                self.accept(&mut conns);
            }
            let now = Instant::now();
            for c in conns.iter_mut().filter(|c| c.deadline <= now && !c.done) {
                c.expire();
            }
            conns.retain(|c| !c.done);
        }
    }

    /// Take every waiting connection.
    fn accept(&self, conns: &mut Vec<Conn>) {
        loop {
            // SAFETY: accept4 on our listening socket; no peer address wanted. The new
            // descriptor is non-blocking from the start (no fcntl or ioctl needed).
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => return,
                    std::io::ErrorKind::Interrupted => continue,
                    // ECONNABORTED and the like: that client is gone; out of fds: try
                    // again at the next poll.
                    _ => {
                        log::debug!("api: accept: {e}");
                        return;
                    }
                }
            }
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let stream = unsafe { UnixStream::from_raw_fd(fd) };
            let mut c = Conn {
                stream,
                buf: Vec::new(),
                out: None,
                deadline: Instant::now() + REQUEST_TIMEOUT,
                done: false,
            };
            if conns.len() >= MAX_CONNECTIONS {
                c.respond(Response::error(
                    503,
                    format!("too many API connections (at most {MAX_CONNECTIONS})"),
                ));
                continue;
            }
            conns.push(c);
        }
    }
}

impl Drop for ApiServer {
    /// A server that never served (the VM failed to build) still removes its file.
    fn drop(&mut self) {
        self.remove_file();
    }
}

struct RemoveOnDrop<'a>(&'a ApiServer);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        self.0.remove_file();
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// One client connection: reading its request, then writing the answer.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// The answer and how much of it is written.
    out: Option<(Vec<u8>, usize)>,
    deadline: Instant,
    done: bool,
}

impl Conn {
    fn ready(&mut self, vm: &Vm, limits: &Limits) {
        if self.out.is_some() {
            self.flush();
            return;
        }
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // The client is done sending (it may still read: `nc -N`).
                    eof = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.done = true;
                    return;
                }
            }
            // More than a request can be is not read: the parser refuses it.
            if self.buf.len() > limits.header_bytes + limits.body_bytes {
                break;
            }
        }
        match parse_request(&self.buf, limits) {
            // It closed before its request was whole: nobody to answer.
            Ok(Parsed::Incomplete) if eof => self.done = true,
            Ok(Parsed::Incomplete) => {}
            Ok(Parsed::Complete(req, _)) => {
                let resp = routes::handle(vm, &req);
                log::debug!("api: {} {} -> {}", req.method, req.path, resp.status);
                self.respond(resp);
            }
            Err(e) => {
                log::debug!("api: refused a request: {e}");
                self.respond(Response::error(e.status(), e));
            }
        }
    }

    fn respond(&mut self, resp: Response) {
        self.out = Some((resp.to_bytes(), 0));
        self.deadline = Instant::now() + WRITE_TIMEOUT;
        self.flush();
    }

    /// Write what the socket takes; done when all is written or the client is gone.
    fn flush(&mut self) {
        let Some((out, pos)) = &mut self.out else {
            return;
        };
        while *pos < out.len() {
            let rest = &out[*pos..];
            // SAFETY: sending from a live buffer of the given length on our socket;
            // MSG_NOSIGNAL: a client that left gives EPIPE, not SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                match std::io::Error::last_os_error().kind() {
                    std::io::ErrorKind::WouldBlock => return,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => break,
                }
            }
            *pos += n as usize;
        }
        self.done = true;
    }

    fn expire(&mut self) {
        if self.out.is_some() {
            // The client does not read its answer.
            self.done = true;
            return;
        }
        self.respond(Response::error(
            408,
            format!(
                "no whole request within {} s of connecting",
                REQUEST_TIMEOUT.as_secs()
            ),
        ));
        // One try: a client that does not read gets no second chance.
        self.done = true;
    }
}
