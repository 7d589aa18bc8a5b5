//! A small, strict HTTP/1.1 message parser and writer: exactly what the control API needs
//! and nothing more.
//!
//! Requests: a request line (`METHOD SP /target SP HTTP/1.1`), header fields, an empty
//! line, and a body whose length `Content-Length` gives (none without it). Everything else
//! is refused with a status code the server sends back: bare LF line ends, folded or
//! malformed header lines, `Transfer-Encoding` (chunked bodies: 501), a missing or repeated
//! `Host` in HTTP/1.1, conflicting `Content-Length`s, header sections over
//! [`Limits::header_bytes`] (431) and bodies over [`Limits::body_bytes`] (413). HTTP/1.0
//! requests are accepted; other versions get 505.
//!
//! The parser is incremental without keeping state: [`parse_request`] is called on
//! everything received so far and says [`Parsed::Incomplete`] until a whole request is
//! there. A broken request line is refused as soon as its line end arrives, so a client
//! that sends garbage gets its answer at once rather than at the server's timeout.
//!
//! Responses: [`Response`] writes a status line, `Content-Type`, `Content-Length` and
//! `Connection: close` (the server answers one request per connection), and
//! [`parse_response`] reads one back for the command-line client.

/// Size limits on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The request line and the header fields together, line ends included.
    pub header_bytes: usize,
    /// Header fields.
    pub headers: usize,
    /// The body.
    pub body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_bytes: 8 * 1024,
            headers: 64,
            body_bytes: 64 * 1024,
        }
    }
}

/// Why a request was refused; each maps to the status code the client gets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Malformed: the text says what (400).
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// The request line and headers exceed the limit (431).
    #[error("request header section larger than {0} bytes")]
    HeaderTooLarge(usize),
    /// The body exceeds the limit (413).
    #[error("request body of {0} bytes: at most {1} are accepted")]
    BodyTooLarge(u64, usize),
    /// A feature this server does not implement, such as chunked bodies (501).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// An HTTP version other than 1.1 and 1.0 (505).
    #[error("HTTP version {0:?} is not supported (HTTP/1.1 is)")]
    Version(String),
}

impl HttpError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeaderTooLarge(_) => 431,
            HttpError::BodyTooLarge(..) => 413,
            HttpError::NotImplemented(_) => 501,
            HttpError::Version(_) => 505,
        }
    }
}

/// The request's HTTP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The path (origin form: starts with `/`; no query).
    pub path: String,
    /// The version.
    pub version: Version,
    /// Header fields in order: names lowercased, values with surrounding blanks removed.
    pub headers: Vec<(String, String)>,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (lowercase), the first if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`parse_request`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: read more.
    Incomplete,
    /// A request, and how many bytes of the input it took.
    Complete(Request, usize),
}

/// `tchar` of RFC 9110: what method and header names are made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::BadRequest(msg.into())
}

/// Where the first line end (CRLF) is in `buf`; a LF without CR before it is an error.
fn line_end(buf: &[u8]) -> Result<Option<usize>, HttpError> {
    match buf.iter().position(|&b| b == b'\n') {
        None => Ok(None),
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(bad("lines must end in CRLF")),
    }
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, Version), HttpError> {
    let text = std::str::from_utf8(line).map_err(|_| bad("request line is not ASCII"))?;
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("request line must be METHOD SP TARGET SP VERSION"));
    };
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return Err(bad(format!("method {method:?} is not a token")));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(format!(
            "request target {target:?} is not an absolute path"
        )));
    }
    if target.contains('?') || target.contains('#') {
        return Err(bad(format!(
            "request target {target:?}: query strings are not supported"
        )));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.starts_with("HTTP/") => return Err(HttpError::Version(v.to_string())),
        v => return Err(bad(format!("{v:?} is not an HTTP version"))),
    };
    Ok((method.to_string(), target.to_string(), version))
}

fn parse_header_line(line: &[u8]) -> Result<(String, String), HttpError> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return Err(bad("folded header lines are not accepted"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| bad("header line without a colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
        return Err(bad(format!(
            "header name {:?} is not a token",
            String::from_utf8_lossy(name)
        )));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad(format!(
            "header {} has a control character in its value",
            String::from_utf8_lossy(name)
        )));
    }
    let value = std::str::from_utf8(value)
        .map_err(|_| bad("header value is not UTF-8"))?
        .trim_matches([' ', '\t']);
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        value.to_string(),
    ))
}

