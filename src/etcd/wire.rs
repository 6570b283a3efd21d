//! What etcd's JSON gateway answers, as types that hold only what the
//! [`Client`](super::Client) reads.
//!
//! An answer is parsed straight into these types, never into a
//! `serde_json::Value`: a field no type names is skipped with serde's
//! [`IgnoredAny`] (serde_json walks it without building anything: a huge
//! array costs its bytes of input, not 32 bytes an element), a list is
//! counted as it is read and refused past its cap, and a base64 key or
//! value is decoded as it is read (borrowed from the answer, not copied
//! first).
//!
//! The parse is as lenient as the `Value` lookups it replaces: a number
//! where a string was expected, an object where a number was, a field
//! missing, reads as absent (the caller decides whether the answer has
//! what it needs). Only a list over its cap, a repeated field or JSON that
//! does not parse is an error of the parse itself.
//!
//! Depth: a value a type reads (an object, a list) goes through
//! serde_json's recursion limit (128 levels); a skipped one does not (it is
//! walked with a stack of one byte a level), so its cost is bounded by its
//! bytes alone.

use std::fmt;
use std::marker::PhantomData;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::client::{KeyValue, MAX_RANGE_KEYS, MAX_WATCH_EVENTS, WatchEvent};

/// What a [`Lenient`] field takes from a JSON scalar; `None` for a value
/// of a type it does not take.
pub(super) trait Pick: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
}

/// A 64-bit field, which the gateway writes as a string (or a number).
impl Pick for i64 {
    fn from_str(s: &str) -> Option<i64> {
        s.parse().ok()
    }
    fn from_i64(n: i64) -> Option<i64> {
        Some(n)
    }
    fn from_u64(n: u64) -> Option<i64> {
        i64::try_from(n).ok()
    }
}

impl Pick for bool {
    fn from_bool(b: bool) -> Option<bool> {
        Some(b)
    }
}

impl Pick for String {
    fn from_str(s: &str) -> Option<String> {
        Some(s.to_owned())
    }
}

/// A key or a value: base64 in the answer, decoded as it is read.
pub(super) struct Bytes(pub Vec<u8>);

impl Pick for Bytes {
    fn from_str(s: &str) -> Option<Bytes> {
        B64.decode(s).ok().map(Bytes)
    }
}

/// A watch event's `type`: `DELETE`, else a put.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Put,
    Delete,
}

impl Pick for Kind {
    fn from_str(s: &str) -> Option<Kind> {
        Some(if s == "DELETE" { Kind::Delete } else { Kind::Put })
    }
}

/// A field read if it has the right type, else skipped and `None`.
pub(super) struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: Pick> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Pick> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(s)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_i64(n)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_u64(n)))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_bool(b)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq)?;
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(map)?;
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An object read into `T`, or `None` (skipped) when the value is not an
/// object.
pub(super) struct Maybe<T>(pub Option<T>);

