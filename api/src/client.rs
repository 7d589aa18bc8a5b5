//! The client side, for the command line's `minivmm snapshot|pause|resume|stop|status`:
//! one request on a fresh connection, the whole answer read until the server closes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::http::parse_response;
use crate::ApiError;

/// A server's answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The JSON body (`Null` when empty).
    pub body: Value,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `error` text of a failed request (or the whole body if it has none).
    pub fn error_text(&self) -> String {
        match self.body.get("error").and_then(Value::as_str) {
            Some(e) => e.to_string(),
            None => format!("status {}: {}", self.status, self.body),
        }
    }
}

/// Send `method path` (with `body` as JSON, if any) to the API socket at `sock` and wait
/// up to `timeout` for the answer.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Reply, ApiError> {
    let shown = sock.display().to_string();
    let mut stream = UnixStream::connect(sock).map_err(|source| ApiError::Connect {
        path: shown.clone(),
        source,
    })?;
    let io = |what: &'static str| {
        let shown = shown.clone();
        move |source| ApiError::Exchange {
            path: shown,
            what,
            source,
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(io("sending the request"))?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .map_err(io("reading the answer"))?;
    let (status, body) = parse_response(&buf).map_err(|source| ApiError::BadAnswer {
        path: shown.clone(),
        source,
    })?;
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadAnswer {
            path: shown.clone(),
            source: crate::http::HttpError::BadRequest(format!("body is not JSON: {e}")),
        })?
    };
    Ok(Reply { status, body })
}
