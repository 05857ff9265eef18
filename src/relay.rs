//! What leaves this node for the other nodes of its cluster: the hook the broker keeps, so
//! that publishing and the token rules reach the bus without depending on it (the bus, in
//! `cluster`, sits above them and implements [`Relay`]).

use crate::message::Batch;
use std::sync::Arc;

/// A change to a token that other nodes must apply to their open WebSockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenChange<'a> {
    /// The token was unregistered: close its WebSockets (1008).
    Unregistered(&'a [u8]),
    /// Tags were removed from the token: revoke the subscriptions it no longer allows.
    Unset(&'a [u8]),
}

/// Where local publishes and token changes go to reach the other nodes. Installed in the
/// broker when the node joins a cluster.
pub trait Relay: Send + Sync {
    /// A batch published on this node. Never blocks.
    fn publish(&self, batch: &Arc<Batch>);
    /// A token change made on this node, after the store has it.
    fn token_changed(&self, change: TokenChange<'_>);
}