impl<T> Default for Maybe<T> {
    fn default() -> Self {
        Maybe(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Maybe<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Maybe<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Maybe(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq)?;
                Ok(Maybe(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An element of a [`List`]: read as `Raw`, kept as `Self`, at most `MAX`
/// of them.
pub(super) trait Element: Sized {
    type Raw: for<'de> Deserialize<'de>;
    /// The cap: with a power of two, the list, grown by doubling, never
    /// holds room for more.
    const MAX: usize;
    /// What the elements are called in the error past the cap.
    const WHAT: &'static str;
    /// `None` for an element without what it needs.
    fn make(raw: Self::Raw) -> Option<Self>;
}

/// A list read element by element, each made into `T` as it is read (its
/// raw form is never kept), and refused past `T::MAX` elements; anything
/// but a list reads as empty. `bad` tells that an element was not usable
/// (it is not kept).
pub(super) struct List<T> {
    pub items: Vec<T>,
    pub bad: bool,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List { items: Vec::new(), bad: false }
    }
}

impl<'de, T: Element> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Element> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = List::default();
                let mut n = 0;
                while let Some(raw) = seq.next_element::<T::Raw>()? {
                    if n == T::MAX {
                        return Err(de::Error::custom(format_args!("more than {} {}", T::MAX, T::WHAT)));
                    }
                    n += 1;
                    match T::make(raw) {
                        Some(item) => list.items.push(item),
                        None => list.bad = true,
                    }
                }
                Ok(list)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(map)?;
                Ok(List::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(List::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(List::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(List::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(List::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(List::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(List::default())
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// How many elements a list has, counted without keeping any; anything but
/// a list counts 0.
#[derive(Default)]
pub(super) struct Count(pub usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
                IgnoredAny.visit_map(map)?;
                Ok(Count(0))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
                Ok(Count(0))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Count, E> {
                Ok(Count(0))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Count, E> {
                Ok(Count(0))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
                Ok(Count(0))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
                Ok(Count(0))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// What an error answer says: etcd's message (`error`, else `message`, as
/// text or an object holding one), or `None` when it holds none.
#[derive(Default)]
pub(super) struct Complaint(pub Option<String>);

impl<'de> Deserialize<'de> for Complaint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Error,
            Message,
            #[serde(other)]
            Other,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Complaint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Complaint, E> {
                Ok(Complaint(Some(s.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Complaint, A::Error> {
                let (mut error, mut message) = (None, None);
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Error => error = map.next_value::<Complaint>()?.0,
                        Field::Message => message = map.next_value::<Lenient<String>>()?.0,
                        Field::Other => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(Complaint(error.or(message)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Complaint, A::Error> {
                IgnoredAny.visit_seq(seq)?;
                Ok(Complaint(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Complaint, E> {
                Ok(Complaint(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Complaint, E> {
                Ok(Complaint(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Complaint, E> {
                Ok(Complaint(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Complaint, E> {
                Ok(Complaint(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Complaint, E> {
                Ok(Complaint(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl Complaint {
    /// The message, or a word that there was none.
    pub(super) fn text(self) -> String {
        self.0.unwrap_or_else(|| "an error answer without a message".into())
    }
}

/// An answer's `header`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Header {
    pub revision: Lenient<i64>,
}

/// The store's revision in an answer's header, 0 if none.
pub(super) fn revision_of(header: &Maybe<Header>) -> i64 {
    header.0.as_ref().and_then(|h| h.revision.0).unwrap_or(0)
}

/// A key and its value, as a range or a watch event holds them.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawKv {
    pub key: Lenient<Bytes>,
    /// `None` when absent (a deleted key in a watch): empty.
    pub value: Option<Lenient<Bytes>>,
    pub mod_revision: Lenient<i64>,
    pub lease: Lenient<i64>,
}

impl RawKv {
    /// `None` when the key is missing or either is not base64.
    pub(super) fn into_key_value(self) -> Option<KeyValue> {
        let value = match self.value {
            None => Vec::new(),
            Some(Lenient(v)) => v?.0,
        };
        Some(KeyValue {
            key: self.key.0?.0,
            value,
            mod_revision: self.mod_revision.0.unwrap_or(0),
            lease: self.lease.0.unwrap_or(0),
        })
    }
}

/// Answers of the calls that return something, each with the `error` a
/// streamed answer carries in place of a result.
pub(super) trait Answer: for<'de> Deserialize<'de> {
    fn complaint(&mut self) -> Option<Complaint>;
}

macro_rules! answers {
    ($($name:ident),*) => {$(
        impl Answer for $name {
            fn complaint(&mut self) -> Option<Complaint> {
                self.error.take()
            }
        }
    )*};
}

answers!(Grant, Keepalive, Revision, Deleted, Leases, RangeAnswer, WatchLine);

/// `/v3/lease/grant`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Grant {
    pub error: Option<Complaint>,
    #[serde(rename = "ID")]
    pub id: Lenient<i64>,
    #[serde(rename = "TTL")]
    pub ttl: Lenient<i64>,
}

/// `/v3/lease/keepalive`: `{"result": {"TTL": ...}}` (a streamed answer),
/// or the TTL at the top.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Keepalive {
    pub error: Option<Complaint>,
    pub result: Option<Maybe<Ttl>>,
    #[serde(rename = "TTL")]
    pub ttl: Lenient<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Ttl {
    #[serde(rename = "TTL")]
    pub ttl: Lenient<i64>,
}

/// Put, txn, revoke: the revision after.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Revision {
    pub error: Option<Complaint>,
    pub header: Maybe<Header>,
}

/// `/v3/kv/deleterange`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Deleted {
    pub error: Option<Complaint>,
    pub deleted: Lenient<i64>,
}

/// `/v3/lease/leases`: counted, not kept.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Leases {
    pub error: Option<Complaint>,
    pub leases: Count,
}

/// A range's keys.
impl Element for KeyValue {
    type Raw = Maybe<RawKv>;
    const MAX: usize = MAX_RANGE_KEYS;
    const WHAT: &'static str = "keys";
    fn make(raw: Maybe<RawKv>) -> Option<KeyValue> {
        raw.0?.into_key_value()
    }
}

/// `/v3/kv/range`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RangeAnswer {
    pub error: Option<Complaint>,
    pub header: Maybe<Header>,
    pub kvs: List<KeyValue>,
}

/// A watch line's events.
impl Element for WatchEvent {
    type Raw = Maybe<RawEvent>;
    const MAX: usize = MAX_WATCH_EVENTS;
    const WHAT: &'static str = "events";
    fn make(raw: Maybe<RawEvent>) -> Option<WatchEvent> {
        let event = raw.0?;
        let kv = event.kv.0?.into_key_value()?;
        Some(match event.kind.0 {
            Some(Kind::Delete) => WatchEvent::Delete(kv),
            _ => WatchEvent::Put(kv),
        })
    }
}

/// One line of a watch stream, first pass: the error, or the result.
/// Without a `result`, the line is read again as a [`WatchResult`].
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct WatchLine {
    pub error: Option<Complaint>,
    pub result: Option<Maybe<WatchResult>>,
}

/// One watch response.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct WatchResult {
    pub header: Maybe<Header>,
    pub created: Lenient<bool>,
    pub canceled: Lenient<bool>,
    pub cancel_reason: Lenient<String>,
    pub compact_revision: Lenient<i64>,
    pub events: List<WatchEvent>,
}

/// One event of a watch response.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawEvent {
    #[serde(rename = "type")]
    pub kind: Lenient<Kind>,
    pub kv: Maybe<RawKv>,
}

/// Parses the first JSON value of `bytes` (a streamed answer is one value
/// a line; what follows the first is not read).
pub(super) fn first<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    match values.next() {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) if e.is_data() => Err(format!("an answer of the wrong shape: {e}")),
        Some(Err(e)) => Err(format!("an answer that is not JSON ({e}): {}", cut_bytes(bytes))),
        None => Err("an empty answer".into()),
    }
}

/// The start of an answer, as text, for an error message.
pub(super) fn cut_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(1024)];
    crate::json::cut(String::from_utf8_lossy(head).trim(), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_another_type_read_as_absent() {
        let g: Grant = first(br#"{"ID": 7, "TTL": "30"}"#).unwrap();
        assert_eq!((g.id.0, g.ttl.0), (Some(7), Some(30)));
        let g: Grant = first(br#"{"ID": [1, {"a": 2}], "TTL": {"x": 1}, "pad": [[[0]]]}"#).unwrap();
        assert_eq!((g.id.0, g.ttl.0), (None, None));
        let g: Grant = first(br#"{"ID": "x", "TTL": 1.5}"#).unwrap();
        assert_eq!((g.id.0, g.ttl.0), (None, None));
        let r: RangeAnswer = first(br#"{"header": 5, "kvs": {"a": 1}}"#).unwrap();
        assert_eq!((revision_of(&r.header), r.kvs.items.len()), (0, 0));
        let r: RangeAnswer = first(br#"{"kvs": [3, {"key": 4}, {"key": "aw==", "value": "!"}]}"#).unwrap();
        assert!(r.kvs.items.is_empty() && r.kvs.bad);
        let r: RangeAnswer = first(br#"{"kvs": [{"key": "aw==", "value": "dg=="}]}"#).unwrap();
        assert!(r.kvs.items[0].key == b"k" && r.kvs.items[0].value == b"v" && !r.kvs.bad);
    }

    #[test]
    fn an_error_says_its_message() {
        let text = |s: &str| first::<Complaint>(s.as_bytes()).unwrap().0;
        assert_eq!(
            text(r#"{"error":"etcdserver: requested lease not found","code":5}"#).unwrap(),
            "etcdserver: requested lease not found"
        );
        assert_eq!(text(r#"{"code":3,"message":"bad key"}"#).unwrap(), "bad key");
        assert_eq!(text(r#"{"error":{"grpc_code":5,"message":"gone"}}"#).unwrap(), "gone");
        assert_eq!(text(r#"{"code":3}"#), None);
        assert_eq!(text("17"), None);
    }

    #[test]
    fn a_list_past_its_cap_is_refused() {
        struct Small(i64);
        impl Element for Small {
            type Raw = Lenient<i64>;
            const MAX: usize = 2;
            const WHAT: &'static str = "things";
            fn make(raw: Lenient<i64>) -> Option<Small> {
                raw.0.map(Small)
            }
        }
        let two: List<Small> = first(br#"[1, "x"]"#).unwrap();
        assert_eq!((two.items.len(), two.items[0].0, two.bad), (1, 1, true));
        let err = first::<List<Small>>(b"[1, 2, 3]").err().unwrap();
        assert!(err.contains("more than 2 things"), "{err}");
        assert_eq!(first::<Count>(b"[1, [2], {}]").unwrap().0, 3);
    }

    #[test]
    fn only_the_first_value_is_read() {
        let g: Grant = first(b"{\"ID\":\"1\"}\n{\"ID\":\"2\"}\n").unwrap();
        assert_eq!(g.id.0, Some(1));
        assert!(first::<Grant>(b"").err().unwrap().contains("empty"));
        assert!(first::<Grant>(b"nope").err().unwrap().contains("not JSON"));
    }
}
