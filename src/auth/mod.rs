//! Tokens: who may subscribe to what over WebSocket.
//!
//! [`TokenStore`] is the storage (in memory, or PostgreSQL); [`Tokens`] puts the protocol's
//! rules on top: admin commands, the checks made when a WebSocket connects and subscribes, and
//! revocation of open WebSocket connections when a token loses tags or is unregistered.

pub mod memory;
pub mod postgres;

use crate::broker::{Broker, ClientId};
use crate::metrics::{self, Metrics};
use crate::outbound::Outbound;
use crate::relay::TokenChange;
use crate::report::ErrorChain;
use crate::tags::TagSet;
use crate::{wsframe, wsjson};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Why a token operation failed. The reason sent to the client is the error with its cause
/// ([`ErrorChain`](crate::report::ErrorChain)).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown token")]
    UnknownToken,
    #[error("token already exists")]
    TokenExists,
    /// The store cannot answer now (its database is down, busy, or refused the statement);
    /// the source says why.
    #[error("token store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Two store errors are equal when they are of the same kind and, when the store was
/// unavailable, give the same reason.
impl PartialEq for StoreError {
    fn eq(&self, other: &StoreError) -> bool {
        match (self, other) {
            (StoreError::UnknownToken, StoreError::UnknownToken)
            | (StoreError::TokenExists, StoreError::TokenExists) => true,
            (StoreError::Unavailable(a), StoreError::Unavailable(b)) => {
                ErrorChain(&**a).to_string() == ErrorChain(&**b).to_string()
            }
            _ => false,
        }
    }
}

impl Eq for StoreError {}

impl StoreError {
    /// The store is unavailable, because of `cause`.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::Unavailable(cause.into())
    }
}

/// Storage of tokens and their tags. Every method is one atomic change.
pub trait TokenStore: Send + Sync {
    /// Creates a token with these tags.
    ///
    /// # Errors
    /// `TokenExists` when the token is already registered.
    fn register(&self, token: &str, tags: &TagSet) -> Result<(), StoreError>;
    /// Deletes a token.
    ///
    /// # Errors
    /// `UnknownToken`.
    fn unregister(&self, token: &str) -> Result<(), StoreError>;
    /// Adds tags to a token.
    ///
    /// # Errors
    /// `UnknownToken`.
    fn set(&self, token: &str, tags: &TagSet) -> Result<(), StoreError>;
    /// Removes tags from a token.
    ///
    /// # Errors
    /// `UnknownToken`.
    fn unset(&self, token: &str, tags: &TagSet) -> Result<(), StoreError>;
    /// The token's tags, sorted bytewise.
    ///
    /// # Errors
    /// `UnknownToken`.
    fn tags(&self, token: &str) -> Result<Vec<String>, StoreError>;
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The admin rule of the protocol: with an `admin_token` configured, admin commands need a
/// successful `auth` on the connection; without one, they are allowed only from loopback.
///
/// # Errors
/// The reason the command is refused.
pub fn admin_allowed(
    token_configured: bool,
    authed: bool,
    peer: IpAddr,
) -> Result<(), &'static str> {
    match (token_configured, authed) {
        (true, true) => Ok(()),
        (true, false) => Err("admin commands need auth ADMIN_TOKEN first"),
        (false, _) if peer.to_canonical().is_loopback() => Ok(()),
        (false, _) => Err("admin commands are only allowed from loopback (no admin_token set)"),
    }
}

/// An open WebSocket connection, as revocation needs to find it.
struct WsClient {
    id: ClientId,
    out: Arc<Outbound>,
}

/// The token rules of a server: the store, plus the open WebSocket connections per token.
pub struct Tokens {
    store: Box<dyn TokenStore>,
    broker: Broker,
    metrics: Arc<Metrics>,
    /// Open WebSocket connections by the token they authenticated with. A mutex: it changes on
    /// every WebSocket connect and disconnect and is read only by admin commands.
    sessions: Mutex<HashMap<String, Vec<WsClient>>>,
    /// Orders access checks against revocations: a WebSocket holds it for reading from its
    /// token check until its connection or subscription is in place, `unset` and `unregister`
    /// hold it for writing from the store change until the revocation is done. So a check can
    /// never pass on tags that a revocation running at the same time misses.
    gate: RwLock<()>,
}

/// Why a WebSocket may not connect or subscribe.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("unknown token")]
    UnknownToken,
    #[error("token has no tags")]
    NoTags,
    #[error("token lacks the tags {0}")]
    Lacks(String),
    #[error(transparent)]
    Store(StoreError),
}

