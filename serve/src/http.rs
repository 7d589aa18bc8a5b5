//! HTTP/1.1 on the manager's TCP connections: reading one request, writing one response.
//!
//! Requests are parsed by the per-VM API's strict parser ([`api::http::parse_request`]:
//! CRLF line ends, no folding, one `Host`, `Content-Length` bodies only, size limits).
//! The manager's API has query strings (`?offset=N`, `?ticket=T`), which the per-VM API
//! never takes, so the query is cut off the request line before the parser sees it and
//! kept beside the request. Every response closes its connection (`Connection: close`)
//! and carries the security headers of the contract (CSP, `nosniff`, no framing, no
//! referrer); API answers are never cached.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use api::http::{parse_request, HttpError, Limits, Parsed};

/// What a client may send: the request line and headers (browsers send many), and a
/// 1 MiB body.
pub const LIMITS: Limits = Limits {
    header_bytes: 32 * 1024,
    headers: 100,
    body_bytes: 1024 * 1024,
};

/// The `Content-Security-Policy` of every answer.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                       style-src 'self' 'unsafe-inline'";

/// One request.
#[derive(Debug)]
pub struct Request {
    /// The method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query's `name=value` pairs, in order (not percent-decoded: no parameter of
    /// this API needs it).
    pub query: Vec<(String, String)>,
    /// Header fields: names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuse query parameters other than `allowed`.
    pub fn only_params(&self, allowed: &[&str]) -> Result<(), Response> {
        match self
            .query
            .iter()
            .find(|(n, _)| !allowed.contains(&n.as_str()))
        {
            Some((n, _)) => Err(Response::error(
                400,
                format!("unknown query parameter '{n}' for {}", self.path),
            )),
            None => Ok(()),
        }
    }
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The request is malformed or too large: answer with its status.
    #[error("{0}")]
    Http(#[from] HttpError),
    /// The client did not send a whole request in time (408).
    #[error("no whole request within {0:?}")]
    Timeout(Duration),
    /// The client closed the connection before a whole request.
    #[error("the client closed the connection")]
    Closed,
    /// The socket failed.
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
}

/// Cut the query off the request line at the start of `buf`, once that line is whole;
/// returns the query (empty if there is none) or None while the line is incomplete.
fn take_query(buf: &mut Vec<u8>) -> Result<Option<Vec<(String, String)>>, HttpError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[..end];
    let Some(sp1) = line.iter().position(|&b| b == b' ') else {
        return Ok(Some(Vec::new())); // the parser refuses the line
    };
    let target_end = line[sp1 + 1..]
        .iter()
        .position(|&b| b == b' ')
        .map_or(end, |i| sp1 + 1 + i);
    let target = &line[sp1 + 1..target_end];
    let Some(q) = target.iter().position(|&b| b == b'?') else {
        return Ok(Some(Vec::new()));
    };
    let query = &target[q + 1..];
    if !query.iter().all(|b| b.is_ascii_graphic() && *b != b'#') {
        return Err(HttpError::BadRequest("malformed query string".into()));
    }
    let query = String::from_utf8_lossy(query).into_owned();
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    buf.drain(sp1 + 1 + q..target_end);
    Ok(Some(pairs))
}

/// Read one request from `stream` within `timeout` (from now). Answers
/// `Expect: 100-continue` so that clients such as curl send a body at once.
pub fn read_request(stream: &mut TcpStream, timeout: Duration) -> Result<Request, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut query: Option<Vec<(String, String)>> = None;
    let mut continued = false;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if query.is_none() {
            query = take_query(&mut buf)?;
            if query.is_none() && buf.len() >= LIMITS.header_bytes {
                return Err(HttpError::HeaderTooLarge(LIMITS.header_bytes).into());
            }
        }
        if query.is_some() {
            match parse_request(&buf, &LIMITS)? {
                Parsed::Complete(r, _) => {
                    return Ok(Request {
                        method: r.method,
                        path: r.path,
                        query: query.unwrap_or_default(),
                        headers: r.headers,
                        body: r.body,
                    })
                }
                Parsed::Incomplete => {
                    if !continued && expects_continue(&buf) {
                        continued = true;
                        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                    }
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout(timeout));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout(timeout))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the header section in `buf` is whole and asks for `100 Continue`.
fn expects_continue(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    String::from_utf8_lossy(&buf[..end])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(n, v)| {
            n.eq_ignore_ascii_case("expect") && v.trim().eq_ignore_ascii_case("100-continue")
        })
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type` (none for an empty body).
    pub content_type: Option<&'static str>,
    /// More header fields.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether it may be cached (the static files, revalidated).
    pub cacheable: bool,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Self {
            status,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body,
            cacheable: false,
        }
    }

    /// `{"error": message}` (one line).
    pub fn error(status: u16, message: impl std::fmt::Display) -> Self {
        let text = message.to_string().replace('\n', " ");
        Self::json(status, &serde_json::json!({ "error": text }))
    }

    /// 204, no body.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
            cacheable: false,
        }
    }

    /// Bytes of a given type.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: Some(content_type),
            headers: Vec::new(),
            body,
            cacheable: false,
        }
    }

    /// Add a header field.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nCache-Control: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len(),
            if self.cacheable {
                "no-cache"
            } else {
                "no-store"
            },
        );
        if let Some(ct) = self.content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        201 => "Created",
        401 => "Unauthorized",
        403 => "Forbidden",
        421 => "Misdirected Request",
        s => api::http::reason(s),
    }
}

/// Write `response` and close the connection gently: stop sending, then read (and drop)
/// what the client still sends for a moment, so that a client whose body was refused
/// (413) sees the answer rather than a reset.
pub fn respond_and_close(stream: &mut TcpStream, response: &Response) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    if stream.write_all(&response.to_bytes()).is_err() {
        return;
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while drained < 4 * 1024 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_cut_off_the_request_line() {
        let mut b = b"GET /a/b?offset=10&x HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        let q = take_query(&mut b).unwrap().unwrap();
        assert_eq!(
            q,
            vec![("offset".into(), "10".into()), ("x".into(), String::new())]
        );
        assert_eq!(b, b"GET /a/b HTTP/1.1\r\nHost: h\r\n\r\n".to_vec());
        let mut b = b"GET /a HTTP/1.1\r\n".to_vec();
        assert_eq!(take_query(&mut b).unwrap(), Some(vec![]));
        let mut b = b"GET /a?x=1 HTTP/1.1".to_vec();
        assert_eq!(take_query(&mut b).unwrap(), None);
        let mut b = b"GET /a?x=1#f HTTP/1.1\r\n".to_vec();
        assert!(take_query(&mut b).is_err());
    }

    #[test]
    fn continue_is_noticed_once_the_headers_are_whole() {
        assert!(expects_continue(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(!expects_continue(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n"
        ));
        assert!(!expects_continue(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"));
    }

    #[test]
    fn responses_carry_the_security_headers() {
        let r = Response::error(404, "no VM named 'x'");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        for h in [
            "Content-Security-Policy: default-src 'self'",
            "X-Content-Type-Options: nosniff",
            "X-Frame-Options: DENY",
            "Referrer-Policy: no-referrer",
            "Cache-Control: no-store",
            "Content-Type: application/json",
        ] {
            assert!(text.contains(h), "{h} missing: {text}");
        }
        assert!(!text.to_ascii_lowercase().contains("access-control"));
        assert!(text.ends_with("{\"error\":\"no VM named 'x'\"}\n"));
    }
}
