//! Fuzz the console WebSocket's frame reader (`serve/src/websocket.rs`): what a browser
//! (or anyone holding a console ticket) sends to `minivmm serve` after the handshake.
//!
//! The input is read twice: once from a plain slice, once through a reader that hands out
//! the same bytes in short pieces whose sizes come from the input's first bytes (as TCP
//! may). Both must give the same messages and stop at the same point, since framing must
//! not depend on how the bytes arrive. It must never panic, and every message must hold
//! what the protocol promises: data at most [`MAX_MESSAGE`] bytes, ping payloads at most
//! 125, a close code that a peer may send (RFC 6455 section 7.4), a protocol error with a
//! code the server may close with. Then frames built by the server's own writer
//! ([`write_frame`]) from the input, masked as a client would and fragmented with a ping
//! in between, must read back as the messages they carry.

#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use serve::websocket::{opcode, write_frame, Message, Reader, WsError, MAX_MESSAGE};

/// Hands out `data` in pieces of the sizes in `sizes` (cycled; 0 counts as 1).
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = match self.sizes {
            [] => buf.len(),
            s => usize::from(s[self.next % s.len()].max(1)),
        };
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What one read gave, comparable across readers.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Msg(Message),
    Protocol(&'static str, u16),
    Io(std::io::ErrorKind),
}

/// Every message `r` yields until it stops (at most `limit`), checking each.
fn read_all<R: Read>(r: R, limit: usize) -> Vec<Got> {
    let mut reader = Reader::new(r);
    let mut out = Vec::new();
    while out.len() < limit {
        let got = match reader.read_message() {
            Ok(m) => Got::Msg(m),
            Err(WsError::Protocol(why, code)) => Got::Protocol(why, code),
            Err(WsError::Io(e)) => Got::Io(e.kind()),
        };
        match &got {
            Got::Msg(Message::Data(d)) => assert!(d.len() <= MAX_MESSAGE, "{} bytes", d.len()),
            Got::Msg(Message::Ping(p)) => assert!(p.len() <= 125, "ping of {}", p.len()),
            Got::Msg(Message::Close(Some(c))) => {
                assert!(
                    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "close code {c} that no peer may send"
                )
            }
            Got::Protocol(_, code) => assert!(matches!(code, 1002 | 1007 | 1009), "{code}"),
            _ => {}
        }
        let end = !matches!(got, Got::Msg(_));
        out.push(got);
        if end {
            break;
        }
    }
    out
}

/// A client's frame: masked with `mask`.
fn client_frame(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut server = Vec::new();
    write_frame(&mut server, op, payload).unwrap();
    let head = server.len() - payload.len();
    let mut f = server[..head].to_vec();
    if !fin {
        f[0] &= 0x7f;
    }
    f[1] |= 0x80;
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes: the first byte says how many of the next ones size the pieces.
    let (sizes, frames) = match data.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n % 8).min(rest.len())),
        None => (&[][..], data),
    };
    let limit = 64;
    let whole = read_all(frames, limit);
    let pieces = read_all(
        Chunked {
            data: frames,
            sizes,
            next: 0,
        },
        limit,
    );
    assert_eq!(whole, pieces, "the same bytes in pieces read differently");

    // Frames as a client sends them: payloads cut from the input, alternating text and
    // binary messages, some fragmented, with a ping in between; read back whole.
    let mut wire = Vec::new();
    let mut want = Vec::new();
    let mask = [0x5a, frames.len() as u8, 0xc3, 0x01];
    for (i, chunk) in frames.chunks(97).enumerate() {
        let op = if i % 2 == 0 {
            opcode::BINARY
        } else {
            opcode::TEXT
        };
        let text;
        let payload = if op == opcode::TEXT {
            text = String::from_utf8_lossy(chunk).into_owned();
            text.as_bytes()
        } else {
            chunk
        };
        let cut = payload.len() / 2;
        if i % 3 == 0 && cut > 0 {
            // (A text message may be cut inside a UTF-8 sequence: only the whole is text.)
            let ping = &payload[..cut.min(125)];
            wire.extend(client_frame(false, op, &payload[..cut], mask));
            wire.extend(client_frame(true, opcode::PING, ping, mask));
            want.push(Got::Msg(Message::Ping(ping.to_vec())));
            wire.extend(client_frame(
                true,
                opcode::CONTINUATION,
                &payload[cut..],
                mask,
            ));
        } else {
            wire.extend(client_frame(true, op, payload, mask));
        }
        want.push(Got::Msg(Message::Data(payload.to_vec())));
    }
    wire.extend(client_frame(
        true,
        opcode::CLOSE,
        &1000u16.to_be_bytes(),
        mask,
    ));
    want.push(Got::Msg(Message::Close(Some(1000))));
    want.push(Got::Io(std::io::ErrorKind::UnexpectedEof));
    assert_eq!(read_all(&wire[..], usize::MAX), want);
});
