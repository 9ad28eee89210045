//! Admission: the cap on live connections, the caps on connections still
//! authenticating (in all and per address), and the per-address connect
//! rate. A refusal here costs the gateway nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::Quota;
use tokio::sync::Notify;

use super::clock::{Clock, KeyedRateLimiter};
use super::limits::{Limits, ip_key};
use super::wire::HttpError;

/// Why a new connection or registration is refused before any work is done.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The global connection cap is reached.
    #[error("the gateway is at its limit of {0} connections")]
    AtCapacity(usize),
    /// This client IP is over its rate.
    #[error("too many requests from this address; retry in {} ms", .0.as_millis())]
    RateLimited(Duration),
    /// Too many connections are still authenticating.
    #[error("the gateway is at its limit of {0} connections still authenticating")]
    PendingFull(usize),
    /// This client IP has too many connections still authenticating.
    #[error("this address has {0} connections still authenticating, the most it may have")]
    PendingFromAddress(usize),
}

impl Refusal {
    /// Every cause, as metrics label them.
    pub const CAUSES: [&'static str; 5] = [
        "shutting_down",
        "at_capacity",
        "rate_limited",
        "pending_full",
        "pending_from_address",
    ];

    /// This refusal's cause, as metrics label it.
    pub fn cause(&self) -> &'static str {
        match self {
            Refusal::ShuttingDown => "shutting_down",
            Refusal::AtCapacity(_) => "at_capacity",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::PendingFull(_) => "pending_full",
            Refusal::PendingFromAddress(_) => "pending_from_address",
        }
    }

    /// What an HTTP client is answered.
    pub fn http_error(&self) -> HttpError {
        match self {
            Refusal::RateLimited(_) => HttpError::RateLimited,
            Refusal::ShuttingDown
            | Refusal::AtCapacity(_)
            | Refusal::PendingFull(_)
            | Refusal::PendingFromAddress(_) => HttpError::Unavailable,
        }
    }

    /// How long the client should wait, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited(wait) => Some(*wait),
            _ => None,
        }
    }
}

pub(super) fn quota(rate: NonZeroU32, burst: NonZeroU32) -> Quota {
    Quota::per_second(rate).allow_burst(burst)
}

/// The caps and the connect rate, and the slots they hand out.
#[derive(Debug)]
pub struct Admissions {
    books: Arc<Books>,
    connect_rate: KeyedRateLimiter<IpAddr>,
    clock: Clock,
    max_connections: usize,
    max_pending: usize,
    max_pending_per_ip: usize,
}

/// The counts the slots give back on drop.
#[derive(Debug, Default)]
struct Books {
    admitted: AtomicUsize,
    pending: AtomicUsize,
    pending_by_ip: Mutex<HashMap<IpAddr, usize>>,
    all_gone: Notify,
}

