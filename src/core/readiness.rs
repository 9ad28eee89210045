//! Whether the gateway should be sent traffic: what `/readyz` answers, so a
//! load balancer stops sending clients before they would be refused.

use std::sync::atomic::{AtomicU8, Ordering};

/// Why the gateway should not be sent traffic now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The listeners are not serving yet.
    Starting,
    /// A shutdown has started: connections are being drained.
    ShuttingDown,
    /// A cluster node whose link to the other nodes is down (why).
    ClusterUnreachable(String),
}

impl NotReady {
    /// The reason, as a probe reads it.
    pub const fn reason(&self) -> &'static str {
        match self {
            NotReady::Starting => "starting",
            NotReady::ShuttingDown => "shutting_down",
            NotReady::ClusterUnreachable(_) => "cluster_unreachable",
        }
    }

    /// Said to the probe.
    pub fn message(&self) -> String {
        match self {
            NotReady::Starting => "the listeners are not serving yet".to_owned(),
            NotReady::ShuttingDown => "shutting down: draining connections".to_owned(),
            NotReady::ClusterUnreachable(why) => format!("the cluster is unreachable: {why}"),
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
