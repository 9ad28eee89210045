//! The core's one source of time. Expiry, last-seen times, rates, token
//! lifetimes and delivery deadlines read it, so a test advances a
//! [`ManualClock`] instead of sleeping. A concrete type, not a trait
//! object: the relay path reads it per envelope, and a session's rate
//! limiters each hold one (one word).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

/// A rate per key (an address), on a [`Clock`].
pub type KeyedRateLimiter<K> =
    RateLimiter<K, DefaultKeyedStateStore<K>, Clock, NoOpMiddleware<Nanos>>;

/// One rate (a connection's envelopes), on a [`Clock`].
pub type DirectRateLimiter = RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Nanos>>;

/// The system's clock, or a manual one; clones read the same time.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<Manual>),
}

/// A manual clock's start and how far it has been advanced.
#[derive(Debug)]
struct Manual {
    instant: Instant,
    wall: SystemTime,
    advanced_ns: AtomicU64,
}

impl Manual {
    fn advanced(&self) -> Duration {
        Duration::from_nanos(self.advanced_ns.load(Ordering::Acquire))
    }
}

/// The time source of the rate limiters on the system clock: quanta reads
/// the TSC, cheaper than `Instant::now` per envelope. Made once, because
/// making one asks the CPU about its TSC with `CPUID`, which traps to the
/// hypervisor in a virtual machine (`perf`, issue 17).
fn quanta() -> &'static quanta::Clock {
    static CLOCK: std::sync::LazyLock<quanta::Clock> = std::sync::LazyLock::new(quanta::Clock::new);
    &CLOCK
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// A monotonic reading, for deadlines and ages.
    pub fn now(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::now(),
            Source::Manual(manual) => manual.instant + manual.advanced(),
        }
    }

    /// The wall-clock time, for what outlives the process or crosses it
    /// (last-seen times, a token's `exp`).
    pub fn wall(&self) -> SystemTime {
        match &self.0 {
            Source::System => SystemTime::now(),
            Source::Manual(manual) => manual.wall + manual.advanced(),
        }
    }

    /// The wall-clock time in milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> u64 {
        unix_ms(self.wall())
    }

    /// A rate per key on this clock.
    pub fn keyed_rate<K: std::hash::Hash + Eq + Clone>(&self, quota: Quota) -> KeyedRateLimiter<K> {
        RateLimiter::new(quota, DefaultKeyedStateStore::default(), self.clone())
    }

    /// One rate on this clock.
    pub fn direct_rate(&self, quota: Quota) -> DirectRateLimiter {
        RateLimiter::direct_with_clock(quota, self.clone())
    }

    /// How long a rate limiter of this clock asks to wait.
    pub fn retry_after(&self, not_until: &NotUntil<Nanos>) -> Duration {
        not_until.wait_time_from(governor::clock::Clock::now(self))
    }
}

/// Rate limiters (governor) read the same clock.
impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match &self.0 {
            Source::System => {
                let quanta = quanta();
                Nanos::new(quanta.delta_as_nanos(0, quanta.raw()))
            }
            Source::Manual(manual) => Nanos::new(manual.advanced_ns.load(Ordering::Acquire)),
        }
    }
}

impl governor::clock::ReasonablyRealtime for Clock {}

/// Milliseconds since the Unix epoch: identities are dated by the wall
/// clock, so their ages survive a restart.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A clock that moves only when told to: for tests that would otherwise
/// sleep to wait out a lifetime, a rate window or a deadline.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Manual>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Arc::new(Manual {
            instant: Instant::now(),
            wall: SystemTime::now(),
            advanced_ns: AtomicU64::new(0),
        }))
    }
}

impl ManualClock {
    /// A manual clock starting at the present moment.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock to hand to the core; it reads this one's time.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(self.0.clone()))
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .advanced_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ns| {
                Some(ns.saturating_add(by))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::Reference;
    use std::num::NonZeroU32;

    fn rate_now(clock: &Clock) -> Nanos {
        governor::clock::Clock::now(clock)
    }

    #[test]
    fn a_manual_clock_moves_every_reading_together_and_only_when_advanced() {
        let manual = ManualClock::new();
        let clock = manual.clock();
        let (instant, wall, nanos) = (clock.now(), clock.wall(), rate_now(&clock));
        assert_eq!(clock.now(), instant, "still");
        manual.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - instant, Duration::from_secs(90));
        assert_eq!(
            clock.wall().duration_since(wall).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            Duration::from(rate_now(&clock).duration_since(nanos)),
            Duration::from_secs(90),
            "rates see it too"
        );
        assert_eq!(clock.unix_ms(), unix_ms(wall) + 90_000);
    }

    #[test]
    fn a_rate_refills_when_the_clock_is_advanced() {
        let manual = ManualClock::new();
        let limiter = manual
            .clock()
            .direct_rate(Quota::per_second(NonZeroU32::new(1).unwrap()));
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err(), "the burst is spent");
        manual.advance(Duration::from_millis(999));
        let refused = limiter.check().unwrap_err();
        assert_eq!(
            manual.clock().retry_after(&refused),
            Duration::from_millis(1)
        );
        manual.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok());
    }

    #[test]
    fn the_system_clock_moves_by_itself() {
        let clock = Clock::system();
        let (instant, nanos) = (clock.now(), rate_now(&clock));
        while clock.now() == instant || rate_now(&clock) == nanos {
            std::hint::spin_loop();
        }
        assert!(clock.wall() > SystemTime::UNIX_EPOCH);
    }
}
