//! The JoinMarket directory-node wire format: framing, handshakes, peerlists.
//!
//! Pure functions, no I/O. The facts (and the captured bytes the tests
//! compare against) come from the protocol notes for the heartbeat directory
//! node, checked against joinmarket-ng's `jmcore`, joinmarket-rs and the
//! reference joinmarket-clientserver.
//!
//! # Framing
//! One JSON object per line, `{"type": <int>, "line": "<string>"}`, ended by
//! `\r\n`. [`encode`] writes Python `json.dumps` spacing (`", "` and `": "`),
//! so a heartbeat is byte for byte what Python peers send; [`parse_envelope`]
//! accepts any spacing. Lines longer than [`MAX_LINE`] (terminator included)
//! must drop the connection; cutting lines is the reader's job.
//!
//! Strings are escaped the way `serde_json` does it: `"`, `\` and control
//! characters are escaped, everything else, non-ASCII included, is written as
//! UTF-8. Python's `json.dumps` would write `\uXXXX` for non-ASCII; both are
//! the same JSON to every reader, and raw UTF-8 means a line this module
//! re-encodes is never longer than the escaped string it was parsed from.
//!
//! # Refusing a handshake
//! [`parse_handshake`] tells two kinds of refusal apart:
//! [`HandshakeError::Malformed`] is something that is not a handshake (close
//! without a reply, as the reference directory does with a syntax failure),
//! [`HandshakeError::Rejected`] is a well-formed handshake from a peer we do
//! not serve (reply 795 with `"accepted": false`, then close).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Longest line accepted, terminator included (reference and joinmarket-rs).
pub const MAX_LINE: usize = 40_000;

/// Private message: `<from>!<to>!<cmd> ... <hexpubkey> <b64sig>`.
pub const PRIVMSG: u32 = 685;
/// Public message: `<from>!PUBLIC!<cmd> ...`, never signed.
pub const PUBMSG: u32 = 687;
/// Peer list: [`peer_entry`]s or [`peerlist_entry`]s joined by `,`.
pub const PEERLIST: u32 = 789;
/// A client asks for the [`PEERLIST`].
pub const GETPEERLIST: u32 = 791;
/// Client to directory handshake ([`client_handshake`], [`parse_handshake`]).
pub const HANDSHAKE: u32 = 793;
/// Directory to client handshake reply ([`dn_handshake`], [`parse_dn_handshake`]).
pub const DN_HANDSHAKE: u32 = 795;
/// Liveness probe with an empty `line` (older builds used 797).
///
/// Only for peers that advertised `"ping": true`; legacy clients ignore it.
pub const PING: u32 = 798;
/// Answer to [`PING`], empty `line`. Kills a legacy client's connection: send
/// it only to peers that advertised `"ping": true`.
pub const PONG: u32 = 799;
/// Disconnect notice. Kills a legacy client's connection, like [`PONG`].
pub const DISCONNECT: u32 = 801;

/// The only protocol version spoken (`proto-ver`, and both ends of the
/// directory's `proto-ver-min`/`proto-ver-max`).
pub const PROTO_VER: u64 = 5;
/// The `app-name` every handshake carries.
pub const APP_NAME: &str = "joinmarket";
/// The `location-string` of a peer that serves nothing (a taker).
pub const TAKER_LOCATION: &str = "NOT-SERVING-ONION";

/// Most entries in a handshake's `features` object (joinmarket-rs's limit).
pub const MAX_FEATURES: usize = 32;
/// Longest feature value, in bytes of compact JSON (joinmarket-rs's limit).
pub const MAX_FEATURE_VALUE: usize = 512;
/// Longest feature name, in bytes; names are `[a-z0-9_]+`.
const MAX_FEATURE_NAME: usize = 64;
/// Longest `app-name` and `network`, in bytes (joinmarket-rs's limit).
pub const MAX_NAME: usize = 64;
/// Longest `location-string`, in bytes (joinmarket-rs's limit).
const MAX_LOCATION: usize = 72;

/// Length of every nick: `J5`, base58 characters, `O` padding.
const NICK_LEN: usize = 16;
/// Random bytes behind a nick (jmcore's and the reference's `NICK_HASH_LENGTH`).
pub(crate) const NICK_HASH_LEN: usize = 10;
/// The base58 alphabet (Bitcoin's): no `0`, `O`, `I` or `l`.
const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/// Most characters of untrusted input quoted in an error message.
/// Characters of a v3 onion address before `.onion`.
const ONION_LEN: usize = 56;
/// The features we advertise, in jmcore's order and spacing.
const OUR_FEATURES: &str = r#"{"peerlist_features": true, "ping": true}"#;
/// The same with nick authentication (JMP-0005), as joinmarket-ng writes them.
const OUR_FEATURES_NICK_AUTH: &str = r#"{"nick_auth": true, "peerlist_features": true, "ping": true}"#;

/// One message: `{"type": N, "line": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The message type, e.g. [`PING`].
    pub kind: u32,
    /// The payload; borrowed from the parsed line when it holds no escapes.
    pub line: Cow<'a, str>,
}

impl Envelope<'_> {
    /// The same envelope, owning its payload.
    pub fn into_owned(self) -> Envelope<'static> {
        Envelope { kind: self.kind, line: Cow::Owned(self.line.into_owned()) }
    }
}

/// A line or payload that does not follow the wire format; the message says
/// what was wrong, quoting at most 64 characters of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

/// Parses one line WITHOUT its terminator (the caller strips `"\r\n"` or
/// `"\n"`; a leftover `"\r"` is JSON whitespace and harmless).
///
/// `type` must be a JSON integer that fits `u32` and `line` a JSON string;
/// other keys are ignored, and a repeated key counts its last value, as with
/// Python's `json.loads`. Both `{"type": 798, "line": ""}` and
/// `{"type":798,"line":""}` spacings are accepted. The whole line must be
/// UTF-8, and a line of [`MAX_LINE`] bytes or more is refused without being
/// parsed. Nothing here panics or recurses without bound on hostile input.
pub fn parse_envelope(line: &[u8]) -> Result<Envelope<'_>, WireError> {
    if line.len() >= MAX_LINE {
        return Err(WireError(format!("line of {} bytes reaches the {MAX_LINE}-byte limit", line.len())));
    }
    let text = std::str::from_utf8(line)
        .map_err(|e| WireError(format!("not UTF-8 (bad byte at offset {})", e.valid_up_to())))?;
    // Checked up front so serde never quotes a top-level string back at us.
    if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return Err(WireError("not a JSON object".to_owned()));
    }
    let raw: RawEnvelope<'_> = serde_json::from_str(text).map_err(|e| WireError(format!("not JSON: {e}")))?;
    let kind = match raw.kind {
        Some(Shallow::UInt(n)) => {
            u32::try_from(n).map_err(|_| WireError(format!("\"type\" {n} does not fit in u32")))?
        }
        Some(other) => {
            return Err(WireError(format!("\"type\" is {}, expected an integer", other.describe())));
        }
        None => return Err(WireError("missing \"type\"".to_owned())),
    };
    let line = match raw.line {
        Some(Shallow::Str(s)) => s,
        Some(other) => return Err(WireError(format!("\"line\" is {}, expected a string", other.describe()))),
        None => return Err(WireError("missing \"line\"".to_owned())),
    };
    Ok(Envelope { kind, line })
}

/// Appends `{"type": N, "line": "<json-escaped line>"}\r\n` to `out`: Python
/// `json.dumps` spacing, so `encode(PING, "", ..)` is exactly
/// `{"type": 798, "line": ""}\r\n`. No intermediate allocation.
pub fn encode(kind: u32, line: &str, out: &mut Vec<u8>) {
    // 9 + up to 10 digits + 11 + 4 bytes around the payload.
    out.reserve(line.len() + 34);
    out.extend_from_slice(b"{\"type\": ");
    push_u32(out, kind);
    out.extend_from_slice(b", \"line\": \"");
    escape(line, |part| out.extend_from_slice(part.as_bytes()));
    out.extend_from_slice(b"\"}\r\n");
}

/// Where a peer serves: a taker, or a maker reachable at an onion address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Serves nothing: `NOT-SERVING-ONION` (or an empty `location-string`).
    Taker,
    /// Serves at `<host>:<port>`.
    Maker {
        /// `<56 lowercase base32 characters>.onion`.
        host: String,
        /// The onion service's port, never 0.
        port: u16,
    },
}

impl Location {
    /// Parses a `location-string`: [`TAKER_LOCATION`] or `""` is a taker,
    /// `<56 lowercase base32 chars>.onion:<port>` (port 1 to 65535, decimal
    /// digits only) a maker; anything else is `None`.
    ///
    /// The onion address's checksum and version byte are not verified: the
    /// protocol notes ask for the shape only.
    pub fn parse(s: &str) -> Option<Location> {
        if s.is_empty() || s == TAKER_LOCATION {
            return Some(Location::Taker);
        }
        let (host, port) = s.rsplit_once(':')?;
        let onion = host.strip_suffix(".onion")?;
        if onion.len() != ONION_LEN || !onion.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
            return None;
        }
        // `u16::from_str` would also take a leading '+'.
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
        Some(Location::Maker { host: host.to_owned(), port })
    }

    /// Whether the peer serves an onion (makers do; takers do not).
    pub fn is_maker(&self) -> bool {
        matches!(self, Location::Maker { .. })
    }
}

