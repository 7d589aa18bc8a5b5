//! The WebSocket protocol (RFC 6455), server side, as the console needs it: the opening
//! handshake's checks and answer, frames written (unmasked, unfragmented) and frames read
//! (masked, as clients must send them; fragmented messages joined; pings answered by the
//! caller; a message larger than [`MAX_MESSAGE`] ends the connection).

use std::io::{Read, Write};

use base64::Engine;

use crate::http::Request;

/// The GUID of RFC 6455 section 1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest message a client may send (typed or pasted input).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Opcodes.
pub mod opcode {
    /// A continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// A text frame.
    pub const TEXT: u8 = 0x1;
    /// A binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xa;
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// Whether header `value` lists `token` (comma-separated, case-insensitive).
fn lists(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Check an opening handshake and return the `101` answer to send, or why it is not
/// one (400).
pub fn handshake(req: &Request) -> Result<String, String> {
    if req.method != "GET" {
        return Err("a WebSocket opens with GET".into());
    }
    if !lists(req.header("upgrade"), "websocket") || !lists(req.header("connection"), "upgrade") {
        return Err("this path is a WebSocket: send Upgrade: websocket".into());
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err("Sec-WebSocket-Version must be 13".into());
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or("Sec-WebSocket-Key is missing")?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err("Sec-WebSocket-Key is not 16 bytes in base64".into()),
    }
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    ))
}

/// Write one whole, unmasked frame.
pub fn write_frame(w: &mut impl Write, op: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(10);
    head.push(0x80 | op);
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xffff => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    // One write for small frames: no tiny TCP segments for the header alone.
    if payload.len() <= 4096 {
        head.extend_from_slice(payload);
        return w.write_all(&head);
    }
    w.write_all(&head)?;
    w.write_all(payload)
}

/// What a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A whole text or binary message: bytes for the console.
    Data(Vec<u8>),
    /// A ping, with its payload (answer with a pong).
    Ping(Vec<u8>),
    /// A pong (ignored).
    Pong,
    /// A close frame, with its status code if any.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The peer broke the protocol (close with 1002, or 1009 for size, 1007 for text).
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str, u16),
    /// The connection ended or failed.
    #[error("WebSocket connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads messages from a client.
pub struct Reader<R> {
    r: R,
    /// A fragmented message so far: (is text, bytes).
    partial: Option<(bool, Vec<u8>)>,
}

impl<R: Read> Reader<R> {
    /// Read from `r`.
    pub fn new(r: R) -> Self {
        Self { r, partial: None }
    }

    /// The next message (control frames as they come, data once whole).
    pub fn read_message(&mut self) -> Result<Message, WsError> {
        loop {
            let mut h = [0u8; 2];
            self.r.read_exact(&mut h)?;
            let fin = h[0] & 0x80 != 0;
            if h[0] & 0x70 != 0 {
                return Err(WsError::Protocol("reserved bits set", 1002));
            }
            let op = h[0] & 0x0f;
            if h[1] & 0x80 == 0 {
                return Err(WsError::Protocol("client frames must be masked", 1002));
            }
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.r.read_exact(&mut b)?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.r.read_exact(&mut b)?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let control = op & 0x8 != 0;
            if control && (len > 125 || !fin) {
                return Err(WsError::Protocol(
                    "control frame too long or fragmented",
                    1002,
                ));
            }
            let sofar = self.partial.as_ref().map_or(0, |(_, b)| b.len());
            if !control && len > (MAX_MESSAGE - sofar) as u64 {
                return Err(WsError::Protocol("message too large", 1009));
            }
            let mut mask = [0u8; 4];
            self.r.read_exact(&mut mask)?;
            let mut payload = vec![0u8; len as usize];
            self.r.read_exact(&mut payload)?;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            match op {
                opcode::PING => return Ok(Message::Ping(payload)),
                opcode::PONG => return Ok(Message::Pong),
                opcode::CLOSE => return close_code(&payload).map(Message::Close),
                opcode::TEXT | opcode::BINARY => {
                    if self.partial.is_some() {
                        return Err(WsError::Protocol(
                            "a new message inside a fragmented one",
                            1002,
                        ));
                    }
                    self.partial = Some((op == opcode::TEXT, payload));
                }
                opcode::CONTINUATION => match self.partial.as_mut() {
                    Some((_, bytes)) => bytes.extend_from_slice(&payload),
                    None => return Err(WsError::Protocol("continuation without a message", 1002)),
                },
                _ => return Err(WsError::Protocol("unknown opcode", 1002)),
            }
            if fin {
                let (text, bytes) = self.partial.take().unwrap_or_default();
                if text && std::str::from_utf8(&bytes).is_err() {
                    return Err(WsError::Protocol("text message is not UTF-8", 1007));
                }
                return Ok(Message::Data(bytes));
            }
        }
    }
}

