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
//! - Viewers (WebSockets): each has a bounded queue ([`VIEWER_QUEUE`] chunks); a viewer
//!   whose queue is full is dropped (its connection shut down), so a slow browser never
//!   holds up the thread that reads the VM's output, and so never the VM.
//!
//! The ring and the viewer list share one lock, taken by [`Console::append`] and
//! [`Console::attach`], so a new viewer gets every byte exactly once: the scrollback up to
//! the moment it attached, then everything after through its queue.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes of scrollback kept in memory and sent to a viewer when it attaches.
pub const SCROLLBACK: usize = 64 * 1024;
/// `console.log` is rotated when it would grow past this.
pub const LOG_CAP: u64 = 1024 * 1024;
/// Chunks (of up to 4 KiB) queued for one viewer before it counts as too slow.
pub const VIEWER_QUEUE: usize = 256;
/// The most bytes one [`Console::read_from`] returns: everything the log keeps, so that
/// one request from offset 0 gets the whole of it.
pub const READ_MAX: usize = 2 * LOG_CAP as usize;

/// What a viewer's writer thread sends.
pub enum Out {
    /// Console bytes (shared between viewers).
    Data(Arc<Vec<u8>>),
    /// Answer a ping.
    Pong(Vec<u8>),
    /// Send a close frame with this code and stop.
    Close(u16),
}

struct Viewer {
    id: u64,
    tx: SyncSender<Out>,
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
        let chunk = Arc::new(bytes.to_vec());
        inner
            .viewers
            .retain(|v| match v.tx.try_send(Out::Data(chunk.clone())) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    log::info!("a console viewer is too slow: dropping it");
                    let _ = v.stream.shutdown(Shutdown::Both);
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
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

    /// Add a viewer: returns the scrollback it must show first and its id. From now on
    /// every new byte goes to `tx` (or the viewer is dropped, `stream` shut down, when
    /// its queue is full).
    pub fn attach(&self, tx: SyncSender<Out>, stream: TcpStream) -> (Vec<u8>, u64) {
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        g.viewers.push(Viewer { id, tx, stream });
        (g.ring.iter().copied().collect(), id)
    }

    /// Remove viewer `id` (its connection ended).
    pub fn detach(&self, id: u64) {
        self.lock().viewers.retain(|v| v.id != id);
    }

    /// How many viewers are attached.
    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    /// Close every viewer (the VM is deleted, or the manager stops): a close frame, then
    /// the connection shut down if the frame cannot be queued.
    pub fn close_viewers(&self) {
        for v in self.lock().viewers.drain(..) {
            if v.tx.try_send(Out::Close(1001)).is_err() {
                let _ = v.stream.shutdown(Shutdown::Both);
            }
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
        let (tx, rx) = std::sync::mpsc::sync_channel(VIEWER_QUEUE);
        let (_peer, ours) = socket_pair();
        let (back, _) = c.attach(tx, ours);
        assert_eq!(back.len(), SCROLLBACK);
        assert!(back.ends_with(b"aend"));
        c.append(b"next");
        match rx.try_recv().unwrap() {
            Out::Data(b) => assert_eq!(b.as_slice(), b"next"),
            _ => panic!("not data"),
        }
        // A viewer that never reads is dropped once its queue is full; nobody blocks.
        for _ in 0..VIEWER_QUEUE + 1 {
            c.append(b"x");
        }
        assert_eq!(c.viewers(), 0);
        drop(rx);
        let _ = std::fs::remove_dir_all(&d);
    }
}