impl Tokens {
    /// Token rules over a store.
    pub(crate) fn new(store: Box<dyn TokenStore>, broker: Broker, metrics: Arc<Metrics>) -> Tokens {
        Tokens {
            store,
            broker,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            gate: RwLock::new(()),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &dyn TokenStore {
        &*self.store
    }

    /// Admits a connecting WebSocket: checks its token and records the connection so that
    /// revocations reach it. Returns the token's tags.
    ///
    /// # Errors
    /// Unknown token, a token without tags, or the store is unavailable.
    pub(crate) fn admit(
        &self,
        token: &str,
        id: ClientId,
        out: &Arc<Outbound>,
    ) -> Result<Vec<String>, AccessError> {
        let _gate = self.gate.read();
        let tags = self.check_connect(token)?;
        let mut sessions = self.sessions.lock();
        sessions
            .entry(token.to_string())
            .or_default()
            .push(WsClient {
                id,
                out: Arc::clone(out),
            });
        Ok(tags)
    }

    /// Runs `subscribe` if the token may hold a subscription to `set`: at least one of the set's
    /// tags must be among the token's tags now.
    ///
    /// # Errors
    /// The token lacks every tag of the set, was unregistered, or the store is unavailable.
    pub(crate) fn subscribe_checked<R>(
        &self,
        token: &str,
        set: &TagSet,
        subscribe: impl FnOnce() -> R,
    ) -> Result<R, AccessError> {
        let _gate = self.gate.read();
        self.check_subscribe(token, set)?;
        Ok(subscribe())
    }

    fn check_connect(&self, token: &str) -> Result<Vec<String>, AccessError> {
        let result = match self.store.tags(token) {
            Ok(tags) if tags.is_empty() => Err(AccessError::NoTags),
            Ok(tags) => Ok(tags),
            Err(StoreError::UnknownToken) => Err(AccessError::UnknownToken),
            Err(e) => return Err(AccessError::Store(e)),
        };
        if result.is_err() {
            metrics::add(&self.metrics.auth_failures, 1);
        }
        result
    }

    fn check_subscribe(&self, token: &str, set: &TagSet) -> Result<(), AccessError> {
        let tags = match self.store.tags(token) {
            Ok(tags) => tags,
            Err(StoreError::UnknownToken) => return Err(AccessError::UnknownToken),
            Err(e) => return Err(AccessError::Store(e)),
        };
        if set.iter().any(|t| tags.iter().any(|have| have == t)) {
            Ok(())
        } else {
            metrics::add(&self.metrics.auth_failures, 1);
            Err(AccessError::Lacks(set.as_str().to_string()))
        }
    }

    /// Forgets a closed WebSocket connection.
    pub(crate) fn detach(&self, token: &str, id: ClientId) {
        let mut sessions = self.sessions.lock();
        if let Some(list) = sessions.get_mut(token) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                sessions.remove(token);
            }
        }
    }

    /// `register TAGS TOKEN`.
    ///
    /// # Errors
    /// The token exists, or the store is unavailable.
    pub fn register(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.store.register(token, tags)
    }

    /// `set TAGS TOKEN`.
    ///
    /// # Errors
    /// Unknown token, or the store is unavailable.
    pub fn set(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.store.set(token, tags)
    }

    /// `tags TOKEN`.
    ///
    /// # Errors
    /// Unknown token, or the store is unavailable.
    pub fn tags(&self, token: &str) -> Result<Vec<String>, StoreError> {
        self.store.tags(token)
    }

    /// `unregister TOKEN`: deletes the token and closes its WebSockets with code 1008. When this
    /// returns, none of them receives another delivery.
    ///
    /// # Errors
    /// Unknown token, or the store is unavailable.
    pub fn unregister(&self, token: &str) -> Result<(), StoreError> {
        let gate = self.gate.write();
        self.store.unregister(token)?;
        self.close_sessions(token);
        drop(gate);
        self.relay(TokenChange::Unregistered(token.as_bytes()));
        Ok(())
    }

    /// A token change made on another node of the cluster (the shared store already has it):
    /// revokes here what it revokes, as the node where it was made did.
    pub fn apply_remote(&self, change: TokenChange<'_>) {
        let (TokenChange::Unregistered(token) | TokenChange::Unset(token)) = change;
        let Ok(token) = std::str::from_utf8(token) else {
            return;
        };
        let _gate = self.gate.write();
        match change {
            TokenChange::Unregistered(_) => self.close_sessions(token),
            TokenChange::Unset(_) => {
                if let Err(e) = self.revoke_lost_tags(token) {
                    log::warn!(
                        "cannot apply a token change made on another node: {}",
                        ErrorChain(&e)
                    );
                }
            }
        }
    }

    /// Tells the other nodes of the cluster, if any.
    fn relay(&self, change: TokenChange<'_>) {
        if let Some(relay) = self.broker.relay() {
            relay.token_changed(change);
        }
    }

