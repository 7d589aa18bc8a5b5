//! Rate-limited logging for guest-triggered events.
//!
//! A guest controls how often it pokes a device. If every bad register write or malformed
//! virtio request logged a line, a misbehaving (or hostile) guest could flood the host's log
//! and slow the VMM down with formatting and I/O. Devices therefore log such events through
//! [`warn_ratelimited!`](crate::warn_ratelimited) and friends: each call site gets its own
//! [`RateLimiter`], which lets through at most [`BURST`] messages per [`WINDOW`]; what it
//! drops is counted, and the next message that gets through is preceded by a
//! "suppressed K similar messages" line so the drop is never silent.
//!
//! ```
//! # let queue = 3;
//! devices::warn_ratelimited!("virtio-mmio: notify for unknown queue {queue}");
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many messages one call site may log per [`WINDOW`].
pub const BURST: u32 = 10;
/// The length of one rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    /// Start of the current window; `None` before the first message.
    window_start: Option<Instant>,
    /// Messages let through in the current window.
    passed: u32,
    /// Messages dropped since the last one that got through.
    suppressed: u64,
}

/// A fixed-window limiter: at most `burst` events per `window`. Usable as a `static`
/// (the constructor is `const`), which is how the logging macros give every call site
/// its own limiter.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

impl RateLimiter {
    /// A limiter letting `burst` events through per `window`.
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(State {
                window_start: None,
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Should an event happening now be logged? `Some(k)` means yes, and that `k` events
    /// were dropped since the last one that was let through; `None` means drop it.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) at an explicit time (for tests; times should not go
    /// backwards, and if they do the window simply does not advance).
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while logging; the counters
        // are still usable.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = match s.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.window,
        };
        if expired {
            s.window_start = Some(now);
            s.passed = 0;
        }
        if s.passed < self.burst {
            s.passed += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            None
        }
    }
}

/// The `log` crate, re-exported so the macros work in crates that do not depend on it.
#[doc(hidden)]
pub use log as __log;

/// Log at `level` through a per-call-site [`RateLimiter`] ([`BURST`] messages per
/// [`WINDOW`]). Arguments are those of `log::log!` after the level.
#[macro_export]
macro_rules! log_ratelimited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::ratelimit::RateLimiter =
            $crate::ratelimit::RateLimiter::new($crate::ratelimit::BURST, $crate::ratelimit::WINDOW);
        let level: $crate::ratelimit::__log::Level = $level;
        if $crate::ratelimit::__log::log_enabled!(level) {
            if let Some(suppressed) = LIMITER.check() {
                if suppressed > 0 {
                    $crate::ratelimit::__log::log!(
                        level,
                        "(suppressed {} similar messages)",
                        suppressed
                    );
                }
                $crate::ratelimit::__log::log!(level, $($arg)+);
            }
        }
    }};
}

/// `log::warn!`, rate-limited per call site (see [`log_ratelimited!`]).
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)+) => {
        $crate::log_ratelimited!($crate::ratelimit::__log::Level::Warn, $($arg)+)
    };
}

/// `log::error!`, rate-limited per call site (see [`log_ratelimited!`]).
#[macro_export]
macro_rules! error_ratelimited {
    ($($arg:tt)+) => {
        $crate::log_ratelimited!($crate::ratelimit::__log::Level::Error, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppress_then_report() {
        let rl = RateLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0 + Duration::from_millis(10)), Some(0));
        // The 4th..6th in the same window are dropped.
        for _ in 0..3 {
            assert_eq!(rl.check_at(t0 + Duration::from_millis(500)), None);
        }
        // Next window: the first message carries the count of dropped ones.
        assert_eq!(rl.check_at(t0 + Duration::from_secs(1)), Some(3));
        assert_eq!(rl.check_at(t0 + Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn time_going_backwards_does_not_reset() {
        let rl = RateLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0 - Duration::from_secs(5)), None);
    }

    #[test]
    fn macros_compile_and_run() {
        for i in 0..(BURST + 5) {
            crate::warn_ratelimited!("test message {i}");
            crate::error_ratelimited!("test error {}", i);
        }
    }
}
