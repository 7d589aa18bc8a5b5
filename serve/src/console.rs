//! One VM's serial console on the manager's side: what the guest printed, kept three
//! ways, and who watches it.
//!
//! - `console.log` in the VM's state directory: everything, capped by rotation (when it
//!   would pass [`LOG_CAP`] it becomes `console.log.1`, replacing the older one, and a new
//!   `console.log` starts), so at most twice the cap is on disk. Offsets into the console
//!   ([`Console::read_from`]) count bytes since the VM was created; what rotated away is
//!   gone.
//! - A ring of the last [`SCROLLBACK`] bytes in memory: what a viewer gets first when it
//!   attaches.
//! - Viewers (WebSockets): each has an [`Outbox`] where new bytes are appended to what
//!   its writer thread has not sent yet, so one WebSocket frame carries everything that
//!   came while the last one was being written. A guest prints a byte at a time, and a
//!   busy host may not run a viewer's writer for a while: counting queued writes rather
//!   than bytes dropped a browser a few hundred bytes behind (a CI run's console closed
//!   in the middle of the kernel's first line). A viewer more than [`VIEWER_BACKLOG`]
//!   bytes behind is dropped (its connection shut down), so a slow browser never holds
//!   up the thread that reads the VM's output, and so never the VM; the page reconnects
//!   and gets the scrollback.
//!
//! The ring and the viewer list share one lock, taken by [`Console::append`] and
//! [`Console::attach`], so a new viewer gets every byte exactly once: the scrollback up to
//! the moment it attached, then everything after through its queue.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes of scrollback kept in memory and sent to a viewer when it attaches.
pub const SCROLLBACK: usize = 64 * 1024;
/// `console.log` is rotated when it would grow past this.
pub const LOG_CAP: u64 = 1024 * 1024;
/// Console bytes waiting for one viewer before it counts as too slow (four times the
/// scrollback, which is queued first).
pub const VIEWER_BACKLOG: usize = 4 * SCROLLBACK;
/// The most bytes one [`Console::read_from`] returns: everything the log keeps, so that
/// one request from offset 0 gets the whole of it.
pub const READ_MAX: usize = 2 * LOG_CAP as usize;

/// What a viewer's writer thread sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// Console bytes: everything queued since the last frame.
    Data(Vec<u8>),
    /// Answer a ping.
    Pong(Vec<u8>),
    /// Send a close frame with this code and stop.
    Close(u16),
}

