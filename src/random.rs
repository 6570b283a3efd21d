//! Unpredictable numbers without a dependency (and no `unsafe` here).
//!
//! The standard library keys each `RandomState` with 128 bits from the
//! operating system's random source; SipHash under a secret key is a
//! pseudo-random function, so hashing a counter yields values an observer
//! cannot predict. Used for temporary file names and per-run uuids, not for
//! cryptographic keys.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The SipHash key, taken once per process image.
static KEY: OnceLock<RandomState> = OnceLock::new();
/// Mixed into every value; replaced when the pid changes (after `fork`).
static SALT: AtomicU64 = AtomicU64::new(0);
/// The pid `SALT` was drawn for; 0 before the first draw.
static SALT_PID: AtomicU32 = AtomicU32::new(0);
/// The fork generation (`crate::sys::fork_generation`) `SALT` was drawn in.
static SALT_FORKS: AtomicU64 = AtomicU64::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// An unpredictable 64-bit value.
///
/// A forked child inherits the key and the counter, and `RandomState::new`
/// in it repeats its parent's (and its siblings') keys too: so each value
/// also hashes the pid and a salt drawn afresh (from `/dev/urandom`) the
/// first time a new pid asks. Children forked from one parent then draw
/// different sequences, from the parent's and from each other's.
pub(crate) fn u64() -> u64 {
    u64_as(std::process::id())
}

/// [`u64`] as if the calling process had pid `pid` (tests change it).
pub(crate) fn u64_as(pid: u32) -> u64 {
    let salt = salt_for(pid, crate::sys::fork_generation());
    let mut h = KEY.get_or_init(RandomState::new).build_hasher();
    h.write_u64(salt);
    h.write_u32(pid);
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// The salt for `pid`, re-drawn when `pid` is not the one it was drawn for.
/// Lock-free: a lock held by a parent's thread at `fork` would stay held
/// forever in the child. Two threads re-drawing at once both store a fresh
/// salt; values stay distinct through the pid and the counter.
///
/// The fork generation is compared too: a grandchild that got its exited
/// grandparent's pid back still draws afresh.
fn salt_for(pid: u32, forks: u64) -> u64 {
    if SALT_PID.load(Ordering::Acquire) == pid && SALT_FORKS.load(Ordering::Acquire) == forks {
        return SALT.load(Ordering::Acquire);
    }
    let salt = fresh_salt(pid);
    SALT.store(salt, Ordering::Release);
    SALT_FORKS.store(forks, Ordering::Release);
    SALT_PID.store(pid, Ordering::Release);
    salt
}

/// 64 bits from the operating system, falling back on the key, the pid and the time.
fn fresh_salt(pid: u32) -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    let mut h = KEY.get_or_init(RandomState::new).build_hasher();
    h.write_u32(pid);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
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

    #[test]
    fn a_new_pid_takes_a_new_salt() {
        // What a forked child sees: the same key and counter, another pid.
        // (Other tests draw concurrently, so only what this thread computed
        // is asserted.)
        let me = std::process::id();
        let forks = crate::sys::fork_generation();
        let before = salt_for(me, forks);
        let child = me.wrapping_add(1_000_000);
        assert_ne!(salt_for(child, forks), before, "a new pid must draw a new salt");
        assert_ne!(u64_as(child), u64_as(me));
    }

    #[test]
    fn a_new_fork_generation_takes_a_new_salt_even_with_the_same_pid() {
        // A grandchild that got its grandparent's pid back.
        let me = std::process::id();
        let forks = crate::sys::fork_generation();
        let before = salt_for(me, forks);
        assert_ne!(salt_for(me, forks + 1), before, "a new fork generation must draw a new salt");
    }
}
