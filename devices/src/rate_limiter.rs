//! Rate limits for a device's I/O: token buckets for bytes and for operations.
//!
//! Each bucket refills continuously at its rate and holds at most one second's worth, so a
//! device that was idle may burst for up to a second, and over any longer stretch it moves
//! at most `rate` per second. The device asks [`RateLimiter::wait`] before each request or
//! frame; `None` means go. After the request it [`charge`](RateLimiter::charge)s what the
//! request really cost, which may drive a bucket below zero (one request larger than a
//! second's worth still goes through, and the debt is paid by waiting before the next).
//! While a bucket is not positive, `wait` says how long until it is, and the device's worker
//! sleeps on a timer that long instead of serving the queue.
//!
//! Cf. Firecracker's `RateLimiter`, which charges before the request and also has a
//! one-time burst; here the model is simpler: charge after, burst of one second.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::virtio::worker::WorkerContext;

/// A limit on a device: bytes and/or operations (requests, frames) per second. `None`
/// means no limit on that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Operations per second.
    pub ops_per_sec: Option<u64>,
}

impl RateLimit {
    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        self.bytes_per_sec.is_some() || self.ops_per_sec.is_some()
    }
}

#[derive(Debug)]
struct Bucket {
    /// Tokens per second; also the bucket's size.
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
    }

    /// How long until the bucket is positive again (`None`: it is).
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        if self.tokens > 0.0 {
            return None;
        }
        // Until just past zero (a timer firing a hair early would find the bucket still
        // empty and wait again). Not a whole token past: for a bucket of operations that
        // would let two requests through back to back.
        let secs = -self.tokens / self.rate;
        Some(Duration::from_secs_f64(secs) + Duration::from_micros(100))
    }
}

/// The buckets of one direction of one device.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<Bucket>,
    ops: Option<Bucket>,
}

impl RateLimiter {
    /// A limiter for `limit`, full (a second's burst available); `None` if `limit` limits
    /// nothing.
    pub fn new(limit: RateLimit) -> Option<Self> {
        Self::new_at(limit, Instant::now())
    }

    fn new_at(limit: RateLimit, now: Instant) -> Option<Self> {
        limit.is_limited().then(|| Self {
            bytes: limit.bytes_per_sec.map(|r| Bucket::new(r, now)),
            ops: limit.ops_per_sec.map(|r| Bucket::new(r, now)),
        })
    }

    /// How long to wait before the next request may start (`None`: now).
    pub fn wait(&mut self) -> Option<Duration> {
        self.wait_at(Instant::now())
    }

    fn wait_at(&mut self, now: Instant) -> Option<Duration> {
        let a = self.bytes.as_mut().and_then(|b| b.wait(now));
        let b = self.ops.as_mut().and_then(|b| b.wait(now));
        a.max(b)
    }

    /// Charge a finished request: `ops` operations moving `bytes` bytes.
    pub fn charge(&mut self, ops: u64, bytes: u64) {
        if let Some(b) = &mut self.bytes {
            b.tokens -= bytes as f64;
        }
        if let Some(b) = &mut self.ops {
            b.tokens -= ops as f64;
        }
    }
}

/// The timer a device's worker sleeps on while a limit makes it wait: made with the device
/// (no new fd once the worker is sandboxed), put in the worker's epoll set at the first
/// activation, armed for the longest wait asked, read when it fires.
pub struct LimitTimer {
    timer: TimerFd,
    watched: bool,
    armed: bool,
}

impl LimitTimer {
    /// A timer, not yet watched.
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self {
            timer,
            watched: false,
            armed: false,
        })
    }

    /// Watch it in the worker's epoll set as `token` (once; later calls do nothing).
    pub fn watch(&mut self, ctx: &mut WorkerContext, token: u32, device: &str) {
        if self.watched {
            return;
        }
        match ctx.add_fd(self.timer.as_raw_fd(), token) {
            Ok(()) => self.watched = true,
            Err(e) => log::error!("{device}: rate-limit timer: {e}; not limiting"),
        }
    }

    /// Fire in `wait`, unless it is already running (or could not be watched).
    pub fn arm(&mut self, wait: Duration, device: &str) {
        if self.armed || !self.watched {
            return;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => self.armed = true,
            Err(e) => log::error!("{device}: rate-limit timer: {e}"),
        }
    }

    /// It fired (its fd is readable): consume the expiry.
    pub fn fired(&mut self) {
        let _ = self.timer.wait(); // readable: returns at once
        self.armed = false;
    }

    /// Disarm it (device reset).
    pub fn clear(&mut self) {
        let _ = self.timer.clear();
        self.armed = false;
    }

    /// Whether a wait is running.
    pub fn is_armed(&self) -> bool {
        self.armed
    }
}

