//! Whether the gateway should be sent traffic: what `/readyz` answers, so a
//! load balancer stops sending clients before they would be refused.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

/// Why the gateway should not be sent traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReady {
    /// The listeners are not serving yet.
    Starting,
    /// A shutdown has started: connections are being drained.
    ShuttingDown,
}

impl NotReady {
    /// Said to the probe.
    pub const fn message(self) -> &'static str {
        match self {
            NotReady::Starting => "the listeners are not serving yet",
            NotReady::ShuttingDown => "shutting down: draining connections",
        }
    }
}

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// The gateway's phase: starting, serving, then draining, never back.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

impl Phase {
    /// The listeners are serving.
    pub fn serving(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A shutdown has started.
    pub fn draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// `Ok` when traffic is welcome.
    pub fn readiness(&self) -> Result<(), NotReady> {
        match self.0.load(Ordering::Acquire) {
            SERVING => Ok(()),
            STARTING => Err(NotReady::Starting),
            _ => Err(NotReady::ShuttingDown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_between_serving_and_draining() {
        let phase = Phase::default();
        assert_eq!(phase.readiness(), Err(NotReady::Starting));
        phase.serving();
        assert_eq!(phase.readiness(), Ok(()));
        phase.draining();
        assert_eq!(phase.readiness(), Err(NotReady::ShuttingDown));
        phase.serving();
        assert_eq!(phase.readiness(), Err(NotReady::ShuttingDown), "never back");
    }
}