/// Parse one request from the start of `buf` (everything received so far).
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    // The request line, checked as soon as it is there.
    let Some(end) = line_end(&buf[..buf.len().min(limits.header_bytes)])? else {
        return if buf.len() >= limits.header_bytes {
            Err(HttpError::HeaderTooLarge(limits.header_bytes))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let (method, path, version) = parse_request_line(&buf[..end])?;
    // The header fields, up to the empty line.
    let mut pos = end + 2;
    let mut headers = Vec::new();
    loop {
        let window = &buf[pos..buf.len().min(limits.header_bytes)];
        let Some(len) = line_end(window)? else {
            return if buf.len() >= limits.header_bytes {
                Err(HttpError::HeaderTooLarge(limits.header_bytes))
            } else {
                Ok(Parsed::Incomplete)
            };
        };
        let line = &buf[pos..pos + len];
        pos += len + 2;
        if line.is_empty() {
            break;
        }
        if headers.len() == limits.headers {
            return Err(bad(format!("more than {} header fields", limits.headers)));
        }
        headers.push(parse_header_line(line)?);
    }
    let mut content_length: Option<u64> = None;
    let mut hosts = 0;
    for (name, value) in &headers {
        match name.as_str() {
            "transfer-encoding" => {
                return Err(HttpError::NotImplemented(
                    "Transfer-Encoding (send a Content-Length body)",
                ))
            }
            "content-length" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(format!("Content-Length {value:?} is not a number")));
                }
                let n: u64 = value
                    .parse()
                    .map_err(|_| HttpError::BodyTooLarge(u64::MAX, limits.body_bytes))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(bad("conflicting Content-Length headers"));
                }
                content_length = Some(n);
            }
            "host" => hosts += 1,
            _ => {}
        }
    }
    if version == Version::Http11 && hosts != 1 {
        return Err(bad("an HTTP/1.1 request needs exactly one Host header"));
    }
    let length = content_length.unwrap_or(0);
    if length > limits.body_bytes as u64 {
        return Err(HttpError::BodyTooLarge(length, limits.body_bytes));
    }
    let length = length as usize;
    if buf.len() - pos < length {
        return Ok(Parsed::Incomplete);
    }
    let body = buf[pos..pos + length].to_vec();
    Ok(Parsed::Complete(
        Request {
            method,
            path,
            version,
            headers,
            body,
        },
        pos + length,
    ))
}