/// The status code of a close frame's body (RFC 6455 sections 5.5.1 and 7.4): none, or
/// two bytes holding a code that a peer may send, then a UTF-8 reason.
fn close_code(body: &[u8]) -> Result<Option<u16>, WsError> {
    let [a, b, reason @ ..] = body else {
        return match body.len() {
            0 => Ok(None),
            _ => Err(WsError::Protocol("close frame with a 1-byte body", 1002)),
        };
    };
    let code = u16::from_be_bytes([*a, *b]);
    // 1004-1006 and 1015 are reserved or must not be sent; 1016-2999 are not assigned.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(WsError::Protocol(
            "close code that a peer may not send",
            1002,
        ));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(WsError::Protocol("close reason is not UTF-8", 1007));
    }
    Ok(Some(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn messages_are_read_unmasked_and_joined() {
        let mut input = frame(true, opcode::TEXT, b"ls\r");
        input.extend(frame(false, opcode::BINARY, b"ab"));
        input.extend(frame(true, opcode::PING, b"p"));
        input.extend(frame(true, opcode::CONTINUATION, b"cd"));
        input.extend(frame(true, opcode::BINARY, &vec![7u8; 300]));
        input.extend(frame(true, opcode::CLOSE, &1000u16.to_be_bytes()));
        let mut r = Reader::new(&input[..]);
        assert_eq!(r.read_message().unwrap(), Message::Data(b"ls\r".to_vec()));
        assert_eq!(r.read_message().unwrap(), Message::Ping(b"p".to_vec()));
        assert_eq!(r.read_message().unwrap(), Message::Data(b"abcd".to_vec()));
        assert_eq!(r.read_message().unwrap(), Message::Data(vec![7u8; 300]));
        assert_eq!(r.read_message().unwrap(), Message::Close(Some(1000)));
        assert!(matches!(r.read_message(), Err(WsError::Io(_))));
    }

    #[test]
    fn protocol_errors_end_the_connection() {
        let bad = |input: Vec<u8>| Reader::new(&input[..]).read_message().unwrap_err();
        let mut unmasked = frame(true, opcode::TEXT, b"x");
        unmasked[1] &= 0x7f;
        assert!(matches!(bad(unmasked), WsError::Protocol(_, 1002)));
        assert!(matches!(
            bad(frame(true, opcode::BINARY, &vec![0; MAX_MESSAGE + 1])),
            WsError::Protocol(_, 1009)
        ));
        assert!(matches!(
            bad(frame(true, opcode::CONTINUATION, b"x")),
            WsError::Protocol(_, 1002)
        ));
        assert!(matches!(
            bad(frame(true, opcode::TEXT, &[0xff, 0xfe])),
            WsError::Protocol(_, 1007)
        ));
        assert!(matches!(
            bad(frame(false, opcode::PING, b"")),
            WsError::Protocol(_, 1002)
        ));
        let mut two = frame(false, opcode::TEXT, b"a");
        two.extend(frame(true, opcode::TEXT, b"b"));
        assert!(matches!(bad(two), WsError::Protocol(_, 1002)));
    }

    #[test]
    fn close_frames_carry_a_valid_code_and_a_utf8_reason() {
        let read = |body: &[u8]| Reader::new(&frame(true, opcode::CLOSE, body)[..]).read_message();
        assert_eq!(read(b"").unwrap(), Message::Close(None));
        assert_eq!(read(b"\x03\xe9bye").unwrap(), Message::Close(Some(1001)));
        assert_eq!(
            read(&4000u16.to_be_bytes()).unwrap(),
            Message::Close(Some(4000))
        );
        // Found by fuzz/fuzz_targets/websocket.rs: any code was taken, 1 byte too.
        for bad in [&[0x03][..], &[0x77, 0x02], &1005u16.to_be_bytes(), &[0, 0]] {
            assert!(
                matches!(read(bad), Err(WsError::Protocol(_, 1002))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            read(b"\x03\xe8\xff"),
            Err(WsError::Protocol(_, 1007))
        ));
    }

    #[test]
    fn frames_are_written_with_the_right_length_forms() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            write_frame(&mut out, opcode::BINARY, &vec![1u8; n]).unwrap();
            assert_eq!(out[0], 0x82);
            let head = match n {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), head + n, "{n}");
        }
    }
}