impl fmt::Display for Location {
    /// `NOT-SERVING-ONION` for a taker, `host:port` for a maker.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Taker => f.write_str(TAKER_LOCATION),
            Location::Maker { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A client's handshake (the 793 `line`), parsed and accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Always [`APP_NAME`] once accepted.
    pub app_name: String,
    /// Always `false` once accepted: directories are not served as clients.
    pub directory: bool,
    /// Taker, or the maker's onion.
    pub location: Location,
    /// Always [`PROTO_VER`] once accepted.
    pub proto_ver: u64,
    /// The peer advertised `"features": {"ping": true}` (the JSON boolean):
    /// it answers [`PING`] and may be sent [`PONG`] and [`DISCONNECT`].
    pub ping: bool,
    /// The peer advertised `"features": {"peerlist_features": true}`: its
    /// PEERLIST entries may carry `;F:` ([`peer_entry`]).
    pub peerlist_features: bool,
    /// The peer advertised `"features": {"nick_auth": true}`: it offers to
    /// prove its nick (JMP-0005, [`super::auth`]).
    pub nick_auth: bool,
    /// The names of the features whose value is JSON `true`, sorted bytewise
    /// and joined with `+` (`"peerlist_features+ping"`), or `""` when none:
    /// what a PEERLIST entry writes after `;F:`. Names are `[a-z0-9_]+`, so
    /// this never holds the `,` and `;` that separate entries and fields.
    pub features: String,
    /// A valid nick ([`is_valid_nick`]); whether it is already connected is
    /// the server's question.
    pub nick: String,
    /// Equal to the network the handshake was checked against.
    pub network: String,
}

/// Why a handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a handshake at all (not a JSON object, a missing or ill-typed
    /// field, a bad `location-string`, a bad nick): close without a reply.
    Malformed(String),
    /// A well-formed handshake we refuse (app-name, proto-ver, network,
    /// `directory: true`): reply 795 with `"accepted": false`, then close.
    Rejected(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(why) => write!(f, "malformed handshake: {why}"),
            HandshakeError::Rejected(why) => write!(f, "handshake rejected: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Parses the 793 `line` (itself a JSON object) and validates it against our
/// `network`.
///
/// [`HandshakeError::Malformed`], checked first: the line is not a JSON
/// object; `app-name`, `location-string`, `nick` or `network` is missing or
/// not a string; `directory` is missing or not a boolean; `proto-ver` is
/// missing or not an integer; `features` is present but not an object, or
/// breaks joinmarket-rs's limits (more than [`MAX_FEATURES`] entries, a name
/// that is not `[a-z0-9_]+` of at most 64 bytes, a value longer than
/// [`MAX_FEATURE_VALUE`] bytes as compact JSON); `app-name` or `network` is
/// longer than 64 bytes, `location-string` longer than 72; the
/// `location-string` is neither a taker's nor a maker's (the protocol notes
/// call that "a bad handshake", and the reject list does not name it); the
/// nick fails [`is_valid_nick`]. Feature names end up in other peers'
/// PEERLISTs: unchecked, a name like `zz,J5VictimNickOOOO;NOT-SERVING-ONION;D`
/// would forge another peer's disconnect notice (as it does with joinmarket-ng).
///
/// [`HandshakeError::Rejected`], in this order: `app-name` is not
/// `joinmarket`, `directory` is `true`, `proto-ver` is not 5, `network`
/// differs from ours (all compared exactly, as the reference does).
///
/// Ping support is `features.ping` being JSON `true`; `"yes"`, `1`, a missing
/// `ping` or a missing `features` all mean no ping; likewise for
/// `peerlist_features`. Other features only count in [`Handshake::features`].
pub fn parse_handshake(line: &str, network: &str) -> Result<Handshake, HandshakeError> {
    use HandshakeError::{Malformed, Rejected};

    let map = json_object(line).map_err(Malformed)?;
    let app_name = str_field(&map, "app-name").map_err(Malformed)?;
    let directory = bool_field(&map, "directory").map_err(Malformed)?;
    let location_string = str_field(&map, "location-string").map_err(Malformed)?;
    let proto_ver = int_field(&map, "proto-ver").map_err(Malformed)?;
    let empty = Map::new();
    let features = match map.get("features") {
        None => &empty,
        Some(Value::Object(features)) => features,
        Some(other) => {
            return Err(Malformed(format!("\"features\" is {}, expected an object", kind_of(other))));
        }
    };
    check_features(features).map_err(Malformed)?;
    let nick = str_field(&map, "nick").map_err(Malformed)?;
    let their_network = str_field(&map, "network").map_err(Malformed)?;
    for (field, value, max) in [
        ("app-name", app_name, MAX_NAME),
        ("network", their_network, MAX_NAME),
        ("location-string", location_string, MAX_LOCATION),
    ] {
        if value.len() > max {
            return Err(Malformed(format!(
                "{field} of {} bytes is longer than {max}: {}",
                value.len(),
                quote(value)
            )));
        }
    }
    if !is_valid_nick(nick) {
        return Err(Malformed(format!("nick {} is not J5 + base58, 'O'-padded to 16", quote(nick))));
    }
    let location = Location::parse(location_string).ok_or_else(|| {
        Malformed(format!(
            "location-string {} is neither {TAKER_LOCATION:?} nor <onion>.onion:<port>",
            quote(location_string)
        ))
    })?;

    if app_name != APP_NAME {
        return Err(Rejected(format!("app-name is {}, expected {APP_NAME:?}", quote(app_name))));
    }
    if directory {
        return Err(Rejected("directory is true: directory nodes are not served as clients".to_owned()));
    }
    if proto_ver != i128::from(PROTO_VER) {
        return Err(Rejected(format!("proto-ver is {proto_ver}, expected {PROTO_VER}")));
    }
    if their_network != network {
        return Err(Rejected(format!("network is {}, expected {}", quote(their_network), quote(network))));
    }
    Ok(Handshake {
        app_name: APP_NAME.to_owned(),
        directory,
        location,
        proto_ver: PROTO_VER,
        ping: ping_feature(features),
        peerlist_features: features.get("peerlist_features") == Some(&Value::Bool(true)),
        nick_auth: features.get("nick_auth") == Some(&Value::Bool(true)),
        features: true_features(features),
        nick: nick.to_owned(),
        network: their_network.to_owned(),
    })
}

/// The directory's 795 reply (the inner JSON string, not the envelope), in
/// the captured field order with Python `json.dumps` spacing: `app-name`,
/// `directory: true`, `proto-ver-min: 5`, `proto-ver-max: 5`,
/// `features: {"peerlist_features": true, "ping": true}`, `accepted`, `nick`,
/// `network`, then `motd` when given.
pub fn dn_handshake(nick: &str, network: &str, motd: Option<&str>, accepted: bool) -> String {
    dn_handshake_with(nick, network, motd, accepted, false)
}

/// [`dn_handshake`], advertising `"nick_auth": true` first among the
/// features when `nick_auth` (as joinmarket-ng does with a directory id).
pub fn dn_handshake_with(
    nick: &str,
    network: &str,
    motd: Option<&str>,
    accepted: bool,
    nick_auth: bool,
) -> String {
    let features = if nick_auth { OUR_FEATURES_NICK_AUTH } else { OUR_FEATURES };
    let motd = motd.map(|motd| format!(", \"motd\": {}", json_str(motd))).unwrap_or_default();
    format!(
        "{{\"app-name\": \"{APP_NAME}\", \"directory\": true, \"proto-ver-min\": {PROTO_VER}, \
         \"proto-ver-max\": {PROTO_VER}, \"features\": {features}, \"accepted\": {accepted}, \
         \"nick\": {}, \"network\": {}{motd}}}",
        json_str(nick),
        json_str(network),
    )
}

/// A client's 793 line as jmcore sends it (captured order and spacing):
/// `app-name`, `directory: false`, `location-string`, `proto-ver: 5`,
/// `features` (`{"peerlist_features": true, "ping": true}` when `ping`, else
/// `{}` like reference clients), `nick`, `network`.
pub fn client_handshake(nick: &str, network: &str, location: &Location, ping: bool) -> String {
    client_handshake_with(nick, network, location, ping, false)
}

/// [`client_handshake`], advertising `"nick_auth": true` when `nick_auth`:
/// `{"nick_auth": true, "peerlist_features": true, "ping": true}` as jmcore
/// writes it, or `{"nick_auth": true}` without `ping`.
pub fn client_handshake_with(
    nick: &str,
    network: &str,
    location: &Location,
    ping: bool,
    nick_auth: bool,
) -> String {
    let features = match (ping, nick_auth) {
        (true, true) => OUR_FEATURES_NICK_AUTH,
        (true, false) => OUR_FEATURES,
        (false, true) => r#"{"nick_auth": true}"#,
        (false, false) => "{}",
    };
    format!(
        "{{\"app-name\": \"{APP_NAME}\", \"directory\": false, \"location-string\": {}, \
         \"proto-ver\": {PROTO_VER}, \"features\": {features}, \"nick\": {}, \"network\": {}}}",
        json_str(&location.to_string()),
        json_str(nick),
        json_str(network),
    )
}

/// A directory's 795 reply, as our client needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryReply {
    /// Whether the directory admitted us; if not, it closes the connection.
    pub accepted: bool,
    /// The directory's nick.
    pub nick: String,
    /// The directory's network; the caller compares it with its own.
    pub network: String,
    /// The message of the day, when present and a string.
    pub motd: Option<String>,
    /// The directory advertised `"features": {"ping": true}`.
    pub ping: bool,
    /// The directory advertised `"features": {"nick_auth": true}`: it will
    /// challenge a client that advertised it too (JMP-0005).
    pub nick_auth: bool,
}

/// Parses a 795 reply (the inner JSON string).
///
/// Like the reference client, refuses a reply missing any of `app-name`,
/// `directory`, `proto-ver-min`, `proto-ver-max`, `features` (an object),
/// `accepted`, `nick`, `network`, or with one of the wrong type; also refuses
/// one whose `app-name` is not `joinmarket`, whose `directory` is not `true`,
/// or whose `[proto-ver-min, proto-ver-max]` does not contain 5. `motd` is
/// optional (a non-string `motd` counts as none). These checks apply to
/// refusals too: `Ok` with `accepted: false` is a well-formed refusal, whose
/// `motd` may say why.
pub fn parse_dn_handshake(line: &str) -> Result<DirectoryReply, WireError> {
    let map = json_object(line).map_err(WireError)?;
    let app_name = str_field(&map, "app-name").map_err(WireError)?;
    let directory = bool_field(&map, "directory").map_err(WireError)?;
    let min = int_field(&map, "proto-ver-min").map_err(WireError)?;
    let max = int_field(&map, "proto-ver-max").map_err(WireError)?;
    let features = match map.get("features") {
        Some(Value::Object(features)) => features,
        Some(other) => {
            return Err(WireError(format!("\"features\" is {}, expected an object", kind_of(other))));
        }
        None => return Err(WireError("missing \"features\"".to_owned())),
    };
    let accepted = bool_field(&map, "accepted").map_err(WireError)?;
    let nick = str_field(&map, "nick").map_err(WireError)?;
    let network = str_field(&map, "network").map_err(WireError)?;

    if app_name != APP_NAME {
        return Err(WireError(format!("app-name is {}, expected {APP_NAME:?}", quote(app_name))));
    }
    if !directory {
        return Err(WireError("directory is false in a directory's reply".to_owned()));
    }
    let ours = i128::from(PROTO_VER);
    if !(min <= ours && ours <= max) {
        return Err(WireError(format!("proto-ver range [{min}, {max}] does not contain {PROTO_VER}")));
    }
    Ok(DirectoryReply {
        accepted,
        nick: nick.to_owned(),
        network: network.to_owned(),
        motd: map.get("motd").and_then(Value::as_str).map(str::to_owned),
        ping: ping_feature(features),
        nick_auth: features.get("nick_auth") == Some(&Value::Bool(true)),
    })
}

/// One PEERLIST entry: `<nick>;<location>`, or `<nick>;<location>;D` for a
/// peer that disconnected. Entries with `;F:` are [`peer_entry`]'s.
pub fn peerlist_entry(nick: &str, location: &Location, disconnected: bool) -> String {
    let mut entry = format!("{nick};{location}");
    if disconnected {
        entry.push_str(";D");
    }
    entry
}

/// One PEERLIST entry for a connected peer: `<nick>;<location>`, plus
/// `;F:<features>` when `features` (a [`Handshake::features`]) is `Some` and
/// not empty. Pass `None` for a requester that did not advertise
/// `peerlist_features`. Disconnect notices are [`peerlist_entry`]'s: a `;D`
/// entry never carries `F:`.
pub fn peer_entry(nick: &str, location: &Location, features: Option<&str>) -> String {
    let mut entry = format!("{nick};{location}");
    if let Some(features) = features.filter(|f| !f.is_empty()) {
        entry.push_str(";F:");
        entry.push_str(features);
    }
    entry
}

/// Entries joined by `,`: the PEERLIST `line`.
pub fn peerlist<'a>(entries: impl IntoIterator<Item = &'a str>) -> String {
    let mut line = String::new();
    for (i, entry) in entries.into_iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(entry);
    }
    line
}

