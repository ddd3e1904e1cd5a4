//! The order-independent map digest that lets anyone check a client against the daemon.
//!
//! Each entry hashes to 128 bits (XXH3-128 over the key length, the key and the value); the
//! digest of a map is the wrapping sum of its entries' hashes. Sum is commutative, so the digest
//! does not depend on insertion or iteration order, and it is maintained incrementally: adding an
//! entry adds its hash, removing subtracts it. Revisions are left out on purpose: an update whose
//! value is unchanged is a no-op whatever its revision, and is never sent.

use std::fmt;

/// Order-independent digest of a key/value map.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub u128);

/// The hash of one entry, as combined into a [`Digest`].
pub fn entry_hash(key: &str, value: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(value);
    h.digest128()
}

impl Digest {
    pub fn add(&mut self, key: &str, value: &[u8]) {
        self.0 = self.0.wrapping_add(entry_hash(key, value));
    }

    pub fn remove(&mut self, key: &str, value: &[u8]) {
        self.0 = self.0.wrapping_sub(entry_hash(key, value));
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    pub fn from_bytes(b: [u8; 16]) -> Self {
        Digest(u128::from_le_bytes(b))
    }

    /// Parses the 32-digit hex form that `Display` prints.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(Digest)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_independent_and_reversible() {
        let mut a = Digest::default();
        a.add("/k1", b"v1");
        a.add("/k2", b"v2");
        let mut b = Digest::default();
        b.add("/k2", b"v2");
        b.add("/k1", b"v1");
        assert_eq!(a, b);
        b.remove("/k2", b"v2");
        let mut c = Digest::default();
        c.add("/k1", b"v1");
        assert_eq!(b, c);
        assert_ne!(a, c);
    }

    #[test]
    fn key_value_boundary_matters() {
        let mut a = Digest::default();
        a.add("/ab", b"c");
        let mut b = Digest::default();
        b.add("/a", b"bc");
        assert_ne!(a, b);
    }

    #[test]
    fn hex_round_trip() {
        let mut a = Digest::default();
        a.add("/k", b"v");
        assert_eq!(Digest::from_hex(&a.to_string()), Some(a));
        assert_eq!(Digest::from_hex("xyz"), None);
    }
}
