//! signal-gateway: a WebRTC signaling gateway.
//!
//! Clients register a name over HTTP, open a realtime connection over
//! WebSocket or WebTransport, and trade `{target, type, payload}` envelopes
//! (SDP offers, answers, ICE candidates) with other users. Both transports
//! feed one routing core, so a WebSocket user and a WebTransport user reach
//! each other with identical envelopes.
//!
//! # Layout
//! - [`core`]: envelopes, the `IdentityStore` trait, `UserClientRegistry`,
//!   admission, identities, the hub (the services put together behind
//!   methods), sessions (routing), limits, and the wire table. No IO: it
//!   knows nothing of axum, hyper, quinn or h3.
//!   - A new auth method is a [`core::token::TokenVerifier`] in its own file
//!     (as [`jwt`] is) plus one line where `src/server/mod.rs` builds the
//!     list of verifiers; [`core::identity`] asks each whether a token is
//!     its kind.
//!   - A new store backend is an [`core::store::IdentityStore`] in its own
//!     file under [`store`] plus its `StoreKind` value and its arm in
//!     `store::open`, and one line in `tests/store_contract.rs`.
//!   - Whatever reads the time (a lifetime, a rate, a deadline) reads the
//!     [`core::clock::Clock`] it was given, so a test can advance it.
//! - [`connection`]: the one connection loop every transport runs, generic
//!   over a small [`connection::Link`] trait, and the line framer.
//! - [`http`]: the REST API, admin routes, web app and the WebSocket
//!   transport (axum).
//! - [`webtransport`]: the WebTransport transport (quinn + h3 +
//!   h3-webtransport).
//! - [`store`]: where registered identities live (memory, an embedded
//!   database that survives restarts, or Redis shared by a cluster).
//! - [`jwt`]: verifies the JWTs an application issues (secret, public key
//!   or JWKS).
//! - [`metrics`]: the Prometheus exposition of the core's counters.
//! - [`turn`]: the ICE servers handed to clients, with TURN credentials
//!   minted per user (the TURN REST API scheme coturn implements).
//! - [`cluster`]: many gateways as one, on Redis (routes, fencing, the
//!   courier and the inbox).
//! - [`auth`]: tokens, cookies and origins, shared by both transports.
//! - [`tls`]: development and production certificates (rustls + rcgen).
//! - [`config`]: command line, environment and configuration file.
//! - [`reload`]: what SIGHUP changes under a running gateway.
//! - [`server`]: binds everything and runs it until shutdown.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod core;
pub mod http;
pub mod jwt;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod store;
pub mod tls;
pub mod turn;
pub mod webtransport;
