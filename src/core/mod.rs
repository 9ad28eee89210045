//! The transport-agnostic routing core: envelopes, the user store, the
//! registry of live connections, and routing between them. Nothing in here
//! knows about axum, hyper, quinn or h3.

pub mod envelope;
pub mod hub;
pub mod limits;
pub mod outbox;
pub mod registry;
pub mod stats;
pub mod store;
pub mod username;
pub mod wire;

pub use hub::{
    Admission, AfterWrite, Authenticated, Hub, PendingAdmission, Refusal, Session, WriteError,
    write_within,
};
pub use limits::Limits;
pub use registry::Transport;
pub use wire::{CloseReason, ErrorType};