/// Parses a PEERLIST line into `(nick, location string, disconnected)`
/// triples, for the client. Lenient: entries are trimmed, empty ones and ones
/// without a `;` or with an empty nick are skipped, and fields after the
/// location other than `D` (jmcore's `F:<features>`) are ignored. Nicks and
/// locations are not validated.
pub fn parse_peerlist(line: &str) -> Vec<(String, String, bool)> {
    line.split(',')
        .filter_map(|entry| {
            let mut fields = entry.trim().split(';');
            let nick = fields.next().filter(|nick| !nick.is_empty())?;
            let location = fields.next()?;
            let disconnected = fields.any(|field| field == "D");
            Some((nick.to_owned(), location.to_owned(), disconnected))
        })
        .collect()
}

/// A random nick of the reference's form: `J5`, then 10 random bytes in
/// base58 (10 to 14 characters), right-padded with `O` to 16 characters.
pub fn random_nick() -> String {
    let (a, b) = (crate::random::u64(), crate::random::u64());
    let mut hash = [0u8; NICK_HASH_LEN];
    hash[..8].copy_from_slice(&a.to_be_bytes());
    hash[8..].copy_from_slice(&b.to_be_bytes()[..NICK_HASH_LEN - 8]);
    nick_from_hash(hash)
}

/// `J5` + Bitcoin base58 of `hash` (a `1` per leading zero byte, then the
/// number's digits) + `O` padding, as the reference builds a nick from the
/// first 10 bytes of its key's hash. 10 bytes never take more than 14
/// characters (58^14 > 2^80, and each leading zero costs one character but
/// removes 8 bits), so the result is always 16 characters.
pub(crate) fn nick_from_hash(hash: [u8; NICK_HASH_LEN]) -> String {
    let mut nick = String::with_capacity(NICK_LEN);
    nick.push_str("J5");
    for _ in hash.iter().take_while(|&&byte| byte == 0) {
        nick.push('1');
    }
    let mut n = hash.iter().fold(0u128, |n, &byte| (n << 8) | u128::from(byte));
    let mut digits = [0u8; NICK_LEN - 2];
    let mut start = digits.len();
    while n > 0 {
        start -= 1;
        digits[start] = BASE58[(n % 58) as usize];
        n /= 58;
    }
    nick.extend(digits[start..].iter().map(|&d| char::from(d)));
    while nick.len() < NICK_LEN {
        nick.push('O');
    }
    nick
}

/// Whether `nick` has the form of a JoinMarket nick: `J5`, then at least one
/// base58 character, then only `O` padding, 16 characters in all
/// (`J58xFhRi1utTq6zF`, `J5DirNickOOOOOOO`). Base58 has no `O`, so the padding
/// is unambiguous. Nicks never contain the `;`, `,` or `!` the wire uses as
/// separators.
pub fn is_valid_nick(nick: &str) -> bool {
    let Some(body) = nick.strip_prefix("J5") else {
        return false;
    };
    let hash = body.trim_end_matches('O');
    nick.len() == NICK_LEN && !hash.is_empty() && hash.bytes().all(|b| BASE58.contains(&b))
}

/// The orderbook probe a non-ping maker gets, sent as [`PUBMSG`]:
/// `<dn_nick>!PUBLIC!orderbook`. The maker answers with its offers.
pub fn orderbook_probe(dn_nick: &str) -> String {
    format!("{dn_nick}!PUBLIC!orderbook")
}

/// Who a PUBMSG or PRIVMSG is from and for.
///
/// Borrowed from the message's `line`; nothing is validated beyond the
/// shape (the server compares `from` with the sender's nick, and looks `to`
/// up among its peers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The sender's nick as the line gives it, never empty.
    pub from: &'a str,
    /// The recipient's nick, never empty; `None` for a PUBMSG (`PUBLIC`).
    pub to: Option<&'a str>,
    /// The command: the text after the second `!` up to the first ASCII
    /// whitespace or the next `!`, e.g. `orderbook`. May be empty: a
    /// directory relays any command.
    pub command: &'a str,
}

/// Reads the routing header of a [`PUBMSG`] or [`PRIVMSG`] `line`.
///
/// PUBMSG: `<from>!PUBLIC!<cmd> <args>`, the second field exactly `PUBLIC`.
/// PRIVMSG: `<from>!<to>!<cmd> <args> <pubkey> <sig>`, `to` the text between
/// the first and second `!`. Either way `from` and `to` must be non-empty and
/// the second `!` present; otherwise, and for any other `kind`, `None`.
/// Borrows only, and reads each byte of `line` at most once.
pub fn parse_route(kind: u32, line: &str) -> Option<Route<'_>> {
    if kind != PUBMSG && kind != PRIVMSG {
        return None;
    }
    let (from, rest) = line.split_once('!')?;
    let (to, body) = rest.split_once('!')?;
    if from.is_empty() || to.is_empty() {
        return None;
    }
    let to = match kind {
        PUBMSG if to == "PUBLIC" => None,
        PUBMSG => return None,
        _ => Some(to),
    };
    let end = body.find(|c: char| c == '!' || c.is_ascii_whitespace()).unwrap_or(body.len());
    Some(Route { from, to, command: &body[..end] })
}

/// Whether `command` (a [`Route::command`]) is `orderbook`, in any case, as
/// joinmarket-rs matches commands.
pub fn is_orderbook(command: &str) -> bool {
    command.eq_ignore_ascii_case("orderbook")
}

// ---------------------------------------------------------------------------
// Envelope deserialization: borrows `line`, never quotes input in errors.

/// The two keys of an envelope, last value wins; anything else was skipped.
struct RawEnvelope<'a> {
    kind: Option<Shallow<'a>>,
    line: Option<Shallow<'a>>,
}

impl<'de> Deserialize<'de> for RawEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;

        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = RawEnvelope<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawEnvelope { kind: None, line: None };
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Type => raw.kind = Some(map.next_value()?),
                        Key::Line => raw.line = Some(map.next_value()?),
                        // serde_json skips ignored values iteratively: no recursion.
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(raw)
            }
        }

        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

/// An envelope key.
enum Key {
    Type,
    Line,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "type" => Key::Type,
                    "line" => Key::Line,
                    _ => Key::Other,
                })
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Any JSON value, kept only as far as an envelope needs it. Accepting every
/// type keeps serde's "invalid type" errors, which quote the whole value, out.
enum Shallow<'a> {
    Str(Cow<'a, str>),
    UInt(u64),
    NegInt(i64),
    Float,
    Bool,
    Null,
    Array,
    Object,
}

impl Shallow<'_> {
    /// "a string (\"...\")", "an array", ... for error messages.
    fn describe(&self) -> String {
        match self {
            Shallow::Str(s) => format!("a string ({})", quote(s)),
            Shallow::UInt(n) => format!("the integer {n}"),
            Shallow::NegInt(n) => format!("the integer {n}"),
            Shallow::Float => "a non-integer or out-of-range number".to_owned(),
            Shallow::Bool => "a boolean".to_owned(),
            Shallow::Null => "null".to_owned(),
            Shallow::Array => "an array".to_owned(),
            Shallow::Object => "an object".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Shallow<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShallowVisitor;

        impl<'de> Visitor<'de> for ShallowVisitor {
            type Value = Shallow<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Shallow::Bool)
            }

            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(u64::try_from(n).map_or(Shallow::NegInt(n), Shallow::UInt))
            }

            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Shallow::UInt(n))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Shallow::Float)
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Shallow::Str(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Shallow::Str(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Shallow::Str(Cow::Owned(s)))
            }

            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Shallow::Null)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shallow::Array)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shallow::Object)
            }
        }

        deserializer.deserialize_any(ShallowVisitor)
    }
}

// ---------------------------------------------------------------------------
// Handshake helpers (once per connection: serde_json::Value is fine here).

/// Parses `line` as a JSON object. serde_json errors on a `Value` are syntax
/// errors (or its nesting limit of 128) and never quote the input.
fn json_object(line: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("not a JSON object but {}", kind_of(&other))),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn str_field<'m>(map: &'m Map<String, Value>, key: &str) -> Result<&'m str, String> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{key:?} is {}, expected a string", kind_of(other))),
        None => Err(format!("missing {key:?}")),
    }
}