/// One viewer's outbox, filled by the console (bytes), the viewer's reading thread
/// (pongs, a close) and [`Console::close_viewers`], emptied by its writer thread. Its
/// size is bounded: at most [`VIEWER_BACKLOG`] console bytes, the latest unanswered
/// ping (RFC 6455 lets a server answer only the latest) and one close code.
#[derive(Default)]
pub struct Outbox {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    data: Vec<u8>,
    pong: Option<Vec<u8>>,
    close: Option<u16>,
    /// Nothing more comes: the writer stops once the rest is sent.
    finished: bool,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.lock());
        self.wake.notify_one();
    }

    /// Queue console bytes; false, queuing nothing, when they would put more than
    /// [`VIEWER_BACKLOG`] bytes in waiting (or the outbox is finished).
    pub fn data(&self, bytes: &[u8]) -> bool {
        let mut p = self.lock();
        if p.finished || p.close.is_some() || p.data.len() + bytes.len() > VIEWER_BACKLOG {
            return false;
        }
        p.data.extend_from_slice(bytes);
        drop(p);
        self.wake.notify_one();
        true
    }

    /// Answer a ping with `payload` (replacing one not answered yet).
    pub fn pong(&self, payload: Vec<u8>) {
        self.update(|p| p.pong = Some(payload));
    }

    /// Send what is queued, then a close frame with `code` (the first code asked for).
    pub fn close(&self, code: u16) {
        self.update(|p| {
            p.close.get_or_insert(code);
        });
    }

    /// Nothing more will be queued: the writer sends what is there and stops.
    pub fn finish(&self) {
        self.update(|p| p.finished = true);
    }

    /// Waits for something to send: the bytes queued (all of them, as one message),
    /// then a pong, then the close. None once finished or closed and nothing is left.
    pub fn next(&self) -> Option<Out> {
        let mut p = self.lock();
        loop {
            if !p.data.is_empty() {
                return Some(Out::Data(std::mem::take(&mut p.data)));
            }
            if let Some(pong) = p.pong.take() {
                return Some(Out::Pong(pong));
            }
            if let Some(code) = p.close {
                p.finished = true;
                p.close = None;
                return Some(Out::Close(code));
            }
            if p.finished {
                return None;
            }
            p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Viewer {
    id: u64,
    outbox: Arc<Outbox>,
    /// To end both of the viewer's threads when it is dropped.
    stream: TcpStream,
}

struct Inner {
    ring: VecDeque<u8>,
    /// The current `console.log` (None if it could not be written: the VM runs on, the
    /// ring and the viewers still work).
    log: Option<File>,
    /// Bytes written since creation (the offset of the next byte).
    total: u64,
    /// Offset of the first byte of `console.log`.
    cur_start: u64,
    /// Offset of the first byte of `console.log.1`, if there is one.
    prev_start: Option<u64>,
    viewers: Vec<Viewer>,
    next_id: u64,
}

/// One VM's console.
pub struct Console {
    path: PathBuf,
    old_path: PathBuf,
    inner: Mutex<Inner>,
}

impl Console {
    /// A console logging to `dir/console.log` (created empty).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("console.log");
        let log = File::create(&path)?;
        Ok(Self {
            old_path: dir.join("console.log.1"),
            path,
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                log: Some(log),
                total: 0,
                cur_start: 0,
                prev_start: None,
                viewers: Vec::new(),
                next_id: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the guest printed: to the log, the ring and every viewer.
    pub fn append(&self, bytes: &[u8]) {
        let mut g = self.lock();
        let inner = &mut *g;
        if inner.total - inner.cur_start + bytes.len() as u64 > LOG_CAP {
            self.rotate(inner);
        }
        if let Some(f) = inner.log.as_mut() {
            if let Err(e) = f.write_all(bytes) {
                log::warn!(
                    "{}: {e}; the console is no longer logged",
                    self.path.display()
                );
                inner.log = None;
            }
        }
        inner.total += bytes.len() as u64;
        inner.ring.extend(bytes);
        let excess = inner.ring.len().saturating_sub(SCROLLBACK);
        inner.ring.drain(..excess);
        if inner.viewers.is_empty() {
            return;
        }
        inner.viewers.retain(|v| {
            if v.outbox.data(bytes) {
                return true;
            }
            log::warn!(
                "console viewer {} is more than {VIEWER_BACKLOG} bytes behind: dropping it",
                v.id
            );
            v.outbox.finish();
            let _ = v.stream.shutdown(Shutdown::Both);
            false
        });
    }

    fn rotate(&self, inner: &mut Inner) {
        if inner.log.is_none() {
            return;
        }
        let renamed = std::fs::rename(&self.path, &self.old_path);
        match renamed.and_then(|()| File::create(&self.path)) {
            Ok(f) => {
                inner.log = Some(f);
                inner.prev_start = Some(inner.cur_start);
                inner.cur_start = inner.total;
            }
            Err(e) => {
                log::warn!(
                    "rotating {}: {e}; the console is no longer logged",
                    self.path.display()
                );
                inner.log = None;
            }
        }
    }

    /// Add a viewer: the scrollback is queued in `outbox` first, then every new byte
    /// (until the viewer falls [`VIEWER_BACKLOG`] bytes behind: then `stream` is shut
    /// down). Returns the viewer's id.
    pub fn attach(&self, outbox: Arc<Outbox>, stream: TcpStream) -> u64 {
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        let (a, b) = g.ring.as_slices();
        outbox.data(a);
        outbox.data(b);
        g.viewers.push(Viewer { id, outbox, stream });
        id
    }

    /// Remove viewer `id` (its connection ended).
    pub fn detach(&self, id: u64) {
        self.lock().viewers.retain(|v| v.id != id);
    }

    /// How many viewers are attached.
    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    /// Close every viewer (the VM is deleted, or the manager stops): what is queued,
    /// then a close frame.
    pub fn close_viewers(&self) {
        for v in self.lock().viewers.drain(..) {
            v.outbox.close(1001);
        }
    }

    /// The console from byte `offset` on (at most [`READ_MAX`] bytes), as far as the log
    /// still has it: (the offset of the first byte returned, the bytes, the total so far).
    /// An offset before what the log keeps starts at the oldest byte kept; one past the
    /// end returns nothing.
    pub fn read_from(&self, offset: u64) -> std::io::Result<(u64, Vec<u8>, u64)> {
        let g = self.lock();
        let oldest = g.prev_start.unwrap_or(g.cur_start);
        let start = offset.clamp(oldest, g.total);
        let mut out = Vec::new();
        let want = ((g.total - start) as usize).min(READ_MAX);
        if start < g.cur_start {
            let n = ((g.cur_start - start) as usize).min(want);
            read_at(&self.old_path, start - oldest, n, &mut out)?;
        }
        if out.len() < want {
            let from = start.max(g.cur_start) - g.cur_start;
            read_at(&self.path, from, want - out.len(), &mut out)?;
        }
        Ok((start, out, g.total))
    }
}

fn read_at(path: &Path, pos: u64, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(pos))?;
    f.take(len as u64).read_to_end(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("serve-console-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn socket_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn the_log_rotates_and_offsets_stay_absolute() {
        let d = scratch("rotate");
        let c = Console::new(&d).unwrap();
        let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let n = (LOG_CAP as usize / chunk.len()) * 2 + 3;
        for _ in 0..n {
            c.append(&chunk);
        }
        let total = (n * chunk.len()) as u64;
        let (start, bytes, t) = c.read_from(0).unwrap();
        assert_eq!(t, total);
        // Two files' worth kept at most, and what is returned is the stream's tail part.
        assert!(start > 0 && total - start <= 2 * LOG_CAP, "{start}");
        assert_eq!(bytes.len() as u64, (total - start).min(READ_MAX as u64));
        assert_eq!(bytes[0], chunk[(start % 4096) as usize]);
        let (s2, tail, _) = c.read_from(total - 10).unwrap();
        assert_eq!((s2, tail.as_slice()), (total - 10, &chunk[4086..]));
        let (_, none, _) = c.read_from(total + 5).unwrap();
        assert!(none.is_empty());
        assert!(std::fs::metadata(d.join("console.log")).unwrap().len() <= LOG_CAP);
        assert!(std::fs::metadata(d.join("console.log.1")).unwrap().len() <= LOG_CAP);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn viewers_get_the_scrollback_then_everything_and_slow_ones_are_dropped() {
        let d = scratch("viewers");
        let c = Console::new(&d).unwrap();
        c.append(&vec![b'a'; SCROLLBACK + 10]);
        c.append(b"end");
        let outbox = Arc::new(Outbox::default());
        let (_peer, ours) = socket_pair();
        c.attach(outbox.clone(), ours);
        c.append(b"next");
        let Some(Out::Data(first)) = outbox.next() else {
            panic!("not data")
        };
        assert_eq!(first.len(), SCROLLBACK + 4);
        assert!(first.ends_with(b"aendnext"));
        // A guest prints a byte at a time: what a busy writer has not sent yet grows into
        // one message, and nobody is dropped for it.
        for _ in 0..10_000 {
            c.append(b"x");
        }
        assert_eq!(c.viewers(), 1);
        assert_eq!(outbox.next(), Some(Out::Data(vec![b'x'; 10_000])));
        // A viewer that never reads is dropped once it is VIEWER_BACKLOG bytes behind;
        // nobody blocks.
        let chunk = [b'y'; 4096];
        for _ in 0..VIEWER_BACKLOG / chunk.len() {
            c.append(&chunk);
        }
        assert_eq!(c.viewers(), 1);
        c.append(b"z");
        assert_eq!(c.viewers(), 0);
        assert_eq!(outbox.next(), Some(Out::Data(vec![b'y'; VIEWER_BACKLOG])));
        assert_eq!(outbox.next(), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_outbox_sends_data_then_the_latest_pong_then_its_close() {
        let o = Outbox::default();
        assert!(o.data(b"ab"));
        o.pong(b"1".to_vec());
        o.pong(b"2".to_vec());
        assert!(o.data(b"c"));
        o.close(1001);
        o.close(1000);
        assert!(!o.data(b"late"), "nothing is queued after a close");
        assert_eq!(o.next(), Some(Out::Data(b"abc".to_vec())));
        assert_eq!(o.next(), Some(Out::Pong(b"2".to_vec())));
        assert_eq!(o.next(), Some(Out::Close(1001)));
        assert_eq!(o.next(), None);
        // A writer waiting on an empty outbox wakes when it is finished.
        let o = Arc::new(Outbox::default());
        let w = {
            let o = o.clone();
            std::thread::spawn(move || (o.next(), o.next()))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(o.data(b"late"));
        o.finish();
        let (a, b) = w.join().unwrap();
        assert!(
            a == Some(Out::Data(b"late".to_vec())) && b.is_none(),
            "{a:?} {b:?}"
        );
    }
}