/// The reason phrase of the status codes this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A response: a status, a JSON body and optionally the methods a path allows (405).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (JSON text).
    pub body: Vec<u8>,
    /// The `Allow` header's methods, for 405.
    pub allow: Option<&'static str>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Self {
            status,
            body,
            allow: None,
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.to_string() }))
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Read back a whole response (status line, headers, a `Content-Length` body): the
/// status and the body. For the command-line client, which reads until the server closes.
pub fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
    let end = line_end(buf)?.ok_or_else(|| bad("response ends before its status line"))?;
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| bad("status line is not ASCII"))?;
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad(format!("status line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Version(version.to_string()));
    }
    let status: u16 = code
        .parse()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| bad(format!("status code {code:?}")))?;
    let mut pos = end + 2;
    let mut length = None;
    loop {
        let len = line_end(&buf[pos..])?.ok_or_else(|| bad("response ends in its headers"))?;
        let line = &buf[pos..pos + len];
        pos += len + 2;
        if line.is_empty() {
            break;
        }
        let (name, value) = parse_header_line(line)?;
        if name == "content-length" {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("Content-Length {value:?}")))?,
            );
        }
    }
    let body = &buf[pos..];
    let body = match length {
        Some(n) if body.len() < n => return Err(bad("response body cut short")),
        Some(n) => &body[..n],
        None => body,
    };
    Ok((status, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Parsed, HttpError> {
        parse_request(input, &Limits::default())
    }

    fn complete(input: &[u8]) -> (Request, usize) {
        match parse(input) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn refused(input: &[u8]) -> HttpError {
        match parse(input) {
            Err(e) => e,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn a_get_without_a_body() {
        let (r, n) = complete(b"GET /vm HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/vm");
        assert_eq!(r.version, Version::Http11);
        assert_eq!(r.header("accept"), Some("*/*"));
        assert!(r.body.is_empty());
        assert_eq!(n, 50);
    }

    #[test]
    fn a_put_with_a_body_and_what_follows_it() {
        let input = b"PUT /vm/snapshot HTTP/1.1\r\nhost: x\r\nCONTENT-LENGTH:  16 \r\n\r\n\
                      {\"path\": \"/tmp\"}NEXT";
        let (r, n) = complete(input);
        assert_eq!(r.body, b"{\"path\": \"/tmp\"}");
        assert_eq!(&input[n..], b"NEXT");
    }

    #[test]
    fn http_1_0_needs_no_host() {
        let (r, _) = complete(b"GET /vm HTTP/1.0\r\n\r\n");
        assert_eq!(r.version, Version::Http10);
    }

    #[test]
    fn partial_requests_are_incomplete() {
        let full = b"PUT /vm/pause HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert!(matches!(parse(full), Ok(Parsed::Complete(_, 56))));
    }

    #[test]
    fn garbage_is_refused_as_soon_as_its_first_line_ends() {
        for input in [
            &b"hello\r\n"[..],
            b"GET\r\n",
            b"GET /vm\r\n",
            b"GET /vm HTTP/1.1 extra\r\n",
            b"GET  /vm HTTP/1.1\r\n",
            b"G(T /vm HTTP/1.1\r\n",
            b"GET vm HTTP/1.1\r\n",
            b"GET http://x/vm HTTP/1.1\r\n",
            b"GET /vm?x=1 HTTP/1.1\r\n",
            b"GET /vm FTP/1.1\r\n",
            b"\r\n",
            b"GET /vm HTTP/1.1\n",
            b"\xff\xfe /vm HTTP/1.1\r\n",
        ] {
            assert_eq!(
                refused(input).status(),
                400,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(refused(b"GET /vm HTTP/2.0\r\n").status(), 505);
        assert_eq!(refused(b"GET /vm HTTP/1.2\r\n").status(), 505);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let with = |h: &str| format!("GET /vm HTTP/1.1\r\nHost: a\r\n{h}\r\n\r\n").into_bytes();
        for h in [
            "NoColon",
            ": empty name",
            "Bad Name: x",
            " folded: x",
            "X: a\u{1}b",
            "Content-Length: -1",
            "Content-Length: 1e3",
            "Content-Length: ",
            "Content-Length: 2\r\nContent-Length: 3",
            "Host: twice",
        ] {
            assert_eq!(refused(&with(h)).status(), 400, "{h:?}");
        }
        // Bare LF inside the header section.
        assert_eq!(refused(b"GET /vm HTTP/1.1\r\nHost: a\n\r\n").status(), 400);
        // No Host in HTTP/1.1.
        assert_eq!(refused(b"GET /vm HTTP/1.1\r\n\r\n").status(), 400);
        // The same length twice is fine.
        let (r, _) = complete(&with("Content-Length: 0\r\nContent-Length: 0"));
        assert!(r.body.is_empty());
        assert_eq!(refused(&with("Transfer-Encoding: chunked")).status(), 501);
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            header_bytes: 64,
            headers: 2,
            body_bytes: 10,
        };
        let p = |input: &[u8]| parse_request(input, &limits);
        // A request line that never ends.
        assert_eq!(p(&[b'A'; 64]).unwrap_err(), HttpError::HeaderTooLarge(64));
        assert_eq!(p(&[b'A'; 63]), Ok(Parsed::Incomplete));
        // Headers that never end.
        let mut long = b"GET /vm HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        long.resize(100, b'x');
        assert_eq!(p(&long).unwrap_err().status(), 431);
        // Too many header fields.
        assert_eq!(
            p(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        // A body over the limit is refused from its Content-Length, before it arrives.
        assert_eq!(
            p(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
                .unwrap_err()
                .status(),
            413
        );
        assert_eq!(
            refused(
                b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            )
            .status(),
            413
        );
        assert!(matches!(
            p(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"),
            Ok(Parsed::Complete(..))
        ));
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::error(409, "cannot pause a VM that is ended");
        let bytes = r.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        let (status, body) = parse_response(&bytes).unwrap();
        assert_eq!(status, 409);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "cannot pause a VM that is ended");

        let mut r = Response::error(405, "x");
        r.allow = Some("PUT");
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .contains("\r\nAllow: PUT\r\n"));

        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap(),
            (204, vec![])
        );
    }
}