fn bool_field(map: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match map.get(key) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{key:?} is {}, expected a boolean", kind_of(other))),
        None => Err(format!("missing {key:?}")),
    }
}

/// A JSON integer (`i64` or `u64` range; larger integers parse as floats and
/// are refused, as are `5.0` and `5e0`).
fn int_field(map: &Map<String, Value>, key: &str) -> Result<i128, String> {
    let value = map.get(key).ok_or_else(|| format!("missing {key:?}"))?;
    let int = value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from));
    int.ok_or_else(|| format!("{key:?} is {}, expected an integer", kind_of(value)))
}

/// `features.ping` is the JSON boolean `true`.
fn ping_feature(features: &Map<String, Value>) -> bool {
    features.get("ping") == Some(&Value::Bool(true))
}

/// joinmarket-rs's limits on `features`: at most [`MAX_FEATURES`] entries,
/// names `[a-z0-9_]+` of at most 64 bytes, values of at most
/// [`MAX_FEATURE_VALUE`] bytes as compact JSON.
fn check_features(features: &Map<String, Value>) -> Result<(), String> {
    if features.len() > MAX_FEATURES {
        return Err(format!("{} features, more than {MAX_FEATURES}", features.len()));
    }
    for (name, value) in features {
        let name_ok = !name.is_empty()
            && name.len() <= MAX_FEATURE_NAME
            && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
        if !name_ok {
            return Err(format!("feature name {} is not [a-z0-9_]{{1,{MAX_FEATURE_NAME}}}", quote(name)));
        }
        let mut size = JsonSize { bytes: 0, max: MAX_FEATURE_VALUE };
        if serde_json::to_writer(&mut size, value).is_err() || size.bytes > MAX_FEATURE_VALUE {
            return Err(format!("feature {} has a value longer than {MAX_FEATURE_VALUE} bytes", quote(name)));
        }
    }
    Ok(())
}

/// Counts the bytes written to it, and fails once they pass `max` so a big
/// value is not serialized to its end.
struct JsonSize {
    bytes: usize,
    max: usize,
}

impl std::io::Write for JsonSize {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes = self.bytes.saturating_add(buf.len());
        if self.bytes > self.max {
            return Err(std::io::ErrorKind::Other.into());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The names of the features whose value is JSON `true`, sorted bytewise and
/// joined with `+`.
fn true_features(features: &Map<String, Value>) -> String {
    let mut names: Vec<&str> = features
        .iter()
        .filter(|(_, value)| **value == Value::Bool(true))
        .map(|(name, _)| name.as_str())
        .collect();
    names.sort_unstable();
    names.join("+")
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_f64() => "a non-integer number".to_owned(),
        Value::Number(n) => format!("the integer {n}"),
        Value::String(s) => format!("a string ({})", quote(s)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Output helpers.

use crate::json::quote;

/// JSON escapes for the 32 control characters, as serde_json and Python's
/// `json.dumps` write them.
const CONTROL_ESCAPES: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b", "\\t",
    "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012", "\\u0013",
    "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c",
    "\\u001d", "\\u001e", "\\u001f",
];

/// Hands `emit` the JSON-escaped form of `s` (without quotes), in pieces:
/// unescaped runs are passed through whole.
fn escape(s: &str, mut emit: impl FnMut(&str)) {
    let mut start = 0;
    for (i, &byte) in s.as_bytes().iter().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..=0x1f => CONTROL_ESCAPES[usize::from(byte)],
            _ => continue,
        };
        // Escaped bytes are ASCII, so `i` is a character boundary.
        if start < i {
            emit(&s[start..i]);
        }
        emit(escaped);
        start = i + 1;
    }
    if start < s.len() {
        emit(&s[start..]);
    }
}

/// `s` as a quoted JSON string.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    escape(s, |part| out.push_str(part));
    out.push('"');
    out
}

