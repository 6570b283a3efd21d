//! Unpredictable numbers without `unsafe` or a dependency.
//!
//! The standard library keys each `RandomState` with 128 bits from the
//! operating system's random source; SipHash under a secret key is a
//! pseudo-random function, so hashing a counter yields values an observer
//! cannot predict. Used for temporary file names and per-run uuids, not for
//! cryptographic keys.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// An unpredictable 64-bit value.
pub(crate) fn u64() -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = KEY.get_or_init(RandomState::new).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A random (version 4) UUID in its canonical text form.
pub(crate) fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&u64().to_le_bytes());
    b[8..].copy_from_slice(&u64().to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_differ_and_uuids_are_well_formed() {
        assert_ne!(u64(), u64());
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(uuid_v4(), id);
    }
}
