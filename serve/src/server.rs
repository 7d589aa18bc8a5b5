//! The manager's HTTP server: one thread per connection (at most
//! [`MAX_CONNECTIONS`]), one request per connection, and the checks every request passes
//! before anything else looks at it:
//!
//! 1. `Host` must name this server (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT` or
//!    the listening address): a page on another site whose name was rebound to 127.0.0.1
//!    (DNS rebinding) sends its own name, and gets 421.
//! 2. An `Origin`, if sent, must be `http://` plus that Host: another site's page that
//!    posts or opens a WebSocket here gets 403. No CORS header is ever sent, so browsers
//!    let no other origin read an answer.
//! 3. Under `/api/v1`, `Authorization: Bearer TOKEN` (compared in constant time), else
//!    401; the console WebSocket instead takes a single-use ticket that a request with
//!    the token got ([`Manager::ticket`]), because browsers cannot set headers on a
//!    WebSocket, and requires an `Origin`.
//!
//! The static page needs no token: it is inert without one, and takes it from the URL's
//! fragment, which browsers never send to a server.

use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::console::{Out, Outbox};
use crate::http::{read_request, respond_and_close, ReadError, Request, Response};
use crate::manager::{same_secret, Manager};
use crate::websocket::{self, opcode, Message, WsError};
use crate::{assets, rest};

/// Connections open at once; the next ones get 503.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a console viewer may take to accept a write before it is dropped.
const VIEWER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection thread shares.
pub struct Ctx {
    /// The VMs.
    pub manager: Arc<Manager>,
    token: String,
    /// The `Host` values that name this server (lowercase).
    hosts: Vec<String>,
    active: AtomicUsize,
}