/// `wait` for an optional limiter.
pub fn wait(limiter: &mut Option<RateLimiter>) -> Option<Duration> {
    limiter.as_mut().and_then(RateLimiter::wait)
}

/// `charge` for an optional limiter.
pub fn charge(limiter: &mut Option<RateLimiter>, ops: u64, bytes: u64) {
    if let Some(l) = limiter {
        l.charge(ops, bytes);
    }
}

/// Parse a rate: a number with an optional `K`, `M` or `G` suffix (powers of 1024), e.g.
/// `10M` (bytes) or `500` (operations). Zero is refused: it would stop the device.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("rate '{s}' is not a number with an optional K, M or G"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("rate '{s}' is too large"))?;
    if v == 0 {
        return Err(format!("rate '{s}' must be above zero"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(bytes: Option<u64>, ops: Option<u64>) -> RateLimit {
        RateLimit {
            bytes_per_sec: bytes,
            ops_per_sec: ops,
        }
    }

    /// Simulated time: a greedy client that sends `size`-byte requests whenever allowed.
    fn moved_in(l: &mut RateLimiter, t0: Instant, secs: u64, size: u64) -> (u64, u64) {
        let (mut bytes, mut ops) = (0, 0);
        let mut now = t0;
        let end = t0 + Duration::from_secs(secs);
        while now < end {
            match l.wait_at(now) {
                None => {
                    l.charge(1, size);
                    bytes += size;
                    ops += 1;
                }
                Some(w) => now += w,
            }
        }
        (bytes, ops)
    }

    #[test]
    fn no_limit_no_limiter() {
        assert!(RateLimiter::new(RateLimit::default()).is_none());
    }

    #[test]
    fn a_greedy_client_gets_the_rate_plus_one_second_of_burst() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new_at(limit(Some(1 << 20), None), t0).unwrap();
        // 10 s at 1 MiB/s in 64 KiB requests: 10 MiB, plus the 1 MiB the bucket held, plus
        // at most one request over.
        let (bytes, _) = moved_in(&mut l, t0, 10, 64 << 10);
        assert!(
            (11 << 20..=(11 << 20) + (64 << 10)).contains(&bytes),
            "{bytes}"
        );
    }

    #[test]
    fn requests_larger_than_the_bucket_still_go_at_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new_at(limit(Some(100_000), None), t0).unwrap();
        let (bytes, ops) = moved_in(&mut l, t0, 20, 1_000_000);
        // 20 s at 100 kB/s: 2 MB (+ 1 request in flight and the first burst).
        assert!((2_000_000..=3_100_000).contains(&bytes), "{bytes}");
        assert!(ops >= 2);
    }

    #[test]
    fn ops_and_bytes_both_hold() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new_at(limit(Some(1 << 30), Some(100)), t0).unwrap();
        let (_, ops) = moved_in(&mut l, t0, 10, 512);
        assert!((1000..=1101).contains(&ops), "{ops}");
        let mut l = RateLimiter::new_at(limit(Some(10_000), Some(1_000_000)), t0).unwrap();
        let (bytes, _) = moved_in(&mut l, t0, 10, 1000);
        assert!((100_000..=111_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn rates_parse_with_suffixes() {
        assert_eq!(parse_rate("500"), Ok(500));
        assert_eq!(parse_rate("10K"), Ok(10 << 10));
        assert_eq!(parse_rate("2m"), Ok(2 << 20));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert!(parse_rate("0").unwrap_err().contains("above zero"));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("").is_err());
        assert!(parse_rate("99999999999999999999G").is_err());
    }
}
