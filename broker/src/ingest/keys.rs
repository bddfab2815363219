//! A bounded cache of derived principal keys: HKDF costs about a microsecond per event, and
//! the same principals publish again and again.

use pairbus_schemas::{Key, Kid, RootSecret};
use std::collections::HashMap;

/// Derived keys by kid, at most `capacity` of them (cleared when full: simple and bounded).
pub struct KeyCache {
    root: RootSecret,
    keys: HashMap<Kid, Key>,
    capacity: usize,
}

impl KeyCache {
    /// An empty cache over `root`.
    pub fn new(root: RootSecret, capacity: usize) -> Self {
        KeyCache {
            root,
            keys: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The key of `kid`, derived once.
    pub fn key(&mut self, kid: &Kid) -> Key {
        if let Some(k) = self.keys.get(kid) {
            return k.clone();
        }
        if self.keys.len() >= self.capacity {
            self.keys.clear();
        }
        let k = self.root.derive(kid);
        self.keys.insert(kid.clone(), k.clone());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_the_derived_key_and_stays_bounded() {
        let root = RootSecret::from_bytes([3; 32]);
        let mut c = KeyCache::new(root.clone(), 2);
        for name in ["a", "b", "c", "a"] {
            let kid = Kid::parse(&format!("operator:{name}")).unwrap();
            assert_eq!(c.key(&kid), root.derive(&kid));
            assert!(c.keys.len() <= 2);
        }
    }
}
