//! The names the core's parts share: which node, and which claim on a user
//! is newer. Kept apart so that the cluster, the registry and the outboxes
//! can all name them without importing each other.

use std::sync::Arc;

/// A claim's place in the order of a user's connections: higher is newer.
pub type Epoch = u64;

/// A node's name (`--node-id`).
pub type NodeId = Arc<str>;
