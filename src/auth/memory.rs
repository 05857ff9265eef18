//! The in-memory token store: fast, and empty again after a restart.

use super::{StoreError, TokenStore};
use crate::tags::TagSet;
use parking_lot::RwLock;
use std::collections::{BTreeSet, HashMap};

/// Tokens in a hash map. A reader-writer lock: WebSocket connects and subscribes read it, only
/// admin commands write it.
#[derive(Default)]
pub struct MemoryStore {
    tokens: RwLock<HashMap<String, BTreeSet<String>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl TokenStore for MemoryStore {
    fn register(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        let mut tokens = self.tokens.write();
        if tokens.contains_key(token) {
            return Err(StoreError::TokenExists);
        }
        tokens.insert(token.to_string(), tags.iter().map(str::to_string).collect());
        Ok(())
    }

    fn unregister(&self, token: &str) -> Result<(), StoreError> {
        self.tokens
            .write()
            .remove(token)
            .map(|_| ())
            .ok_or(StoreError::UnknownToken)
    }

    fn set(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        let mut tokens = self.tokens.write();
        let have = tokens.get_mut(token).ok_or(StoreError::UnknownToken)?;
        have.extend(tags.iter().map(str::to_string));
        Ok(())
    }

    fn unset(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        let mut tokens = self.tokens.write();
        let have = tokens.get_mut(token).ok_or(StoreError::UnknownToken)?;
        for t in tags.iter() {
            have.remove(t);
        }
        Ok(())
    }

    fn tags(&self, token: &str) -> Result<Vec<String>, StoreError> {
        let tokens = self.tokens.read();
        let have = tokens.get(token).ok_or(StoreError::UnknownToken)?;
        Ok(have.iter().cloned().collect())
    }
}