impl Books {
    fn lock_pending(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every update is a single map operation.
        self.pending_by_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Admissions {
    /// The caps and rates of `limits`, the rates on `clock`.
    pub fn new(limits: &Limits, clock: &Clock) -> Self {
        Self {
            books: Arc::default(),
            connect_rate: clock.keyed_rate(quota(
                limits.connect_rate_per_ip,
                limits.connect_burst_per_ip,
            )),
            clock: clock.clone(),
            max_connections: limits.max_connections,
            max_pending: limits.max_pending_connections,
            max_pending_per_ip: limits.max_pending_per_ip,
        }
    }

    /// A slot for a connection from `peer` that carries its token, if the
    /// address is within its connect rate and the cap allows.
    pub fn admit(&self, peer: IpAddr) -> Result<Admission, Refusal> {
        self.check_connect_rate(peer)?;
        self.claim_slot()
    }

    fn check_connect_rate(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.connect_rate
            .check_key(&ip_key(peer))
            .map_err(|not_until| Refusal::RateLimited(self.clock.retry_after(&not_until)))
    }

    /// One of the `--max-connections` slots.
    pub fn claim_slot(&self) -> Result<Admission, Refusal> {
        let max = self.max_connections;
        self.books
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::AtCapacity(max))?;
        Ok(Admission {
            books: self.books.clone(),
        })
    }

    /// A slot for a connection that has yet to authenticate, under caps of
    /// its own: it takes none of the slots authenticated connections need.
    pub fn admit_pending(&self, peer: IpAddr) -> Result<PendingAdmission, Refusal> {
        let key = ip_key(peer);
        let mut by_ip = self.books.lock_pending();
        let held = by_ip.get(&key).copied().unwrap_or(0);
        if held >= self.max_pending_per_ip {
            return Err(Refusal::PendingFromAddress(self.max_pending_per_ip));
        }
        if self.books.pending.load(Ordering::Acquire) >= self.max_pending {
            return Err(Refusal::PendingFull(self.max_pending));
        }
        self.check_connect_rate(peer)?;
        by_ip.insert(key, held + 1);
        self.books.pending.fetch_add(1, Ordering::AcqRel);
        Ok(PendingAdmission {
            books: self.books.clone(),
            key,
        })
    }

    /// Connections admitted and still authenticating.
    pub fn pending(&self) -> usize {
        self.books.pending.load(Ordering::Acquire)
    }

    /// Whether unauthenticated connections crowd the gateway enough that a
    /// new one must first prove its address (a QUIC Retry).
    pub fn under_pressure(&self) -> bool {
        self.pending() >= (self.max_pending / 4).max(1)
    }

    /// Connections admitted and not yet ended.
    pub fn admitted(&self) -> usize {
        self.books.admitted.load(Ordering::Acquire)
    }

    /// Waits until every admitted connection has ended.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.books.all_gone.notified();
            if self.admitted() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Forgets the rate state of addresses that have been quiet.
    pub fn forget_quiet(&self) {
        self.connect_rate.retain_recent();
        self.connect_rate.shrink_to_fit();
    }
}

/// A slot under the global connection cap; released on drop.
#[derive(Debug)]
pub struct Admission {
    books: Arc<Books>,
}

/// A slot under the caps of connections still authenticating; released
/// on drop.
#[derive(Debug)]
pub struct PendingAdmission {
    books: Arc<Books>,
    key: IpAddr,
}

impl Drop for PendingAdmission {
    fn drop(&mut self) {
        let mut by_ip = self.books.lock_pending();
        if let Some(held) = by_ip.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                by_ip.remove(&self.key);
            }
        }
        self.books.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.books.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.books.all_gone.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn the_connection_cap_is_enforced_and_released_on_drop() {
        let admissions = Admissions::new(
            &Limits {
                max_connections: 1,
                ..Limits::default()
            },
            &Clock::system(),
        );
        let first = admissions.admit(LOCAL).unwrap();
        assert_eq!(admissions.admit(LOCAL).unwrap_err(), Refusal::AtCapacity(1));
        drop(first);
        assert!(admissions.admit(LOCAL).is_ok());
    }

    #[test]
    fn per_ip_connection_rate_is_enforced_and_refills() {
        let manual = ManualClock::new();
        let admissions = Admissions::new(
            &Limits {
                connect_rate_per_ip: NonZeroU32::new(1).unwrap(),
                connect_burst_per_ip: NonZeroU32::new(2).unwrap(),
                ..Limits::default()
            },
            &manual.clock(),
        );
        let _a = admissions.admit(LOCAL).unwrap();
        let _b = admissions.admit(LOCAL).unwrap();
        assert_eq!(
            admissions.admit(LOCAL).unwrap_err(),
            Refusal::RateLimited(Duration::from_secs(1))
        );
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert!(admissions.admit(other).is_ok(), "limits are per address");
        manual.advance(Duration::from_millis(400));
        assert_eq!(
            admissions.admit(LOCAL).unwrap_err(),
            Refusal::RateLimited(Duration::from_millis(600))
        );
        manual.advance(Duration::from_millis(600));
        assert!(admissions.admit(LOCAL).is_ok(), "one more a second");
    }

    #[test]
    fn pending_connections_have_caps_of_their_own() {
        let admissions = Admissions::new(
            &Limits {
                max_connections: 1,
                max_pending_connections: 3,
                max_pending_per_ip: 2,
                ..Limits::default()
            },
            &Clock::system(),
        );
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let a = admissions.admit_pending(LOCAL).unwrap();
        let _b = admissions.admit_pending(LOCAL).unwrap();
        assert_eq!(
            admissions.admit_pending(LOCAL).unwrap_err(),
            Refusal::PendingFromAddress(2)
        );
        let _c = admissions.admit_pending(other).unwrap();
        let third = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(
            admissions.admit_pending(third).unwrap_err(),
            Refusal::PendingFull(3)
        );
        let _slot = admissions.admit(LOCAL).unwrap();
        assert_eq!(admissions.pending(), 3, "authenticated slots are apart");
        drop(a);
        assert!(admissions.admit_pending(LOCAL).is_ok());
    }
}
