//! Strict JSON for the heartbeat file's two readers ([`read_state`] and the
//! scanner's record parser): one rule, one implementation.
//!
//! A key repeated in one object, at any depth, is refused. JSON leaves
//! duplicate names to the reader (RFC 8259 4: "SHOULD be unique"), and
//! readers differ: serde_json's `Map` keeps the last value, serde's derived
//! structs refuse the repeat, Python keeps the last. A file two of our
//! readers would read two ways must be read by neither.
//!
//! [`read_state`]: crate::read_state

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A JSON string, borrowed from the input when it holds no escapes. (serde
/// borrows a bare `Cow<str>` field but not one inside an `Option`; this type
/// borrows in both.)
pub(crate) struct JsonStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = JsonStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<JsonStr<'a>, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<JsonStr<'a>, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<JsonStr<'a>, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(std::marker::PhantomData))
    }
}

/// The keys of one object seen so far. A short list (heartbeat files have
/// about a dozen keys), a hash set past [`KeySet::LIST`] so that a hostile
/// object of many keys costs linear time, not quadratic.
#[derive(Default)]
pub(crate) struct KeySet<'a> {
    list: Vec<Cow<'a, str>>,
    set: HashSet<Cow<'a, str>>,
}

impl<'a> KeySet<'a> {
    const LIST: usize = 16;

    /// Adds `key`; gives it back if it was there already.
    pub(crate) fn insert(&mut self, key: Cow<'a, str>) -> Result<(), Cow<'a, str>> {
        if self.list.len() < Self::LIST {
            if self.list.contains(&key) {
                return Err(key);
            }
            self.list.push(key);
            return Ok(());
        }
        if self.set.is_empty() {
            self.set.extend(self.list.iter().cloned());
        }
        if self.set.contains(&key) {
            return Err(key);
        }
        self.set.insert(key);
        Ok(())
    }
}

/// Most characters of a hostile key quoted in an error.
const QUOTE_MAX: usize = 64;

/// The message for a key repeated in an object.
pub(crate) fn duplicate_key_message(key: &str) -> String {
    format!("duplicate key {}", quote(key))
}

/// `s` Debug-quoted (control characters escaped), cut to [`QUOTE_MAX`]
/// characters: what error messages quote of input that may be hostile and
/// huge.
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// `s` cut to at most `max` bytes, at a character boundary (with `...` when
/// cut): for messages of other parsers (serde_json's quote the input they
/// stop at) passed on to a peer or a log.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let at = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    format!("{}...", &s[..at])
}

/// Validates any JSON value, building nothing: every object in it must have
/// unique keys. The first repeated key is left in `duplicate` (so a caller
/// can tell it from a syntax error). Depth is bounded by serde_json's
/// recursion limit (128).
#[derive(Clone, Copy)]
pub(crate) struct UniqueKeys<'s> {
    pub(crate) duplicate: &'s RefCell<Option<String>>,
}

impl<'s> UniqueKeys<'s> {
    /// Checks the entries of an object already opened by `map`.
    pub(crate) fn check_map<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = KeySet::default();
        while let Some(key) = map.next_key::<JsonStr<'de>>()? {
            self.insert(&mut keys, key.0)?;
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    /// Adds `key` to `keys`, or fails naming it (and records it).
    pub(crate) fn insert<'a, E: de::Error>(self, keys: &mut KeySet<'a>, key: Cow<'a, str>) -> Result<(), E> {
        keys.insert(key).map_err(|key| {
            let message = duplicate_key_message(&key);
            *self.duplicate.borrow_mut() = Some(key.into_owned());
            E::custom(message)
        })
    }
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.check_map(map)
    }
}

/// An object whose keys are unique at every depth, or `null`; anything else
/// is an "invalid type" error.
#[derive(Clone, Copy)]
pub(crate) struct ObjectOrNull<'s>(pub(crate) UniqueKeys<'s>);

impl<'de> DeserializeSeed<'de> for ObjectOrNull<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectOrNull<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.check_map(map)
    }
}

/// Checks that `bytes` is one JSON value whose objects all have unique keys.
/// `Err((error, Some(key)))` when a key repeats, `Err((error, None))` when
/// the bytes are not JSON.
pub(crate) fn check_unique_keys(bytes: &[u8]) -> Result<(), (serde_json::Error, Option<String>)> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    UniqueKeys { duplicate: &duplicate }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| (e, duplicate.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cut_bounds_bytes_at_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("abcdef", 3), "abc...");
        let wide = "\u{fffd}".repeat(100); // 3 bytes each
        let cut = cut(&wide, 10);
        assert_eq!(cut, format!("{}...", "\u{fffd}".repeat(3)));
    }

    use super::*;

    #[test]
    fn repeated_keys_are_found_at_any_depth() {
        assert!(check_unique_keys(br#"{"a": 1, "b": {"a": 2}, "c": [{"a": 1, "b": 2}]}"#).is_ok());
        for (json, key) in [
            (&br#"{"a": 1, "a": 1}"#[..], "a"),
            (br#"{"m": {"x": 1, "y": 2, "x": 3}}"#, "x"),
            (br#"[1, {"k": [{"z": 0, "z": 0}]}]"#, "z"),
            // An escape spells the same key.
            (br#"{"pid": 1, "pi\u0064": 2}"#, "pid"),
        ] {
            let (e, found) = check_unique_keys(json).unwrap_err();
            assert_eq!(found.as_deref(), Some(key), "{e}");
            assert!(e.to_string().starts_with(&format!("duplicate key {key:?}")), "{e}");
        }
        let (_, found) = check_unique_keys(br#"{"a": "#).unwrap_err();
        assert_eq!(found, None, "a syntax error is no duplicate");
    }

    #[test]
    fn many_keys_cost_linear_time() {
        // 100,000 distinct keys, then a repeat of the first: found through the set.
        let mut json = String::from("{");
        for i in 0..100_000 {
            json.push_str(&format!("\"k{i}\": 0, "));
        }
        json.push_str("\"k0\": 1}");
        let (_, found) = check_unique_keys(json.as_bytes()).unwrap_err();
        assert_eq!(found.as_deref(), Some("k0"));
    }
}