impl Ctx {
    /// The server on `addr` with `token`.
    pub fn new(manager: Arc<Manager>, addr: SocketAddr, token: String) -> Self {
        let port = addr.port();
        let mut hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        let own = host_of(addr);
        if !hosts.contains(&own) {
            hosts.push(own);
        }
        Self {
            manager,
            token,
            hosts,
            active: AtomicUsize::new(0),
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// `addr` as the host part of a URL.
pub fn host_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Decrements the connection count when the connection's thread ends.
struct Slot(Arc<Ctx>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Take a new connection: a thread of its own, or 503 when [`MAX_CONNECTIONS`] are open.
pub fn accept(ctx: &Arc<Ctx>, mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    if ctx.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        ctx.active.fetch_sub(1, Ordering::SeqCst);
        use std::io::Write;
        let r = Response::error(
            503,
            format!("more than {MAX_CONNECTIONS} connections: try again"),
        );
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = stream.write_all(&r.to_bytes());
        return;
    }
    let slot = Slot(ctx.clone());
    let spawned = std::thread::Builder::new()
        .name("http".into())
        .stack_size(512 * 1024)
        .spawn(move || {
            let slot = slot;
            connection(&slot.0, stream);
        });
    if let Err(e) = spawned {
        log::error!("no thread for a connection: {e}");
    }
}

fn connection(ctx: &Arc<Ctx>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let req = match read_request(&mut stream, REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(ReadError::Http(e)) => {
            return respond_and_close(&mut stream, &Response::error(e.status(), e));
        }
        Err(e @ ReadError::Timeout(_)) => {
            return respond_and_close(&mut stream, &Response::error(408, e));
        }
        Err(_) => return,
    };
    if let Err(r) = check_origin(ctx, &req) {
        return respond_and_close(&mut stream, &r);
    }
    if let Some(("/api/v1/vms/{name}/console", Some(name))) = rest::route(&req.path) {
        if req.method == "GET" {
            return console(ctx, stream, &req, name);
        }
    }
    let response = if req.path.starts_with("/api/") {
        match check_token(ctx, &req) {
            Ok(()) => rest::handle(&ctx.manager, &req),
            Err(r) => r,
        }
    } else {
        static_file(&req)
    };
    log::debug!("{} {} -> {}", req.method, req.path, response.status);
    respond_and_close(&mut stream, &response);
}

/// Checks 1 and 2 of the module documentation.
fn check_origin(ctx: &Ctx, req: &Request) -> Result<(), Response> {
    let host = req.header("host").unwrap_or("").to_ascii_lowercase();
    if !ctx.hosts.contains(&host) {
        return Err(Response::error(
            421,
            format!(
                "Host '{host}' is not this server (use http://{}/)",
                ctx.hosts.last().map_or("", String::as_str)
            ),
        ));
    }
    if let Some(origin) = req.header("origin") {
        if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
            return Err(Response::error(
                403,
                format!("Origin '{origin}' is not this server's page"),
            ));
        }
    }
    Ok(())
}

/// Check 3: the bearer token.
fn check_token(ctx: &Ctx, req: &Request) -> Result<(), Response> {
    let given = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same_secret(t, &ctx.token) => Ok(()),
        _ => Err(Response::error(
            401,
            "missing or wrong token: send Authorization: Bearer TOKEN, with the token that \
             minivmm serve printed",
        )
        .with_header("WWW-Authenticate", "Bearer")),
    }
}

fn static_file(req: &Request) -> Response {
    let Some(asset) = assets::find(&req.path) else {
        return Response::error(404, format!("no such path: {}", req.path));
    };
    if req.method != "GET" {
        return Response::error(
            405,
            format!("{} {}: method not allowed (use GET)", req.method, req.path),
        )
        .with_header("Allow", "GET");
    }
    if !req.query.is_empty() {
        return Response::error(400, format!("{} takes no query", req.path));
    }
    let mut r = Response::bytes(200, asset.content_type, asset.body.to_vec());
    r.cacheable = true;
    r
}

/// `GET /api/v1/vms/{name}/console?ticket=T` with `Upgrade: websocket`.
fn console(ctx: &Arc<Ctx>, mut stream: TcpStream, req: &Request, name: &str) {
    let accepted = (|| {
        if req.header("origin").is_none() {
            return Err(Response::error(
                403,
                "a console WebSocket needs the Origin of this server's page",
            ));
        }
        req.only_params(&["ticket"])?;
        let answer = websocket::handshake(req).map_err(|m| Response::error(400, m))?;
        let vm = ctx
            .manager
            .get(name)
            .map_err(|f| Response::error(f.status, f.message))?;
        let ticket = req.param("ticket").ok_or_else(|| {
            Response::error(
                401,
                format!("no ticket: POST /api/v1/vms/{name}/console-ticket first"),
            )
        })?;
        if !ctx.manager.redeem(ticket, name) {
            return Err(Response::error(
                401,
                "console ticket unknown, used or expired (each is good once, for 30 s, for one VM)",
            ));
        }
        Ok((vm, answer))
    })();
    let (vm, answer) = match accepted {
        Ok(a) => a,
        Err(r) => return respond_and_close(&mut stream, &r),
    };
    use std::io::Write;
    let _ = stream.set_write_timeout(Some(VIEWER_WRITE_TIMEOUT));
    if stream.write_all(answer.as_bytes()).is_err() {
        return;
    }
    let outbox = Arc::new(Outbox::default());
    let (Ok(for_console), Ok(mut out)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let id = vm.console.attach(outbox.clone(), for_console);
    log::info!("console viewer {id} attached to VM '{name}'");
    let writer = {
        let outbox = outbox.clone();
        std::thread::Builder::new()
            .name("ws-out".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                while let Some(msg) = outbox.next() {
                    let sent = match msg {
                        Out::Data(b) => websocket::write_frame(&mut out, opcode::BINARY, &b),
                        Out::Pong(p) => websocket::write_frame(&mut out, opcode::PONG, &p),
                        Out::Close(code) => {
                            let _ = websocket::write_frame(
                                &mut out,
                                opcode::CLOSE,
                                &code.to_be_bytes(),
                            );
                            break;
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                // Ends the reading side too.
                let _ = out.shutdown(Shutdown::Both);
            })
    };
    if writer.is_ok() {
        let _ = stream.set_read_timeout(None);
        let mut reader = websocket::Reader::new(BufReader::new(&stream));
        loop {
            match reader.read_message() {
                Ok(Message::Data(bytes)) => vm.input(&bytes),
                Ok(Message::Ping(p)) => outbox.pong(p),
                Ok(Message::Pong) => {}
                Ok(Message::Close(_)) => {
                    outbox.close(1000);
                    break;
                }
                Err(WsError::Protocol(why, code)) => {
                    log::info!("console viewer {id}: {why}");
                    outbox.close(code);
                    break;
                }
                Err(WsError::Io(_)) => break,
            }
        }
    }
    vm.console.detach(id);
    outbox.finish();
    if let Ok(w) = writer {
        let _ = w.join();
    }
    let _ = stream.shutdown(Shutdown::Both);
    log::info!("console viewer {id} of VM '{name}' left");
}
