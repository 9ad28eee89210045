//! The transport-agnostic routing core: envelopes, the user store, the
//! registry of live connections, and routing between them. Nothing in here
//! knows about axum, hyper, quinn or h3.

pub mod admission;
pub mod clock;
pub mod cluster;
pub mod envelope;
pub mod histogram;
pub mod hub;
pub mod ice;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod outbox;
pub mod readiness;
pub mod registry;
mod remote;
pub mod resume;
pub mod rooms;
mod rooms_session;
pub mod session;
pub mod stats;
pub mod store;
#[cfg(test)]
mod testing;
pub mod token;
pub mod transport;
pub mod username;
pub mod wire;

pub use admission::{Admission, PendingAdmission, Refusal};
pub use hub::{AdminError, Authenticated, Claimed, Hub, Report, Users};
pub use ice::{IceConfig, IceServer, IceServers};
pub use identity::{AuthError, Identities, RegisterError};
pub use limits::Limits;
pub use readiness::NotReady;
pub use session::{AfterWrite, Reading, Session, WriteError, write_within};
pub use transport::{Transport, UnknownTransport};
pub use wire::{CloseReason, ErrorType};