/// Appends `n` in decimal.
fn push_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jmcore client handshake, as captured.
    const CAPTURED_793: &str = r#"{"type": 793, "line": "{\"app-name\": \"joinmarket\", \"directory\": false, \"location-string\": \"NOT-SERVING-ONION\", \"proto-ver\": 5, \"features\": {\"peerlist_features\": true, \"ping\": true}, \"nick\": \"J58xFhRi1utTq6zF\", \"network\": \"regtest\"}"}"#;
    /// joinmarket-ng's directory reply, as captured.
    const CAPTURED_795: &str = r#"{"type": 795, "line": "{\"app-name\": \"joinmarket\", \"directory\": true, \"proto-ver-min\": 5, \"proto-ver-max\": 5, \"features\": {\"peerlist_features\": true, \"ping\": true}, \"accepted\": true, \"nick\": \"J5DirNickOOOOOOO\", \"network\": \"regtest\", \"motd\": \"...\"}"}"#;
    /// The probe a legacy maker got, as captured.
    const CAPTURED_PROBE: &str = r#"{"type": 687, "line": "J5DirNickOOOOOOO!PUBLIC!orderbook"}"#;
    /// A v3 onion address (56 base32 characters).
    const ONION: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    fn encoded(kind: u32, line: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode(kind, line, &mut out);
        out
    }

    fn with_crlf(s: &str) -> Vec<u8> {
        format!("{s}\r\n").into_bytes()
    }

    /// The captured 793 handshake line with one field's JSON replaced.
    fn handshake_with(field: &str, json: &str) -> String {
        with_field(&captured_793_line(), field, json)
    }

    /// A JSON object `line` with `field` set to `json`, or removed for "<absent>".
    fn with_field(line: &str, field: &str, json: &str) -> String {
        let mut map = json_object(line).unwrap();
        match json {
            "<absent>" => {
                map.remove(field);
            }
            _ => {
                map.insert(field.to_owned(), serde_json::from_str(json).unwrap());
            }
        }
        Value::Object(map).to_string()
    }

    fn captured_793_line() -> String {
        parse_envelope(CAPTURED_793.as_bytes()).unwrap().line.into_owned()
    }

    fn captured_795_line() -> String {
        parse_envelope(CAPTURED_795.as_bytes()).unwrap().line.into_owned()
    }

    fn dn_with(field: &str, json: &str) -> String {
        with_field(&captured_795_line(), field, json)
    }

    fn err(line: &[u8]) -> String {
        parse_envelope(line).unwrap_err().0
    }

    #[test]
    fn ping_and_pong_are_the_captured_bytes() {
        assert_eq!(encoded(PING, ""), b"{\"type\": 798, \"line\": \"\"}\r\n");
        assert_eq!(encoded(PONG, ""), b"{\"type\": 799, \"line\": \"\"}\r\n");
        assert_eq!(encoded(0, "x"), b"{\"type\": 0, \"line\": \"x\"}\r\n");
        assert_eq!(encoded(u32::MAX, ""), b"{\"type\": 4294967295, \"line\": \"\"}\r\n");
    }

    #[test]
    fn encode_appends() {
        let mut out = b"before".to_vec();
        encode(PING, "", &mut out);
        encode(PONG, "", &mut out);
        assert_eq!(out, b"before{\"type\": 798, \"line\": \"\"}\r\n{\"type\": 799, \"line\": \"\"}\r\n");
    }

    #[test]
    fn directory_handshake_is_the_captured_bytes() {
        let line = dn_handshake("J5DirNickOOOOOOO", "regtest", Some("..."), true);
        assert_eq!(encoded(DN_HANDSHAKE, &line), with_crlf(CAPTURED_795));
        assert_eq!(line, captured_795_line());
    }

    #[test]
    fn client_handshake_is_the_captured_bytes() {
        let line = client_handshake("J58xFhRi1utTq6zF", "regtest", &Location::Taker, true);
        assert_eq!(encoded(HANDSHAKE, &line), with_crlf(CAPTURED_793));
    }

    #[test]
    fn client_handshake_without_ping_sends_empty_features() {
        let maker = Location::parse(&format!("{ONION}:5222")).unwrap();
        let line = client_handshake("J58xFhRi1utTq6zF", "mainnet", &maker, false);
        assert_eq!(
            line,
            format!(
                "{{\"app-name\": \"joinmarket\", \"directory\": false, \"location-string\": \"{ONION}:5222\", \
                 \"proto-ver\": 5, \"features\": {{}}, \"nick\": \"J58xFhRi1utTq6zF\", \"network\": \"mainnet\"}}"
            )
        );
        let hs = parse_handshake(&line, "mainnet").unwrap();
        assert_eq!(hs.location, maker);
        assert!(!hs.ping);
    }

    #[test]
    fn orderbook_probe_is_the_captured_bytes() {
        assert_eq!(encoded(PUBMSG, &orderbook_probe("J5DirNickOOOOOOO")), with_crlf(CAPTURED_PROBE));
    }

    #[test]
    fn dn_handshake_variants() {
        let refused = dn_handshake("J5DirNickOOOOOOO", "mainnet", None, false);
        assert!(
            refused
                .contains("\"accepted\": false, \"nick\": \"J5DirNickOOOOOOO\", \"network\": \"mainnet\"}")
        );
        assert!(!refused.contains("motd"));
        let reply = parse_dn_handshake(&refused).unwrap();
        assert!(!reply.accepted);
        assert_eq!(reply.motd, None);

        let motd = "quote \" backslash \\ newline \n tab \t nul \0 é ✓";
        let line = dn_handshake("J5DirNickOOOOOOO", "regtest", Some(motd), true);
        assert_eq!(parse_dn_handshake(&line).unwrap().motd.as_deref(), Some(motd));
        assert!(line.contains(r#""motd": "quote \" backslash \\ newline \n tab \t nul \u0000 é ✓""#));
    }

    #[test]
    fn both_spacings_parse() {
        for line in [&b"{\"type\": 798, \"line\": \"\"}"[..], b"{\"type\":798,\"line\":\"\"}"] {
            assert_eq!(parse_envelope(line).unwrap(), Envelope { kind: PING, line: Cow::Borrowed("") });
        }
        let spaced = b" \t{ \"line\" :\"x\" , \"type\" : 685 } ";
        assert_eq!(parse_envelope(spaced).unwrap(), Envelope { kind: PRIVMSG, line: "x".into() });
    }

    #[test]
    fn captured_lines_parse() {
        let hs = parse_envelope(CAPTURED_793.as_bytes()).unwrap();
        assert_eq!(hs.kind, HANDSHAKE);
        assert!(hs.line.starts_with("{\"app-name\": \"joinmarket\""));
        assert!(matches!(hs.line, Cow::Owned(_)), "escaped quotes cannot be borrowed");
        let probe = parse_envelope(CAPTURED_PROBE.as_bytes()).unwrap();
        assert_eq!(probe, Envelope { kind: PUBMSG, line: "J5DirNickOOOOOOO!PUBLIC!orderbook".into() });
        assert!(matches!(probe.line, Cow::Borrowed(_)), "no escapes: borrowed");
    }

    #[test]
    fn terminator_leftovers_are_whitespace() {
        // A "\r\n" line cut at "\n" keeps its "\r".
        let env = parse_envelope(b"{\"type\": 799, \"line\": \"\"}\r").unwrap();
        assert_eq!(env.kind, PONG);
        let env = parse_envelope(b"{\"type\": 799, \"line\": \"\"}").unwrap();
        assert_eq!(env.kind, PONG);
    }

    #[test]
    fn other_keys_are_ignored_and_the_last_value_wins() {
        let env = parse_envelope(br#"{"x": [1, {"y": null}], "type": 1, "line": "a", "type": 789}"#).unwrap();
        assert_eq!(env, Envelope { kind: PEERLIST, line: "a".into() });
        // Escaped keys are still the keys.
        let env = parse_envelope(br#"{"typ\u0065": 791, "line": ""}"#).unwrap();
        assert_eq!(env.kind, GETPEERLIST);
    }

    #[test]
    fn round_trip_through_encode() {
        for line in ["", "plain", "q\"b\\s/", "\r\n\t\u{0}\u{1f}\u{7f}", "é ✓ 😀 \u{2028}", "{\"a\": 1}"]
        {
            let bytes = encoded(PRIVMSG, line);
            assert!(bytes.ends_with(b"\r\n"));
            assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1, "one line: {line:?}");
            let env = parse_envelope(&bytes[..bytes.len() - 2]).unwrap();
            assert_eq!(env, Envelope { kind: PRIVMSG, line: line.into() });
            // Same bytes as serde_json's escaping.
            let expected =
                format!("{{\"type\": 685, \"line\": {}}}\r\n", serde_json::to_string(line).unwrap());
            assert_eq!(bytes, expected.as_bytes());
        }
    }

    #[test]
    fn type_must_be_a_u32_integer() {
        assert!(err(br#"{"type": "798", "line": ""}"#).contains("\"type\" is a string (\"798\")"));
        assert!(err(br#"{"type": 798.0, "line": ""}"#).contains("non-integer"));
        assert!(err(br#"{"type": 7.98e2, "line": ""}"#).contains("non-integer"));
        assert!(err(br#"{"type": -1, "line": ""}"#).contains("the integer -1"));
        assert!(err(br#"{"type": 4294967296, "line": ""}"#).contains("does not fit in u32"));
        assert!(err(br#"{"type": 18446744073709551616, "line": ""}"#).contains("\"type\""));
        assert!(err(br#"{"type": true, "line": ""}"#).contains("a boolean"));
        assert!(err(br#"{"type": null, "line": ""}"#).contains("null"));
        assert!(err(br#"{"type": [798], "line": ""}"#).contains("an array"));
        assert!(err(br#"{"type": {}, "line": ""}"#).contains("an object"));
        assert_eq!(err(br#"{"line": ""}"#), "missing \"type\"");
    }

    #[test]
    fn line_must_be_a_string() {
        assert!(err(br#"{"type": 798, "line": 5}"#).contains("\"line\" is the integer 5"));
        assert!(err(br#"{"type": 798, "line": null}"#).contains("\"line\" is null"));
        assert!(err(br#"{"type": 798, "line": ["x"]}"#).contains("an array"));
        assert!(err(br#"{"type": 798, "line": {"a": "b"}}"#).contains("an object"));
        assert_eq!(err(br#"{"type": 798}"#), "missing \"line\"");
    }

    #[test]
    fn non_objects_and_garbage_are_errors() {
        for line in [
            &b""[..],
            b"   ",
            b"[798, \"\"]",
            b"\"{\\\"type\\\": 798}\"",
            b"798",
            b"null",
            b"{",
            b"{\"type\": 798, \"line\": \"\"",
            b"{\"type\": 798, \"line\": \"\"}}",
            b"{\"type\": 798, \"line\": \"\"} x",
            b"{\"type\": 798, \"line\": \"\x01\"}",
            b"{'type': 798, 'line': ''}",
            b"{\"type\": 798, \"line\": \"\\x\"}",
            b"{\"type\": 798, \"line\": \"\xff\"}",
        ] {
            assert!(parse_envelope(line).is_err(), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn errors_quote_at_most_64_characters() {
        let long = "A".repeat(10_000);
        for line in [
            format!(r#"{{"type": "{long}", "line": ""}}"#),
            format!(r#""{long}""#),
            format!(r#"{{"type": 1, "line": "{long}", "z": }}"#),
        ] {
            let msg = err(line.as_bytes());
            assert!(msg.len() < 200, "{} bytes: {msg}", msg.len());
            assert!(!msg.contains(&"A".repeat(65)));
        }
        let msg = parse_handshake(&format!(r#"{{"nick": "{long}"}}"#), "regtest").unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        let msg = parse_handshake(&handshake_with("network", &format!("\"{long}\"")), "regtest").unwrap_err();
        assert!(msg.to_string().len() < 200, "{msg}");
    }

    #[test]
    fn overlong_lines_are_refused_unparsed() {
        let mut line = br#"{"type": 685, "line": ""#.to_vec();
        line.resize(MAX_LINE - 3, b'x');
        line.extend_from_slice(b"\"}");
        assert_eq!(line.len(), MAX_LINE - 1);
        assert_eq!(parse_envelope(&line).unwrap().line.len(), MAX_LINE - 1 - 25);
        line.insert(1, b' ');
        assert!(err(&line).contains("limit"));
    }

    #[test]
    fn deep_nesting_does_not_panic() {
        let depth = 15_000;
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        // Ignored values are skipped without recursion: accepted.
        let ignored = format!(r#"{{"x": {nested}, "type": 798, "line": ""}}"#);
        assert_eq!(parse_envelope(ignored.as_bytes()).unwrap().kind, PING);
        // In `type`, `line`, or unbalanced: an error, not a stack overflow.
        assert!(parse_envelope(format!(r#"{{"type": {nested}, "line": ""}}"#).as_bytes()).is_err());
        assert!(parse_envelope(format!(r#"{{"type": 798, "line": {nested}}}"#).as_bytes()).is_err());
        let open = format!(r#"{{"type": 798, "line": "", "x": {}"#, "[{\"a\":".repeat(depth));
        assert!(parse_envelope(open.as_bytes()).is_err());
        // Handshakes go through serde_json's Value: its recursion limit (128) errors.
        let hostile = format!(r#"{{"features": {}{}}}"#, "{\"a\":".repeat(depth), "}".repeat(depth));
        match parse_handshake(&hostile, "regtest") {
            Err(HandshakeError::Malformed(why)) => assert!(why.contains("recursion limit"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(parse_dn_handshake(&hostile).unwrap_err().0.contains("recursion limit"));
    }

    #[test]
    fn the_captured_handshake_is_accepted() {
        let hs = parse_handshake(&captured_793_line(), "regtest").unwrap();
        assert_eq!(
            hs,
            Handshake {
                app_name: "joinmarket".to_owned(),
                directory: false,
                location: Location::Taker,
                proto_ver: 5,
                ping: true,
                peerlist_features: true,
                nick_auth: false,
                features: "peerlist_features+ping".to_owned(),
                nick: "J58xFhRi1utTq6zF".to_owned(),
                network: "regtest".to_owned(),
            }
        );
        // Compact spacing and a different key order are the same handshake.
        let compact = Value::Object(json_object(&captured_793_line()).unwrap()).to_string();
        assert_eq!(parse_handshake(&compact, "regtest").unwrap(), hs);
    }

    #[test]
    fn well_formed_strangers_are_rejected() {
        let rejected = |line: &str, network: &str| match parse_handshake(line, network) {
            Err(HandshakeError::Rejected(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(rejected(&captured_793_line(), "mainnet"), "network is \"regtest\", expected \"mainnet\"");
        assert_eq!(
            rejected(&handshake_with("app-name", "\"bitcoin\""), "regtest"),
            "app-name is \"bitcoin\", expected \"joinmarket\""
        );
        assert!(rejected(&handshake_with("app-name", "\"JoinMarket\""), "regtest").contains("app-name"));
        assert_eq!(rejected(&handshake_with("proto-ver", "4"), "regtest"), "proto-ver is 4, expected 5");
        assert_eq!(rejected(&handshake_with("proto-ver", "6"), "regtest"), "proto-ver is 6, expected 5");
        assert_eq!(rejected(&handshake_with("proto-ver", "-5"), "regtest"), "proto-ver is -5, expected 5");
        assert!(rejected(&handshake_with("directory", "true"), "regtest").starts_with("directory is true"));
        let err = parse_handshake(&captured_793_line(), "signet").unwrap_err();
        assert_eq!(err.to_string(), "handshake rejected: network is \"regtest\", expected \"signet\"");
    }

    #[test]
    fn broken_handshakes_are_malformed() {
        let malformed = |line: &str| match parse_handshake(line, "regtest") {
            Err(HandshakeError::Malformed(why)) => why,
            other => panic!("{line}: {other:?}"),
        };
        assert!(malformed("").contains("not JSON"));
        assert!(malformed("[]").contains("not a JSON object"));
        assert!(malformed("\"{}\"").contains("not a JSON object"));
        for field in ["app-name", "directory", "location-string", "proto-ver", "nick", "network"] {
            assert_eq!(malformed(&handshake_with(field, "<absent>")), format!("missing \"{field}\""));
        }
        assert!(malformed(&handshake_with("app-name", "5")).contains("expected a string"));
        assert!(malformed(&handshake_with("directory", "\"false\"")).contains("expected a boolean"));
        assert!(malformed(&handshake_with("directory", "0")).contains("expected a boolean"));
        assert!(malformed(&handshake_with("proto-ver", "\"5\"")).contains("expected an integer"));
        assert!(malformed(&handshake_with("proto-ver", "5.0")).contains("expected an integer"));
        assert!(malformed(&handshake_with("features", "null")).contains("expected an object"));
        assert!(malformed(&handshake_with("features", "[\"ping\"]")).contains("expected an object"));
        assert!(malformed(&handshake_with("nick", "null")).contains("expected a string"));
        assert!(malformed(&handshake_with("network", "[]")).contains("expected a string"));
        assert!(malformed(&handshake_with("nick", "\"J5bad;nick,OOOOO\"")).starts_with("nick"));
        assert!(
            malformed(&handshake_with("location-string", "\"localhost:5222\""))
                .starts_with("location-string")
        );
        // Malformed wins over Rejected: a broken nick on the wrong network gets no reply.
        let both = handshake_with("nick", "\"nobody\"");
        assert!(matches!(parse_handshake(&both, "mainnet"), Err(HandshakeError::Malformed(_))));
        assert!(
            parse_handshake("{}", "regtest")
                .unwrap_err()
                .to_string()
                .starts_with("malformed handshake: missing")
        );
    }

    #[test]
    fn ping_support_needs_json_true() {
        let ping =
            |features: &str| parse_handshake(&handshake_with("features", features), "regtest").unwrap().ping;
        assert!(ping(r#"{"ping": true}"#));
        assert!(ping(r#"{"peerlist_features": true, "ping": true, "future": [1, 2]}"#));
        assert!(!ping(r#"{"ping": "yes"}"#));
        assert!(!ping(r#"{"ping": "true"}"#));
        assert!(!ping(r#"{"ping": 1}"#));
        assert!(!ping(r#"{"ping": false}"#));
        assert!(!ping(r#"{"ping": null}"#));
        assert!(!ping(r#"{"peerlist_features": true}"#));
        assert!(!ping("{}"));
        let missing = parse_handshake(&handshake_with("features", "<absent>"), "regtest").unwrap();
        assert!(!missing.ping);
    }

    /// The reason a handshake with `features` set to `json` is malformed.
    fn malformed_features(json: &str) -> String {
        match parse_handshake(&handshake_with("features", json), "regtest") {
            Err(HandshakeError::Malformed(why)) => why,
            other => panic!("{json}: {other:?}"),
        }
    }

    /// The handshake with `features` set to `json`, accepted.
    fn with_features(json: &str) -> Handshake {
        parse_handshake(&handshake_with("features", json), "regtest").unwrap()
    }

    #[test]
    fn a_feature_name_cannot_forge_a_disconnect_notice() {
        let why = malformed_features(r#"{"zz,J5VictimNickOOOO;NOT-SERVING-ONION;D": true}"#);
        assert_eq!(why, r#"feature name "zz,J5VictimNickOOOO;NOT-SERVING-ONION;D" is not [a-z0-9_]{1,64}"#);
        // Hidden among good ones, or with a value that is not `true`: the same.
        let why = malformed_features(r#"{"ping": true, "zz,J5VictimNickOOOO;NOT-SERVING-ONION;D": 0}"#);
        assert!(why.starts_with("feature name"), "{why}");
    }

    #[test]
    fn feature_names_are_lowercase_digits_and_underscores() {
        let name64 = "a".repeat(64);
        let hs = with_features(&format!(r#"{{"{name64}": true, "a_0": true, "9": false}}"#));
        assert_eq!(hs.features, format!("a_0+{name64}"));
        for bad in ["", "Ping", "PING", "peerlist-features", "a b", "a+b", "a,b", "a;b", "é", "a\u{0}"] {
            let json = serde_json::json!({ bad: true }).to_string();
            assert!(malformed_features(&json).starts_with("feature name"), "{bad:?}");
        }
        let why = malformed_features(&format!(r#"{{"{}": true}}"#, "a".repeat(65)));
        assert!(why.starts_with("feature name"), "{why}");
        assert!(!why.contains(&"a".repeat(65)), "quotes at most 64 characters: {why}");
    }

    #[test]
    fn at_most_32_features() {
        let features = |n: usize| {
            let map: Map<String, Value> = (0..n).map(|i| (format!("f{i:02}"), Value::Bool(true))).collect();
            Value::Object(map).to_string()
        };
        let hs = with_features(&features(MAX_FEATURES));
        assert_eq!(hs.features.split('+').count(), 32);
        assert!(hs.features.starts_with("f00+f01+") && hs.features.ends_with("+f31"));
        assert!(!hs.ping);
        assert_eq!(malformed_features(&features(MAX_FEATURES + 1)), "33 features, more than 32");
    }

    #[test]
    fn feature_values_are_at_most_512_bytes_of_json() {
        // A string of 510 characters is 512 bytes with its quotes.
        let string = |n: usize| format!(r#"{{"fidelity_bond": "{}", "ping": true}}"#, "x".repeat(n));
        let hs = with_features(&string(510));
        assert_eq!(hs.features, "ping");
        let why = malformed_features(&string(511));
        assert_eq!(why, "feature \"fidelity_bond\" has a value longer than 512 bytes");
        // Measured compact, whatever the spacing sent: `[12,1,...,1]` of 255
        // elements is 512 bytes, `[1,...,1]` of 256 is 513.
        let array = |items: &[&str]| format!(r#"{{"list": [ {} ]}}"#, items.join(" ,  "));
        let mut items = vec!["1"; 255];
        items[0] = "12";
        assert!(with_features(&array(&items)).features.is_empty());
        assert!(malformed_features(&array(&["1"; 256])).contains("longer than 512"));
        // Escapes count: 255 quotes are 510 bytes escaped, 512 quoted.
        let quotes = |n: usize| serde_json::json!({ "q": "\"".repeat(n) }).to_string();
        assert!(with_features(&quotes(255)).features.is_empty());
        assert!(malformed_features(&quotes(256)).contains("longer than 512"));
        // A value far too big is refused without being serialized whole.
        assert!(malformed_features(&string(30_000)).contains("longer than 512"));
    }

    #[test]
    fn feature_sets_are_sorted_names_of_true_values() {
        let hs =
            with_features(r#"{"zeta": true, "ping": true, "peerlist_features": true, "x": 1, "y": "true"}"#);
        assert_eq!(hs.features, "peerlist_features+ping+zeta");
        assert!(hs.peerlist_features && hs.ping);
        // Bytewise: '0' < '_' < 'b'.
        assert_eq!(
            with_features(r#"{"b": true, "ab": true, "a_": true, "a0": true}"#).features,
            "a0+a_+ab+b"
        );
        let none = with_features("{}");
        assert_eq!((none.features.as_str(), none.peerlist_features, none.ping), ("", false, false));
        let not_bool = with_features(r#"{"peerlist_features": 1, "ping": "true"}"#);
        assert_eq!((not_bool.features.as_str(), not_bool.peerlist_features), ("", false));
        let absent = parse_handshake(&handshake_with("features", "<absent>"), "regtest").unwrap();
        assert_eq!((absent.features.as_str(), absent.peerlist_features), ("", false));
    }

    #[test]
    fn names_networks_and_locations_have_length_limits() {
        let parse = |field: &str, value: &str, network: &str| {
            parse_handshake(&handshake_with(field, &json_str(value)), network)
        };
        let malformed = |field: &str, value: &str, network: &str| match parse(field, value, network) {
            Err(HandshakeError::Malformed(why)) => why,
            other => panic!("{field} of {}: {other:?}", value.len()),
        };
        // 64 bytes: well-formed, merely wrong; 65: malformed.
        let (name64, name65) = ("a".repeat(64), "a".repeat(65));
        assert!(matches!(parse("app-name", &name64, "regtest"), Err(HandshakeError::Rejected(_))));
        let why = malformed("app-name", &name65, "regtest");
        assert!(why.starts_with("app-name of 65 bytes is longer than 64: \"aaa"), "{why}");
        assert!(!why.contains(&name65), "{why}");
        assert_eq!(parse("network", &name64, &name64).unwrap().network, name64);
        assert!(malformed("network", &name65, &name65).starts_with("network of 65 bytes is longer than 64"));
        // Multi-byte characters count in bytes.
        assert!(malformed("network", &"é".repeat(33), "regtest").starts_with("network of 66 bytes"));
        // No valid location is longer than 68 bytes; at 72 it is merely not
        // a location, at 73 too long to look at.
        let location = |n: usize| format!("{ONION}:{}", "5".repeat(n - ONION.len() - 1));
        assert_eq!(
            parse("location-string", &location(68), "regtest").unwrap().location.to_string(),
            location(68)
        );
        assert!(malformed("location-string", &location(72), "regtest").contains("neither"));
        let why = malformed("location-string", &location(73), "regtest");
        assert!(why.starts_with("location-string of 73 bytes is longer than 72"), "{why}");
        let maker = Location::parse(&format!("{ONION}:5222")).unwrap();
        assert_eq!(parse("location-string", &format!("{ONION}:5222"), "regtest").unwrap().location, maker);
    }

    #[test]
    fn peer_entries_are_the_captured_bytes() {
        let onion = "fotnunpfni65s7vzk6knqk47dixyizsvibax6poijnqeualxohjnqpyd.onion";
        let maker = Location::parse(&format!("{onion}:5222")).unwrap();
        let captured_hint =
            format!(r#"{{"type": 789, "line": "J58FvBzUbRKnJPxg;{onion}:5222;F:peerlist_features+ping"}}"#);
        let hint = peer_entry("J58FvBzUbRKnJPxg", &maker, Some("peerlist_features+ping"));
        assert_eq!(encoded(PEERLIST, &hint), with_crlf(&captured_hint));
        // GETPEERLIST answer: the requesting taker first, then the maker.
        let captured_list = format!(
            r#"{{"type": 789, "line": "J59TFbmxBbTzBaUL;NOT-SERVING-ONION;F:peerlist_features+ping,J58FvBzUbRKnJPxg;{onion}:5222;F:peerlist_features+ping"}}"#
        );
        let taker = peer_entry("J59TFbmxBbTzBaUL", &Location::Taker, Some("peerlist_features+ping"));
        assert_eq!(encoded(PEERLIST, &peerlist([taker.as_str(), hint.as_str()])), with_crlf(&captured_list));
        // rs: a legacy maker without features, and one with three.
        let legacy =
            Location::parse("wwtkb2jduzluf7lmamfdgugrlo3e7f43aby2e6mg5g7yxr4dtt3hspqd.onion:5222").unwrap();
        assert_eq!(
            peer_entry("J5FEhDDmEUBxF6B9", &legacy, Some("")),
            "J5FEhDDmEUBxF6B9;wwtkb2jduzluf7lmamfdgugrlo3e7f43aby2e6mg5g7yxr4dtt3hspqd.onion:5222"
        );
        let zeta =
            Location::parse("e27ca4gzw2pd42r5mpaygtqo4ki3y4jaij7u774uzpmakl6crdicw2yd.onion:5222").unwrap();
        assert_eq!(
            peer_entry("J5D8vGRfziu4hKrj", &zeta, Some("peerlist_features+ping+zeta")),
            "J5D8vGRfziu4hKrj;e27ca4gzw2pd42r5mpaygtqo4ki3y4jaij7u774uzpmakl6crdicw2yd.onion:5222;F:peerlist_features+ping+zeta"
        );
        // rs's whole answer (its envelope spacing aside), directory first.
        let directory =
            Location::parse("woadh26oclos7sf7miz56vbdoc2eext3rf5nez5665bdyhjevayjnjqd.onion:5222").unwrap();
        let rs_line = peerlist([
            peer_entry("J53Y9KnbQuECaVjq", &directory, Some("peerlist_features+ping")).as_str(),
            peer_entry("J5FEhDDmEUBxF6B9", &legacy, None).as_str(),
            peer_entry("J5D8vGRfziu4hKrj", &zeta, Some("peerlist_features+ping+zeta")).as_str(),
        ]);
        let captured_rs = r#"{"type":789,"line":"J53Y9KnbQuECaVjq;woadh26oclos7sf7miz56vbdoc2eext3rf5nez5665bdyhjevayjnjqd.onion:5222;F:peerlist_features+ping,J5FEhDDmEUBxF6B9;wwtkb2jduzluf7lmamfdgugrlo3e7f43aby2e6mg5g7yxr4dtt3hspqd.onion:5222,J5D8vGRfziu4hKrj;e27ca4gzw2pd42r5mpaygtqo4ki3y4jaij7u774uzpmakl6crdicw2yd.onion:5222;F:peerlist_features+ping+zeta"}"#;
        assert_eq!(parse_envelope(captured_rs.as_bytes()).unwrap().line, rs_line);
        // A requester without peerlist_features gets no F:.
        assert_eq!(peer_entry("J58FvBzUbRKnJPxg", &maker, None), format!("J58FvBzUbRKnJPxg;{onion}:5222"));
        // A `;D` notice never carries F: (captured).
        let captured_gone = r#"{"type": 789, "line": "J5ALrbVSKFoTrV3L;NOT-SERVING-ONION;D"}"#;
        let gone = peerlist_entry("J5ALrbVSKFoTrV3L", &Location::Taker, true);
        assert_eq!(encoded(PEERLIST, &gone), with_crlf(captured_gone));
        // The F: of a parsed handshake goes straight in.
        let hs = parse_handshake(&captured_793_line(), "regtest").unwrap();
        assert_eq!(
            peer_entry(&hs.nick, &hs.location, Some(&hs.features)),
            "J58xFhRi1utTq6zF;NOT-SERVING-ONION;F:peerlist_features+ping"
        );
    }

    #[test]
    fn routes_of_the_captured_messages() {
        let pubmsg =
            parse_envelope(br#"{"type": 687, "line": "J59TFbmxBbTzBaUL!PUBLIC!orderbook"}"#).unwrap();
        let route = parse_route(pubmsg.kind, &pubmsg.line).unwrap();
        assert_eq!(route, Route { from: "J59TFbmxBbTzBaUL", to: None, command: "orderbook" });
        assert!(is_orderbook(route.command));
        let privmsg = parse_envelope(
            br#"{"type": 685, "line": "J58FvBzUbRKnJPxg!J59TFbmxBbTzBaUL!sw0reloffer 0 27300 100000000 0 0.0002 03f81c1aedf8363dfd2d06510da2b91799bb5fd98a2fd92b36d53e028ae912dd8a MEQCIGeZbW3oGz/Jh+6pOrQSoopxwZMmo3Uc1w2rAYvPNsixAiAxkClhEshRTxmZMAUgnat026vijIjdQjChwmoG0uNMrQ=="}"#,
        )
        .unwrap();
        assert_eq!(
            parse_route(privmsg.kind, &privmsg.line),
            Some(Route { from: "J58FvBzUbRKnJPxg", to: Some("J59TFbmxBbTzBaUL"), command: "sw0reloffer" })
        );
        let probe = parse_envelope(CAPTURED_PROBE.as_bytes()).unwrap();
        let route = parse_route(probe.kind, &probe.line).unwrap();
        assert_eq!((route.from, route.to, route.command), ("J5DirNickOOOOOOO", None, "orderbook"));
    }

    #[test]
    fn route_commands() {
        let command = |kind, line| parse_route(kind, line).map(|r| r.command);
        assert_eq!(command(PUBMSG, "a!PUBLIC!"), Some(""));
        assert_eq!(command(PUBMSG, "a!PUBLIC! orderbook"), Some(""));
        assert_eq!(command(PUBMSG, "a!PUBLIC!!orderbook"), Some(""));
        assert_eq!(command(PUBMSG, "a!PUBLIC!sw0reloffer 0 1!tbond x"), Some("sw0reloffer"));
        assert_eq!(command(PUBMSG, "a!PUBLIC!hp2\tx"), Some("hp2"));
        assert_eq!(command(PUBMSG, "a!PUBLIC!hp2\r\n"), Some("hp2"));
        assert_eq!(
            command(PUBMSG, "a!PUBLIC!caf\u{e9}\u{a0}x"),
            Some("caf\u{e9}\u{a0}x"),
            "ASCII whitespace only"
        );
        assert_eq!(command(PUBMSG, "a!PUBLIC!ORDERBOOK"), Some("ORDERBOOK"));
        assert_eq!(command(PRIVMSG, "a!b!fill 1 2 3"), Some("fill"));
        assert_eq!(command(PRIVMSG, "a!a!x"), Some("x"), "to oneself");
        for yes in ["orderbook", "ORDERBOOK", "OrderBook"] {
            assert!(is_orderbook(yes), "{yes}");
        }
        for no in ["", "orderbook ", "!orderbook", "orderbooks", "order", "orderbooK\u{0}", "ordеrbook"] {
            assert!(!is_orderbook(no), "{no:?}");
        }
    }

    #[test]
    fn hostile_routes_are_none() {
        for (kind, line) in [
            (PUBMSG, ""),
            (PUBMSG, "no separator"),
            (PUBMSG, "a!PUBLIC"),
            (PUBMSG, "!PUBLIC!orderbook"),
            (PUBMSG, "a!!orderbook"),
            (PUBMSG, "a!public!orderbook"),
            (PUBMSG, "a!PUBLIC !orderbook"),
            (PUBMSG, "a! PUBLIC!orderbook"),
            (PUBMSG, "a!PUBLICX!orderbook"),
            (PUBMSG, "a!b!orderbook"),
            (PUBMSG, "!!"),
            (PUBMSG, "!"),
            (PRIVMSG, ""),
            (PRIVMSG, "a"),
            (PRIVMSG, "a!b"),
            (PRIVMSG, "!b!fill"),
            (PRIVMSG, "a!!fill"),
            (PRIVMSG, "!!"),
            (PEERLIST, "a!PUBLIC!orderbook"),
            (GETPEERLIST, "a!b!c"),
            (PING, "a!b!c"),
            (0, "a!PUBLIC!orderbook"),
        ] {
            assert_eq!(parse_route(kind, line), None, "{kind} {line:?}");
        }
        // PUBLIC as a PRIVMSG's recipient is just an unknown nick.
        assert_eq!(parse_route(PRIVMSG, "a!PUBLIC!x").unwrap().to, Some("PUBLIC"));
        // Huge lines: no `!` at all, or a huge command, or huge nicks.
        let huge = "x".repeat(MAX_LINE);
        assert_eq!(parse_route(PUBMSG, &huge), None);
        assert_eq!(parse_route(PRIVMSG, &format!("a!{huge}")), None);
        let line = format!("a!PUBLIC!{huge}");
        let route = parse_route(PUBMSG, &line).unwrap();
        assert_eq!(route.command.len(), MAX_LINE);
        let line = format!("{huge}!{huge}!{huge} {huge}");
        let route = parse_route(PRIVMSG, &line).unwrap();
        assert_eq!(
            (route.from.len(), route.to.map(str::len), route.command.len()),
            (MAX_LINE, Some(MAX_LINE), MAX_LINE)
        );
        assert_eq!(parse_route(PUBMSG, &"!".repeat(MAX_LINE)), None);
        let line = format!("a!b{}", "!".repeat(MAX_LINE));
        let bangs = parse_route(PRIVMSG, &line).unwrap();
        assert_eq!(bangs.command, "");
    }

    #[test]
    fn locations() {
        assert_eq!(ONION.len(), 62);
        assert_eq!(Location::parse("NOT-SERVING-ONION"), Some(Location::Taker));
        assert_eq!(Location::parse(""), Some(Location::Taker));
        let maker = Location::parse(&format!("{ONION}:5222")).unwrap();
        assert_eq!(maker, Location::Maker { host: ONION.to_owned(), port: 5222 });
        assert!(maker.is_maker());
        assert!(!Location::Taker.is_maker());
        assert_eq!(maker.to_string(), format!("{ONION}:5222"));
        assert_eq!(Location::Taker.to_string(), "NOT-SERVING-ONION");
        assert_eq!(Location::parse(&format!("{ONION}:1")).unwrap().to_string(), format!("{ONION}:1"));
        assert_eq!(Location::parse(&format!("{ONION}:65535")).unwrap().to_string(), format!("{ONION}:65535"));
        assert_eq!(Location::parse(&format!("{ONION}:05222")), Some(maker.clone()));

        let short = &ONION[1..]; // 55 characters before ".onion"
        let long = format!("a{ONION}");
        let upper = ONION.to_uppercase().replace(".ONION", ".onion");
        let bad_base32 = ONION.replacen('2', "1", 1); // '1' is not base32
        let twice = format!("{ONION}:5222");
        for bad in [
            format!("{short}:5222"),
            format!("{long}:5222"),
            format!("{upper}:5222"),
            format!("{bad_base32}:5222"),
            format!("{}:5222", ONION.replace(".onion", ".ONION")),
            format!("{}:5222", ONION.replace(".onion", "")),
            ONION.to_owned(),
            format!("{ONION}:"),
            format!("{ONION}:0"),
            format!("{ONION}:65536"),
            format!("{ONION}:-1"),
            format!("{ONION}:+5222"),
            format!("{ONION}: 5222"),
            format!("{ONION}:5222 "),
            format!("{ONION}:52a2"),
            format!("{twice}:5222"),
            "not-serving-onion".to_owned(),
            "NOT-SERVING-ONION:5222".to_owned(),
            "127.0.0.1:5222".to_owned(),
            " ".to_owned(),
        ] {
            assert_eq!(Location::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn nicks() {
        for good in [
            "J58xFhRi1utTq6zF",
            "J5DirNickOOOOOOO",
            "J5xhGSWE7VrxM7sO",
            "J51OOOOOOOOOOOOO",
            "J5zzzzzzzzzzzzzz",
        ] {
            assert!(is_valid_nick(good), "{good}");
        }
        for bad in [
            "",
            "J5",
            "J5OOOOOOOOOOOOOO",  // no hash at all
            "J58xFhRi1utTq6z",   // 15
            "J58xFhRi1utTq6zFF", // 17
            "J48xFhRi1utTq6zF",  // version 4
            "JM8xFhRi1utTq6zF",  // testnet prefix of joinmarket-rs
            "j58xFhRi1utTq6zF",
            "X58xFhRi1utTq6zF",
            "J5DirNickOOOOOOx", // padding in the middle
            "J5DirOickOOOOOOO", // 'O' inside the hash
            "J50xFhRi1utTq6zF", // '0'
            "J5IxFhRi1utTq6zF", // 'I'
            "J5lxFhRi1utTq6zF", // 'l'
            "J5DirNick;OOOOOO",
            "J5DirNick,OOOOOO",
            "J5DirNick!OOOOOO",
            "J5DirNick OOOOOO",
            "J5DirNickéOOOOO",
        ] {
            assert!(!is_valid_nick(bad), "{bad}");
        }
    }

    #[test]
    fn random_nicks_are_valid_and_differ() {
        let nick = random_nick();
        assert_eq!(nick.len(), 16);
        assert!(nick.starts_with("J5"));
        assert!(is_valid_nick(&nick), "{nick}");
        let hash = nick[2..].trim_end_matches('O');
        assert!((10..=14).contains(&hash.len()), "{nick}");
        assert_ne!(random_nick(), nick);
        for _ in 0..1000 {
            let nick = random_nick();
            assert!(is_valid_nick(&nick), "{nick}");
        }
    }

    #[test]
    fn nicks_from_hashes_match_base58() {
        // Expected values from Python: the same base58 as the reference's.
        assert_eq!(nick_from_hash([0; 10]), "J51111111111OOOO");
        assert_eq!(nick_from_hash([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), "J51111111112OOOO");
        assert_eq!(nick_from_hash([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "J54FzkJ37568tQwO");
        assert_eq!(nick_from_hash([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), "J54HUtbHhN2TkpRO");
        assert_eq!(nick_from_hash([0xff; 10]), "J5FPBt6CHo3fovdL");
        for hash in [[0; 10], [0xff; 10], [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]] {
            let nick = nick_from_hash(hash);
            assert!(is_valid_nick(&nick), "{nick}");
        }
    }

    #[test]
    fn peerlists_round_trip() {
        let maker = Location::parse(&format!("{ONION}:5222")).unwrap();
        assert_eq!(
            peerlist_entry("J58xFhRi1utTq6zF", &Location::Taker, false),
            "J58xFhRi1utTq6zF;NOT-SERVING-ONION"
        );
        assert_eq!(
            peerlist_entry("J5DirNickOOOOOOO", &maker, true),
            format!("J5DirNickOOOOOOO;{ONION}:5222;D")
        );
        let entries = [
            peerlist_entry("J58xFhRi1utTq6zF", &Location::Taker, false),
            peerlist_entry("J5DirNickOOOOOOO", &maker, true),
        ];
        let line = peerlist(entries.iter().map(String::as_str));
        assert_eq!(line, format!("J58xFhRi1utTq6zF;NOT-SERVING-ONION,J5DirNickOOOOOOO;{ONION}:5222;D"));
        assert_eq!(
            parse_peerlist(&line),
            vec![
                ("J58xFhRi1utTq6zF".to_owned(), "NOT-SERVING-ONION".to_owned(), false),
                ("J5DirNickOOOOOOO".to_owned(), format!("{ONION}:5222"), true),
            ]
        );
        assert_eq!(peerlist([]), "");
        assert_eq!(peerlist(["a;b"]), "a;b");
        assert!(parse_peerlist("").is_empty());
        // Lenient: empty entries, entries without a location, jmcore's F: suffix.
        assert_eq!(
            parse_peerlist(
                ",, J5a;x:1 ,noseparator,;empty-nick,J5b;y:2;F:ping+peerlist_features,J5c;z:3;D;F:ping,"
            ),
            vec![
                ("J5a".to_owned(), "x:1".to_owned(), false),
                ("J5b".to_owned(), "y:2".to_owned(), false),
                ("J5c".to_owned(), "z:3".to_owned(), true),
            ]
        );
    }

    #[test]
    fn nick_auth_is_advertised_as_joinmarket_ng_and_jmcore_write_it() {
        // The captured ng 795 and jmcore 793 (nick-auth capture, c1): our
        // encoders write the same features, and the parsers see the flag.
        let ng = r#"{"app-name": "joinmarket", "directory": true, "proto-ver-min": 5, "proto-ver-max": 5, "features": {"nick_auth": true, "peerlist_features": true, "ping": true}, "accepted": true, "nick": "J58oeStu7UHnWMT8", "network": "regtest"}"#;
        assert_eq!(dn_handshake_with("J58oeStu7UHnWMT8", "regtest", None, true, true), ng);
        assert!(parse_dn_handshake(ng).unwrap().nick_auth);
        assert!(
            !parse_dn_handshake(&dn_handshake("J58oeStu7UHnWMT8", "regtest", None, true)).unwrap().nick_auth
        );
        let jmcore = r#"{"app-name": "joinmarket", "directory": false, "location-string": "NOT-SERVING-ONION", "proto-ver": 5, "features": {"nick_auth": true, "peerlist_features": true, "ping": true}, "nick": "J5DZv4nz2qtyEzu4", "network": "regtest"}"#;
        assert_eq!(
            client_handshake_with("J5DZv4nz2qtyEzu4", "regtest", &Location::Taker, true, true),
            jmcore
        );
        let hs = parse_handshake(jmcore, "regtest").unwrap();
        assert!(hs.nick_auth);
        assert_eq!(hs.features, "nick_auth+peerlist_features+ping");
        let legacy = client_handshake_with("J5DZv4nz2qtyEzu4", "regtest", &Location::Taker, false, true);
        assert!(parse_handshake(&legacy, "regtest").unwrap().nick_auth);
        assert!(!parse_handshake(&legacy.replace("true", "1"), "regtest").unwrap().nick_auth);
    }

    #[test]
    fn directory_replies() {
        let reply = parse_dn_handshake(&captured_795_line()).unwrap();
        assert_eq!(
            reply,
            DirectoryReply {
                accepted: true,
                nick: "J5DirNickOOOOOOO".to_owned(),
                network: "regtest".to_owned(),
                motd: Some("...".to_owned()),
                ping: true,
                nick_auth: false,
            }
        );
        // A reference directory: empty features, no ping.
        let reference = dn_with("features", "{}");
        assert!(!parse_dn_handshake(&reference).unwrap().ping);
        assert_eq!(parse_dn_handshake(&dn_with("motd", "<absent>")).unwrap().motd, None);
        assert_eq!(parse_dn_handshake(&dn_with("motd", "7")).unwrap().motd, None);
        assert!(parse_dn_handshake(&dn_with("proto-ver-min", "3")).is_ok());
        assert!(parse_dn_handshake(&dn_with("proto-ver-max", "18446744073709551615")).is_ok());

        for field in [
            "app-name",
            "directory",
            "proto-ver-min",
            "proto-ver-max",
            "features",
            "accepted",
            "nick",
            "network",
        ] {
            let err = parse_dn_handshake(&dn_with(field, "<absent>")).unwrap_err();
            assert_eq!(err.0, format!("missing \"{field}\""));
        }
        assert!(parse_dn_handshake(&dn_with("features", "[]")).unwrap_err().0.contains("expected an object"));
        assert!(parse_dn_handshake(&dn_with("accepted", "\"true\"")).unwrap_err().0.contains("boolean"));
        assert!(parse_dn_handshake(&dn_with("proto-ver-max", "5.5")).unwrap_err().0.contains("integer"));
        assert!(parse_dn_handshake(&dn_with("app-name", "\"other\"")).unwrap_err().0.contains("app-name"));
        assert!(parse_dn_handshake(&dn_with("directory", "false")).unwrap_err().0.contains("directory"));
        for (min, max) in [("6", "7"), ("3", "4"), ("-1", "-1"), ("6", "5")] {
            let mut map = json_object(&dn_with("proto-ver-min", min)).unwrap();
            map.insert("proto-ver-max".to_owned(), serde_json::from_str(max).unwrap());
            let err = parse_dn_handshake(&Value::Object(map).to_string()).unwrap_err();
            assert_eq!(err.0, format!("proto-ver range [{min}, {max}] does not contain 5"));
        }
        assert!(parse_dn_handshake("[]").is_err());
        assert!(parse_dn_handshake("").is_err());
    }

    #[test]
    fn errors_are_send_sync_and_display() {
        fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<WireError>();
        assert_error::<HandshakeError>();
        assert_eq!(WireError("x".to_owned()).to_string(), "x");
        assert_eq!(HandshakeError::Malformed("m".to_owned()).to_string(), "malformed handshake: m");
    }

    #[test]
    fn envelopes_can_be_owned() {
        let bytes = b"{\"type\": 685, \"line\": \"abc\"}".to_vec();
        let owned = parse_envelope(&bytes).unwrap().into_owned();
        drop(bytes);
        assert_eq!(owned, Envelope { kind: PRIVMSG, line: "abc".into() });
    }
}