    /// Closes the token's WebSockets with code 1008, taking them out of the index first.
    fn close_sessions(&self, token: &str) {
        let clients = self.sessions.lock().remove(token).unwrap_or_default();
        for c in clients {
            // Out of the index first, so no publisher queues anything more for it.
            self.broker.remove_client(c.id);
            c.out
                .discard_and_close(wsframe::close(wsframe::CLOSE_POLICY, "token revoked"));
            metrics::add(&self.metrics.revocations, 1);
            log::info!("{}: token unregistered, WebSocket closed", c.out.peer());
        }
    }

    /// `unset TAGS TOKEN`: removes tags, then every subscription of the token's WebSockets
    /// that no longer has an allowed tag, each with a notice frame. When this returns, nothing
    /// more is delivered on a removed subscription.
    ///
    /// # Errors
    /// Unknown token, or the store is unavailable.
    pub fn unset(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        let gate = self.gate.write();
        self.store.unset(token, tags)?;
        let revoked = self.revoke_lost_tags(token);
        drop(gate);
        // The store has the change whether or not the revocation here could finish.
        self.relay(TokenChange::Unset(token.as_bytes()));
        revoked
    }

    /// Checks every token that this node's WebSockets hold against the store again, and
    /// revokes what no longer holds: a token gone closes its WebSockets (1008), lost tags end
    /// their subscriptions with a notice. Token changes made on other nodes arrive over the
    /// bus; a node that was cut off from it, or missed notifications, calls this once it
    /// hears the bus again, so that nothing revoked meanwhile stays open here.
    ///
    /// # Errors
    /// The store is unavailable; the tokens not yet checked are left as they were.
    pub fn recheck_all(&self) -> Result<usize, StoreError> {
        let tokens: Vec<String> = self.sessions.lock().keys().cloned().collect();
        for token in &tokens {
            let _gate = self.gate.write();
            match self.store.tags(token) {
                Err(StoreError::UnknownToken) => self.close_sessions(token),
                Ok(allowed) => self.revoke_beyond(token, &allowed),
                Err(e) => return Err(e),
            }
        }
        Ok(tokens.len())
    }

    /// Removes every subscription of the token's WebSockets that no longer has an allowed
    /// tag, each with a notice frame.
    fn revoke_lost_tags(&self, token: &str) -> Result<(), StoreError> {
        let allowed = match self.store.tags(token) {
            Ok(t) => t,
            Err(StoreError::UnknownToken) => Vec::new(),
            Err(e) => return Err(e),
        };
        self.revoke_beyond(token, &allowed);
        Ok(())
    }

    /// Removes every subscription of the token's WebSockets that has none of `allowed`.
    fn revoke_beyond(&self, token: &str, allowed: &[String]) {
        let ids: Vec<ClientId> = match self.sessions.lock().get(token) {
            Some(list) => list.iter().map(|c| c.id).collect(),
            None => return,
        };
        for id in ids {
            let removed = self.broker.revoke(
                id,
                |set| set.iter().any(|t| allowed.iter().any(|a| a == t)),
                |set| wsframe::text(wsjson::revoked(set).as_bytes()),
            );
            metrics::add(&self.metrics.revocations, removed.len() as u64);
            if !removed.is_empty() {
                log::info!(
                    "client {id}: {} WebSocket subscriptions revoked",
                    removed.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_rule() {
        let lo4: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.168.1.20".parse().unwrap();
        let lan6: IpAddr = "2001:db8::1".parse().unwrap();
        for ip in [lo4, lo6, mapped] {
            assert!(admin_allowed(false, false, ip).is_ok());
        }
        for ip in [lan, lan6] {
            assert!(admin_allowed(false, false, ip).is_err());
        }
        // With a token, only auth counts, wherever the client is.
        assert!(admin_allowed(true, false, lo4).is_err());
        assert!(admin_allowed(true, true, lan).is_ok());
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"ab"));
        assert!(!secrets_equal(b"", b"a"));
        assert!(secrets_equal(b"", b""));
        // The shorter side is padded with zero bytes while comparing; the lengths must still
        // decide, or a secret could be matched with NUL bytes appended or cut off.
        assert!(!secrets_equal(b"abc", b"abc\0"));
        assert!(!secrets_equal(b"abc\0\0", b"abc"));
        assert!(!secrets_equal(b"", b"\0"));
        // A difference anywhere counts, including the last byte of a long secret.
        let secret = [b'k'; 255];
        for i in 0..secret.len() {
            let mut other = secret;
            other[i] ^= 0x80;
            assert!(!secrets_equal(&secret, &other), "difference at {i}");
        }
        assert!(secrets_equal(&secret, &secret.clone()));
    }
}
