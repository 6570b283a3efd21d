//! JMP-0005 nick authentication: the 803 challenge, the 805 proof and the
//! 807 answer, what is signed, how a proof is verified, and a peer's
//! [`Identity`] (the secp256k1 key its nick is derived from).
//!
//! Pure functions, no I/O (apart from [`Identity::load_or_create`] and
//! [`random_challenge`]): the parsers take the `line` of an envelope and are
//! bounded by the length limits below before anything is decoded.
//!
//! # What is signed
//! The ASCII message
//! `nick-auth|<challenge>|<directory-id>|<sha256-hex of the client's 793 line>|<nick>|<pubkey>`
//! followed by the bytes `nick-auth-v1` ([`DOMAIN`], no separator), hashed
//! the Bitcoin signed-message way:
//! `SHA256(SHA256("\x18Bitcoin Signed Message:\n" ‖ varint(len) ‖ message))`.
//! The signature is secp256k1 ECDSA, strict DER, low S, in standard base64
//! that must round-trip exactly; the nick must be the one derived from the
//! public key ([`nick_from_pubkey`]).
//!
//! ```
//! use heartbeat::peer::auth::{self, Identity, Proof};
//!
//! let me = Identity::generate()?;
//! let hello = r#"{"app-name": "joinmarket", "nick": "..."}"#; // our 793 line
//! let challenge = auth::random_challenge()?;
//! let proof: Proof = me.sign(&challenge, "dir.example:5222", hello);
//! auth::verify(&challenge, "dir.example:5222", hello, me.nick(), &proof)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secp256k1::ecdsa::Signature;
use secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Directory to client: `{"challenge":"<64 hex>","directory-id":"<id>"}`.
pub const CHALLENGE: u32 = 803;
/// Client to directory: `{"pubkey":"<66 hex>","signature":"<base64 DER>"}`.
pub const PROOF: u32 = 805;
/// Directory to client: `{"code":"ok","verified":true}`, or another
/// [`Code`] with `verified: false` before a close.
pub const RESULT: u32 = 807;

/// The bytes appended to the signed message.
pub const DOMAIN: &str = "nick-auth-v1";
/// The feature both sides advertise to run nick authentication.
pub const FEATURE: &str = "nick_auth";
/// Hex characters of a challenge (32 random bytes).
pub const CHALLENGE_HEX: usize = 64;
/// Longest directory id accepted, in bytes (an onion endpoint is 62).
pub const MAX_DIRECTORY_ID: usize = 255;
/// Hex characters of a compressed public key.
pub const PUBKEY_HEX: usize = 66;
/// Longest base64 signature accepted: a DER signature is at most 72 bytes.
pub const MAX_SIGNATURE_B64: usize = 96;
/// Longest payload any of the three messages may have, in bytes: anything
/// longer is refused before it is parsed.
pub const MAX_PAYLOAD: usize = 1024;

/// Most a step of the exchange may be given, and the default.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether and how nick authentication is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Never advertised, never run.
    Off,
    /// Run it with a peer that offers it; carry on unauthenticated with one
    /// that does not (joinmarket-ng's `prefer_verified`).
    #[default]
    Prefer,
    /// Only authenticated sessions (joinmarket-ng's `require_verified`).
    Require,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "prefer" => Ok(Mode::Prefer),
            "require" => Ok(Mode::Require),
            other => Err(format!("{other:?} is not a nick-auth mode: prefer, require or off")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
        })
    }
}

/// The 807 codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Verified.
    Ok,
    /// The proof is not a proof: bad JSON, keys, hex, base64 or DER.
    Malformed,
    /// No proof within the deadline.
    Expired,
    /// A well-formed proof that does not verify (wrong signature, high S,
    /// a nick not derived from the key).
    Invalid,
    /// The nick is held by another verified key.
    Policy,
}

impl Code {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Malformed => "malformed",
            Code::Expired => "expired",
            Code::Invalid => "invalid",
            Code::Policy => "policy",
        }
    }

    fn parse(s: &str) -> Option<Code> {
        [Code::Ok, Code::Malformed, Code::Expired, Code::Invalid, Code::Policy]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a payload or proof is refused: the 807 code it earns, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// [`Code::Malformed`] or [`Code::Invalid`].
    pub code: Code,
    /// What was wrong, quoting no secret and at most a few bytes of input.
    pub why: String,
}

impl Refusal {
    fn malformed(why: impl Into<String>) -> Refusal {
        Refusal { code: Code::Malformed, why: why.into() }
    }

    fn invalid(why: impl Into<String>) -> Refusal {
        Refusal { code: Code::Invalid, why: why.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.why)
    }
}

impl std::error::Error for Refusal {}

/// An 803 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// 64 lowercase hex characters.
    pub challenge: String,
    /// The directory id the proof is bound to.
    pub directory_id: String,
}

/// An 805 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The compressed public key, 66 lowercase hex characters.
    pub pubkey: String,
    /// The DER signature in standard base64.
    pub signature: String,
}

/// The 803 `line`: compact JSON, as joinmarket-ng writes it.
pub fn encode_challenge(challenge: &Challenge) -> String {
    format!(
        "{{\"challenge\":{},\"directory-id\":{}}}",
        json_str(&challenge.challenge),
        json_str(&challenge.directory_id)
    )
}

/// The 805 `line`: compact JSON, as jmcore writes it.
pub fn encode_proof(proof: &Proof) -> String {
    format!("{{\"pubkey\":{},\"signature\":{}}}", json_str(&proof.pubkey), json_str(&proof.signature))
}

/// The 807 `line`: `{"code":"<code>","verified":<code is ok>}`.
pub fn encode_result(code: Code) -> String {
    format!("{{\"code\":\"{code}\",\"verified\":{}}}", code == Code::Ok)
}

/// Parses an 803 `line`: a JSON object with exactly the string keys
/// `challenge` (64 lowercase hex) and `directory-id` (1 to
/// [`MAX_DIRECTORY_ID`] bytes of printable ASCII); a repeated or unknown
/// key is refused, and so is a payload over [`MAX_PAYLOAD`] bytes.
pub fn parse_challenge(line: &str) -> Result<Challenge, Refusal> {
    let [challenge, directory_id] = string_fields(line, ["challenge", "directory-id"])?;
    if !is_lower_hex(&challenge, CHALLENGE_HEX) {
        return Err(Refusal::malformed(format!(
            "the challenge is not {CHALLENGE_HEX} lowercase hex characters"
        )));
    }
    check_directory_id(&directory_id).map_err(Refusal::malformed)?;
    Ok(Challenge { challenge, directory_id })
}

/// Parses an 805 `line`: a JSON object with exactly the string keys `pubkey`
/// and `signature`, each within its length ([`PUBKEY_HEX`],
/// [`MAX_SIGNATURE_B64`]); a repeated or unknown key is refused, and so is
/// a payload over [`MAX_PAYLOAD`] bytes. The key and signature themselves are
/// checked by [`verify`].
pub fn parse_proof(line: &str) -> Result<Proof, Refusal> {
    let [pubkey, signature] = string_fields(line, ["pubkey", "signature"])?;
    if pubkey.len() != PUBKEY_HEX {
        return Err(Refusal::malformed(format!("the pubkey is not {PUBKEY_HEX} hex characters")));
    }
    if signature.is_empty() || signature.len() > MAX_SIGNATURE_B64 {
        return Err(Refusal::malformed(format!("the signature is not 1 to {MAX_SIGNATURE_B64} characters")));
    }
    Ok(Proof { pubkey, signature })
}

/// Parses an 807 `line`: exactly the keys `code` (a known [`Code`]) and
/// `verified` (a boolean, `true` exactly when the code is `ok`).
pub fn parse_result(line: &str) -> Result<Code, Refusal> {
    let fields = object_fields(line, &["code", "verified"])?;
    let (Some(Value::String(code)), Some(Value::Bool(verified))) = (&fields[0], &fields[1]) else {
        return Err(Refusal::malformed("\"code\" must be a string and \"verified\" a boolean"));
    };
    let code = Code::parse(code).ok_or_else(|| Refusal::malformed("unknown code"))?;
    if *verified != (code == Code::Ok) {
        return Err(Refusal::malformed(format!("code {code} with verified {verified}")));
    }
    Ok(code)
}

/// The message a proof signs (before [`message_hash`]).
pub fn message(
    challenge: &str,
    directory_id: &str,
    handshake_line: &str,
    nick: &str,
    pubkey: &str,
) -> Vec<u8> {
    message_hashed(challenge, directory_id, &line_hash(handshake_line), nick, pubkey)
}

/// The SHA-256 of a 793 `line` (its UTF-8 bytes) in lowercase hex: what the
/// signed message carries of the handshake, and all a directory keeps of it.
pub fn line_hash(handshake_line: &str) -> String {
    hex(&sha256(handshake_line.as_bytes()))
}

/// [`message`], given the [`line_hash`] of the 793 line.
pub fn message_hashed(
    challenge: &str,
    directory_id: &str,
    line_hash: &str,
    nick: &str,
    pubkey: &str,
) -> Vec<u8> {
    format!("nick-auth|{challenge}|{directory_id}|{line_hash}|{nick}|{pubkey}{DOMAIN}").into_bytes()
}

/// Bitcoin signed-message hashing:
/// `SHA256(SHA256("\x18Bitcoin Signed Message:\n" ‖ varint(len) ‖ message))`.
pub fn message_hash(message: &[u8]) -> [u8; 32] {
    let mut data = Vec::with_capacity(message.len() + 35);
    data.extend_from_slice(b"\x18Bitcoin Signed Message:\n");
    let len = message.len() as u64;
    match len {
        0..=0xfc => data.push(len as u8),
        0xfd..=0xffff => {
            data.push(0xfd);
            data.extend_from_slice(&(len as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            data.push(0xfe);
            data.extend_from_slice(&(len as u32).to_le_bytes());
        }
        _ => {
            data.push(0xff);
            data.extend_from_slice(&len.to_le_bytes());
        }
    }
    data.extend_from_slice(message);
    sha256(&sha256(&data))
}

/// The nick a public key (its hex, as written in a proof) owns:
/// `J5` + base58 of the first 10 bytes of SHA256 of the hex string,
/// right-padded with `O` to 16 characters.
pub fn nick_from_pubkey(pubkey_hex: &str) -> String {
    let digest = sha256(pubkey_hex.as_bytes());
    let mut hash = [0u8; 10];
    hash.copy_from_slice(&digest[..10]);
    super::wire::nick_from_hash(hash)
}

/// Verifies an 805 proof for the connection that sent `handshake_line` as
/// its 793 `line` and claimed `nick`, against the `challenge` and
/// `directory_id` sent to it.
///
/// [`Code::Malformed`]: the pubkey is not lowercase hex of a valid compressed
/// key, or the signature is not canonical base64 of strict, canonical DER.
/// [`Code::Invalid`]: the nick is not the key's, the S value is high, or the
/// signature does not verify.
pub fn verify(
    challenge: &str,
    directory_id: &str,
    handshake_line: &str,
    nick: &str,
    proof: &Proof,
) -> Result<(), Refusal> {
    verify_hashed(challenge, directory_id, &line_hash(handshake_line), nick, proof)
}

/// [`verify`], given the [`line_hash`] of the 793 line (a directory keeps
/// the hash, not the line, while it waits for the proof).
pub fn verify_hashed(
    challenge: &str,
    directory_id: &str,
    line_hash: &str,
    nick: &str,
    proof: &Proof,
) -> Result<(), Refusal> {
    if !is_lower_hex(&proof.pubkey, PUBKEY_HEX) || !matches!(&proof.pubkey[..2], "02" | "03") {
        return Err(Refusal::malformed("the pubkey is not a compressed key in lowercase hex"));
    }
    let key_bytes = unhex(&proof.pubkey).ok_or_else(|| Refusal::malformed("the pubkey is not hex"))?;
    let key = PublicKey::from_slice(&key_bytes)
        .map_err(|_| Refusal::malformed("the pubkey is not on the curve"))?;
    if proof.signature.len() > MAX_SIGNATURE_B64 {
        return Err(Refusal::malformed("the signature is too long"));
    }
    let der =
        BASE64.decode(&proof.signature).map_err(|_| Refusal::malformed("the signature is not base64"))?;
    if BASE64.encode(&der) != proof.signature {
        return Err(Refusal::malformed("the signature's base64 is not canonical"));
    }
    let signature = Signature::from_der(&der).map_err(|_| Refusal::malformed("the signature is not DER"))?;
    if signature.serialize_der().as_ref() != der.as_slice() {
        return Err(Refusal::malformed("the signature's DER is not canonical"));
    }
    if nick_from_pubkey(&proof.pubkey) != nick {
        return Err(Refusal::invalid("the nick is not the one derived from the pubkey"));
    }
    let mut normal = signature;
    normal.normalize_s();
    if normal != signature {
        return Err(Refusal::invalid("the signature has a high S"));
    }
    let digest = message_hash(&message_hashed(challenge, directory_id, line_hash, nick, &proof.pubkey));
    Secp256k1::verification_only()
        .verify_ecdsa(Message::from_digest(digest), &signature, &key)
        .map_err(|_| Refusal::invalid("the signature does not verify"))
}

/// 32 random bytes from the operating system, as 64 lowercase hex characters.
pub fn random_challenge() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    os_random(&mut bytes)?;
    Ok(hex(&bytes))
}

/// A peer's secp256k1 key: its nick is derived from the public key. Its
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    secret: SecretKey,
    pubkey: String,
    nick: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("pubkey", &self.pubkey)
            .field("nick", &self.nick)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new key from the operating system's random source.
    pub fn generate() -> io::Result<Identity> {
        loop {
            let mut bytes = [0u8; 32];
            os_random(&mut bytes)?;
            // Zero or past the group order: 1 in 2^128; draw again.
            if let Ok(secret) = SecretKey::from_byte_array(bytes) {
                return Ok(Identity::from_secret(secret));
            }
        }
    }

    /// The key whose 32 bytes are written as 64 hex characters.
    pub fn from_hex(secret_hex: &str) -> Result<Identity, String> {
        let bytes: [u8; 32] = unhex(secret_hex.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "a secret key is 64 hex characters".to_owned())?;
        let secret =
            SecretKey::from_byte_array(bytes).map_err(|_| "not a valid secp256k1 secret key".to_owned())?;
        Ok(Identity::from_secret(secret))
    }

    fn from_secret(secret: SecretKey) -> Identity {
        let public = PublicKey::from_secret_key(&Secp256k1::signing_only(), &secret);
        let pubkey = hex(&public.serialize());
        let nick = nick_from_pubkey(&pubkey);
        Identity { secret, pubkey, nick }
    }

    /// Reads the key in `path` (64 hex characters, surrounding whitespace
    /// ignored), or, when there is no such file, creates it with a new key
    /// and mode 0600. Never logs or returns the secret in an error.
    ///
    /// On Unix an existing key file that its group or others may read or
    /// write (mode `& 0o077`) is refused, as ssh refuses such a private key.
    /// A new file appears whole or not at all: the key is written to a
    /// temporary file in the same directory, then linked to `path` (never
    /// over an existing file); when another process created `path`
    /// meanwhile, its key is read instead.
    pub fn load_or_create(path: &Path) -> io::Result<Identity> {
        Identity::load_or_create_at(path, true)
    }

    /// [`load_or_create`](Self::load_or_create); `create` false once a file
    /// another process created is being read instead, so that a name that
    /// keeps refusing both (a symlink to nothing) cannot loop for ever.
    fn load_or_create_at(path: &Path, create: bool) -> io::Result<Identity> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        // Only a regular file: a FIFO is never waited on, a directory is
        // said to be one (not told to chmod 600).
        match crate::files::open_regular(path) {
            Ok((file, meta)) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "key file {} is open to its group or others (mode {:o}): run chmod 600 on it",
                                path.display(),
                                mode & 0o777
                            ),
                        ));
                    }
                }
                let mut text = String::new();
                // A key file is 65 bytes: anything much longer is not one.
                file.take(4096).read_to_string(&mut text).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot read the key file {}: {e}", path.display()))
                })?;
                Identity::from_hex(&text)
                    .map_err(|why| invalid(format!("key file {}: {why}", path.display())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                if std::fs::symlink_metadata(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "cannot open the key file {}: it is a symbolic link to nothing",
                            path.display()
                        ),
                    ));
                }
                let identity = Identity::generate()?;
                match create_whole(path, &format!("{}\n", hex(&identity.secret.secret_bytes()))) {
                    Ok(()) => Ok(identity),
                    // Another process created it first: its key is the one.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Identity::load_or_create_at(path, false)
                    }
                    Err(e) => Err(io::Error::new(
                        e.kind(),
                        format!("cannot create the key file {}: {e}", path.display()),
                    )),
                }
            }
            Err(e) => {
                Err(io::Error::new(e.kind(), format!("cannot open the key file {}: {e}", path.display())))
            }
        }
    }

    /// The compressed public key in lowercase hex.
    pub fn pubkey(&self) -> &str {
        &self.pubkey
    }

    /// The nick this key owns ([`nick_from_pubkey`]).
    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// The proof for a challenge sent by `directory_id` to the connection
    /// whose 793 `line` was `handshake_line`. The caller checks that the
    /// directory id is the one it expects before signing.
    pub fn sign(&self, challenge: &str, directory_id: &str, handshake_line: &str) -> Proof {
        let digest =
            message_hash(&message(challenge, directory_id, handshake_line, &self.nick, &self.pubkey));
        let signature = Secp256k1::signing_only().sign_ecdsa(Message::from_digest(digest), &self.secret);
        Proof { pubkey: self.pubkey.clone(), signature: BASE64.encode(signature.serialize_der()) }
    }
}

/// Creates `path` (mode 0600) holding `text`, whole or not at all: written
/// and synced in a temporary file next to it, then hard-linked to `path`,
/// which fails with `AlreadyExists` rather than replace a file.
fn create_whole(path: &Path, text: &str) -> io::Result<()> {
    let mut suffix = [0u8; 8];
    os_random(&mut suffix)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", hex(&suffix)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    linked?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The new name durable too, best effort.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Fills `buf` from the operating system's random source (`/dev/urandom`):
/// what challenges and keys are drawn from.
fn os_random(buf: &mut [u8]) -> io::Result<()> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read /dev/urandom: {e}")))
}

/// Checks a directory id: 1 to [`MAX_DIRECTORY_ID`] bytes of printable
/// ASCII without spaces or `|` (the signed message's separator).
pub fn check_directory_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DIRECTORY_ID {
        return Err(format!("a directory id is 1 to {MAX_DIRECTORY_ID} bytes"));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'|') {
        return Err("a directory id is printable ASCII without spaces or '|'".to_owned());
    }
    Ok(())
}

/// The string values of exactly `keys`, in that order.
fn string_fields<const N: usize>(line: &str, keys: [&str; N]) -> Result<[String; N], Refusal> {
    let fields = object_fields(line, &keys)?;
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (i, field) in fields.into_iter().enumerate() {
        match field {
            Some(Value::String(s)) => out[i] = s,
            _ => return Err(Refusal::malformed(format!("{:?} is not a string", keys[i]))),
        }
    }
    Ok(out)
}

/// The values of exactly `keys` in a JSON object, in that order: refuses a
/// payload over [`MAX_PAYLOAD`] bytes, anything but an object, a repeated
/// key, an unknown key and a missing one.
fn object_fields(line: &str, keys: &[&str]) -> Result<Vec<Option<Value>>, Refusal> {
    if line.len() > MAX_PAYLOAD {
        return Err(Refusal::malformed(format!("a payload of {} bytes, over {MAX_PAYLOAD}", line.len())));
    }
    struct Fields<'k>(&'k [&'k str]);
    impl<'de> Visitor<'de> for Fields<'_> {
        type Value = Vec<Option<Value>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let mut values: Vec<Option<Value>> = vec![None; self.0.len()];
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let Some(i) = self.0.iter().position(|k| *k == key) else {
                    return Err(A::Error::custom("an unknown key"));
                };
                if values[i].is_some() {
                    return Err(A::Error::custom(format!("a repeated key {:?}", self.0[i])));
                }
                values[i] = Some(map.next_value()?);
            }
            Ok(values)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    let values = de.deserialize_map(Fields(keys)).map_err(|e| {
        Refusal::malformed(format!("not the payload: {}", crate::json::cut(&e.to_string(), 120)))
    })?;
    de.end().map_err(|_| Refusal::malformed("text after the JSON object"))?;
    if let Some(i) = values.iter().position(Option::is_none) {
        return Err(Refusal::malformed(format!("missing {:?}", keys[i])));
    }
    Ok(values)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(data));
    out
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Hex (either case) to bytes; `None` for an odd length or a non-hex digit.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A JSON string literal (serde_json escaping).
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::wire;

    /// The two captured exchanges: (793, 803, 805) envelopes, as on the wire.
    const CAPTURED: [[&str; 3]; 2] = [
        [
            r#"{"type": 793, "line": "{\"app-name\": \"joinmarket\", \"directory\": false, \"location-string\": \"NOT-SERVING-ONION\", \"proto-ver\": 5, \"features\": {\"nick_auth\": true, \"peerlist_features\": true, \"ping\": true}, \"nick\": \"J5DZv4nz2qtyEzu4\", \"network\": \"regtest\"}"}"#,
            r#"{"type": 803, "line": "{\"challenge\":\"d941fde4b8a17b4aecce28b6e8afecd65e76ec892f7b26f4dbd19b65c7bae856\",\"directory-id\":\"fnsmnwnp3cru5ug36npx3ylrvcbfuugz6qxql2mp4ky23xyavnclopad.onion:5222\"}"}"#,
            r#"{"type": 805, "line": "{\"pubkey\":\"031d71e6651603e0503725dfa4f1fcfccfdba51a5b20eb4101bfe5cf1cf379a871\",\"signature\":\"MEUCIQCfnrG/YmLRYguEERGQT/NMRDdKYxwFTR5yAhFNk8Km3AIgQb+HirmkSyW2Y9LtMKn4V9G8iED7wK9yBVlQwIthSYg=\"}"}"#,
        ],
        [
            r#"{"type": 793, "line": "{\"app-name\": \"joinmarket\", \"directory\": false, \"location-string\": \"fotnunpfni65s7vzk6knqk47dixyizsvibax6poijnqeualxohjnqpyd.onion:5222\", \"proto-ver\": 5, \"features\": {\"nick_auth\": true, \"peerlist_features\": true, \"ping\": true}, \"nick\": \"J5DjhLAiHMjAjDmJ\", \"network\": \"regtest\"}"}"#,
            r#"{"type": 803, "line": "{\"challenge\":\"c81aa2547233dfd5a8466a4438135a8e64537318053d6424502cfcfecc77c57d\",\"directory-id\":\"fnsmnwnp3cru5ug36npx3ylrvcbfuugz6qxql2mp4ky23xyavnclopad.onion:5222\"}"}"#,
            r#"{"type": 805, "line": "{\"pubkey\":\"03c9c6ca172725dd5ce3e135852ef87465315525292d16b6440ccaabad71e7b221\",\"signature\":\"MEQCIF5lCmtEIKvx2PqCcxxdRgB7xnusPCScX2/IVi9KiAluAiABiewpOOFpJKslhm/6lQ50Oka8QDaAhjMq4Ak5XO1i2w==\"}"}"#,
        ],
    ];
    const CAPTURED_OK: &str = r#"{"type": 807, "line": "{\"code\":\"ok\",\"verified\":true}"}"#;

    /// One captured exchange: (793 line, nick, challenge, proof).
    struct Vector {
        hello: String,
        nick: String,
        challenge: Challenge,
        proof: Proof,
    }

    fn line_of(raw: &str) -> String {
        wire::parse_envelope(raw.as_bytes()).unwrap().line.into_owned()
    }

    fn vectors() -> Vec<Vector> {
        CAPTURED
            .iter()
            .map(|[hello, challenge, proof]| {
                let hello = line_of(hello);
                let nick = wire::parse_handshake(&hello, "regtest").unwrap().nick;
                Vector {
                    nick,
                    hello,
                    challenge: parse_challenge(&line_of(challenge)).unwrap(),
                    proof: parse_proof(&line_of(proof)).unwrap(),
                }
            })
            .collect()
    }

    fn check(v: &Vector) -> Result<(), Refusal> {
        verify(&v.challenge.challenge, &v.challenge.directory_id, &v.hello, &v.nick, &v.proof)
    }

    /// Every string with one byte changed: each position gets a byte that
    /// keeps the string UTF-8 and of the same length.
    fn one_byte_changes(s: &str) -> Vec<String> {
        (0..s.len())
            .map(|i| {
                let mut bytes = s.as_bytes().to_vec();
                bytes[i] = if bytes[i] == b'0' {
                    b'1'
                } else if bytes[i].is_ascii() {
                    b'0'
                } else {
                    b'?'
                };
                String::from_utf8(bytes).expect("ASCII")
            })
            .collect()
    }

    #[test]
    fn both_captured_proofs_verify_and_their_payloads_round_trip() {
        for (v, raw) in vectors().iter().zip(CAPTURED) {
            check(v).unwrap_or_else(|e| panic!("{} refused: {e}", v.nick));
            assert_eq!(nick_from_pubkey(&v.proof.pubkey), v.nick, "the nick derives from the key");
            // Our encoders write the captured bytes.
            assert_eq!(encode_challenge(&v.challenge), line_of(raw[1]));
            assert_eq!(encode_proof(&v.proof), line_of(raw[2]));
        }
        assert_eq!(encode_result(Code::Ok), line_of(CAPTURED_OK));
        assert_eq!(parse_result(&line_of(CAPTURED_OK)), Ok(Code::Ok));
    }

    #[test]
    fn every_one_byte_change_is_refused() {
        for v in vectors() {
            let mut tried = 0;
            for challenge in one_byte_changes(&v.challenge.challenge) {
                assert!(verify(&challenge, &v.challenge.directory_id, &v.hello, &v.nick, &v.proof).is_err());
                tried += 1;
            }
            for id in one_byte_changes(&v.challenge.directory_id) {
                assert!(verify(&v.challenge.challenge, &id, &v.hello, &v.nick, &v.proof).is_err());
                tried += 1;
            }
            for hello in one_byte_changes(&v.hello) {
                assert!(
                    verify(&v.challenge.challenge, &v.challenge.directory_id, &hello, &v.nick, &v.proof)
                        .is_err()
                );
                tried += 1;
            }
            for nick in one_byte_changes(&v.nick) {
                let e = verify(&v.challenge.challenge, &v.challenge.directory_id, &v.hello, &nick, &v.proof);
                assert_eq!(e.unwrap_err().code, Code::Invalid);
                tried += 1;
            }
            for pubkey in one_byte_changes(&v.proof.pubkey) {
                let proof = Proof { pubkey, ..v.proof.clone() };
                assert!(
                    verify(&v.challenge.challenge, &v.challenge.directory_id, &v.hello, &v.nick, &proof)
                        .is_err()
                );
                tried += 1;
            }
            for signature in one_byte_changes(&v.proof.signature) {
                let proof = Proof { signature, ..v.proof.clone() };
                assert!(
                    verify(&v.challenge.challenge, &v.challenge.directory_id, &v.hello, &v.nick, &proof)
                        .is_err()
                );
                tried += 1;
            }
            // And each byte of the decoded signature, re-encoded canonically.
            let der = BASE64.decode(&v.proof.signature).unwrap();
            for i in 0..der.len() {
                let mut bad = der.clone();
                bad[i] ^= 0x01;
                let proof = Proof { signature: BASE64.encode(&bad), ..v.proof.clone() };
                assert!(check(&Vector { proof, ..clone(&v) }).is_err(), "DER byte {i} changed");
                tried += 1;
            }
            assert!(tried > 400, "{tried} changes tried");
        }
    }

    fn clone(v: &Vector) -> Vector {
        Vector {
            hello: v.hello.clone(),
            nick: v.nick.clone(),
            challenge: v.challenge.clone(),
            proof: v.proof.clone(),
        }
    }

    /// The group order n: a high-S twin of a signature has s' = n - s.
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xba,
        0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
    ];

    /// `n - s` for a 32-byte big-endian `s`.
    fn negate(s: [u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(ORDER[i]) - i16::from(s[i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            out[i] = d as u8;
        }
        out
    }

    #[test]
    fn a_high_s_twin_is_refused() {
        for v in vectors() {
            let der = BASE64.decode(&v.proof.signature).unwrap();
            let compact = Signature::from_der(&der).unwrap().serialize_compact();
            let mut high = compact;
            let s: [u8; 32] = compact[32..].try_into().unwrap();
            high[32..].copy_from_slice(&negate(s));
            let twin = Signature::from_compact(&high).unwrap();
            // The twin is the same signature mathematically...
            let mut normal = twin;
            normal.normalize_s();
            assert_eq!(normal.serialize_compact(), compact);
            // ...and is refused.
            let proof = Proof { signature: BASE64.encode(twin.serialize_der()), ..v.proof.clone() };
            let refusal = check(&Vector { proof, ..clone(&v) }).unwrap_err();
            assert_eq!(refusal.code, Code::Invalid);
            assert!(refusal.why.contains("high S"), "{refusal}");
        }
    }

    #[test]
    fn non_canonical_der_and_base64_are_refused() {
        for v in vectors() {
            let der = BASE64.decode(&v.proof.signature).unwrap();
            let with = |signature: String| {
                check(&Vector { proof: Proof { signature, ..v.proof.clone() }, ..clone(&v) })
            };
            // DER: r padded with a needless zero byte (lengths fixed up).
            let r_len = usize::from(der[3]);
            let mut padded = vec![0x30, der[1] + 1, 0x02, der[3] + 1, 0x00];
            padded.extend_from_slice(&der[4..4 + r_len]);
            padded.extend_from_slice(&der[4 + r_len..]);
            let e = with(BASE64.encode(&padded)).unwrap_err();
            assert_eq!(e.code, Code::Malformed, "{e}");
            // DER: a long-form length for the sequence.
            let mut long = vec![0x30, 0x81, der[1]];
            long.extend_from_slice(&der[2..]);
            assert_eq!(with(BASE64.encode(&long)).unwrap_err().code, Code::Malformed);
            // DER: trailing garbage.
            let mut trailing = der.clone();
            trailing.push(0);
            assert_eq!(with(BASE64.encode(&trailing)).unwrap_err().code, Code::Malformed);
            // Base64: padding dropped, whitespace, URL-safe alphabet, a non-zero trailing bit.
            let sig = &v.proof.signature;
            let unpadded = sig.trim_end_matches('=').to_owned();
            if unpadded != *sig {
                assert_eq!(with(unpadded).unwrap_err().code, Code::Malformed);
            }
            assert_eq!(with(format!("{sig}\n")).unwrap_err().code, Code::Malformed);
            assert_eq!(with(format!(" {sig}")).unwrap_err().code, Code::Malformed);
            if sig.contains('/') || sig.contains('+') {
                assert_eq!(with(sig.replace('/', "_").replace('+', "-")).unwrap_err().code, Code::Malformed);
            }
            let body = sig.trim_end_matches('=');
            let pad = &sig[body.len()..];
            let last = body.chars().last().unwrap();
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let index = alphabet.iter().position(|&c| char::from(c) == last).unwrap();
            let unused_bits = match pad.len() {
                1 => 2,
                2 => 4,
                _ => 0,
            };
            if unused_bits > 0 {
                let tweaked = char::from(alphabet[index ^ 1]);
                let e = with(format!("{}{tweaked}{pad}", &body[..body.len() - 1])).unwrap_err();
                assert_eq!(e.code, Code::Malformed, "{e}");
            }
        }
    }

    #[test]
    fn payload_parsers_refuse_extra_missing_repeated_and_mistyped_keys() {
        let good = r#"{"challenge":"d941fde4b8a17b4aecce28b6e8afecd65e76ec892f7b26f4dbd19b65c7bae856","directory-id":"x.onion:5222"}"#;
        assert!(parse_challenge(good).is_ok());
        // Spacing is any JSON's.
        assert!(parse_challenge(&good.replace(",", ", ").replace(":\"", ": \"")).is_ok());
        let hex = "d941fde4b8a17b4aecce28b6e8afecd65e76ec892f7b26f4dbd19b65c7bae856";
        for bad in [
            format!(r#"{{"challenge":"{hex}"}}"#),
            format!(r#"{{"challenge":"{hex}","directory-id":"a","extra":1}}"#),
            format!(r#"{{"challenge":"{hex}","directory-id":"a","directory-id":"b"}}"#),
            format!(r#"{{"challenge":"{hex}","challenge":"{hex}","directory-id":"a"}}"#),
            format!(r#"{{"challenge":"{}","directory-id":"a"}}"#, hex.to_uppercase()),
            format!(r#"{{"challenge":"{}","directory-id":"a"}}"#, &hex[1..]),
            format!(r#"{{"challenge":"{hex}","directory-id":""}}"#),
            format!(r#"{{"challenge":"{hex}","directory-id":"a b"}}"#),
            format!(r#"{{"challenge":"{hex}","directory-id":"{}"}}"#, "a".repeat(MAX_DIRECTORY_ID + 1)),
            format!(r#"{{"challenge":"{hex}","directory-id":5}}"#),
            format!(r#"{{"challenge":"{hex}","directory-id":NaN}}"#),
            format!(r#"{{"challenge":"{hex}","directory-id":"a"}} x"#),
            format!(r#"[{{"challenge":"{hex}","directory-id":"a"}}]"#),
            format!(r#"{{"challenge":"{hex}","directory-id":"a""#),
            format!("{{\"challenge\":\"{hex}\",\"directory-id\":\"a\"}}{}", " ".repeat(MAX_PAYLOAD)),
            String::new(),
        ] {
            let e = parse_challenge(&bad).expect_err(&bad);
            assert_eq!(e.code, Code::Malformed);
        }
        assert!(parse_proof(r#"{"pubkey":"02","signature":"AA=="}"#).is_err());
        assert!(
            parse_proof(&format!(r#"{{"pubkey":"{}","signature":"{}"}}"#, "0".repeat(66), "A".repeat(97)))
                .is_err()
        );
        assert!(
            parse_proof(&format!(r#"{{"pubkey":"{}","signature":"AA==","x":1}}"#, "0".repeat(66))).is_err()
        );
        assert!(parse_proof(&format!(r#"{{"pubkey":"{}","signature":"AA=="}}"#, "0".repeat(66))).is_ok());
        for code in [Code::Ok, Code::Malformed, Code::Expired, Code::Invalid, Code::Policy] {
            assert_eq!(parse_result(&encode_result(code)), Ok(code));
        }
        for bad in [
            r#"{"code":"ok","verified":false}"#,
            r#"{"code":"invalid","verified":true}"#,
            r#"{"code":"nope","verified":false}"#,
            r#"{"code":"ok"}"#,
            r#"{"code":"ok","verified":"true"}"#,
            r#"{"code":"ok","verified":true,"verified":true}"#,
        ] {
            assert!(parse_result(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_pubkey_is_malformed_before_any_signature_work() {
        let v = &vectors()[0];
        for pubkey in [
            v.proof.pubkey.to_uppercase(),
            format!("04{}", &v.proof.pubkey[2..]),
            format!("02{}", "f".repeat(64)), // not on the curve
        ] {
            let proof = Proof { pubkey, ..v.proof.clone() };
            assert_eq!(check(&Vector { proof, ..clone(v) }).unwrap_err().code, Code::Malformed);
        }
    }

    #[test]
    fn our_signer_is_accepted_by_our_verifier_and_bound_to_everything() {
        let me = Identity::generate().unwrap();
        assert_eq!(me.nick(), nick_from_pubkey(me.pubkey()));
        assert!(wire::is_valid_nick(me.nick()));
        let challenge = random_challenge().unwrap();
        assert_eq!(challenge.len(), 64);
        assert_ne!(challenge, random_challenge().unwrap());
        let hello = wire::client_handshake_with(me.nick(), "regtest", &wire::Location::Taker, true, true);
        let proof = me.sign(&challenge, "127.0.0.1:5222", &hello);
        verify(&challenge, "127.0.0.1:5222", &hello, me.nick(), &proof).unwrap();
        assert!(verify(&challenge, "127.0.0.1:5223", &hello, me.nick(), &proof).is_err());
        let other = Identity::generate().unwrap();
        assert!(verify(&challenge, "127.0.0.1:5222", &hello, other.nick(), &proof).is_err());
        // The secret round-trips through its hex, and never shows in Debug.
        let again = Identity::from_hex(&hex(&me.secret.secret_bytes())).unwrap();
        assert_eq!(again, me);
        let debug = format!("{me:?}");
        assert!(!debug.contains(&hex(&me.secret.secret_bytes())), "{debug}");
        assert!(Identity::from_hex("00").is_err());
        assert!(Identity::from_hex(&"0".repeat(64)).is_err(), "zero is not a key");
    }

    #[test]
    fn a_key_file_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        let created = Identity::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(Identity::load_or_create(&path).unwrap(), created);
        std::fs::write(&path, "not a key").unwrap();
        let e = Identity::load_or_create(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(!e.to_string().contains("not a key"), "the file's content is not quoted: {e}");
    }

    #[test]
    fn a_key_path_that_is_no_regular_file_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let e = Identity::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("it is a directory, not a regular file") && !e.contains("chmod"), "{e}");
        let fifo = dir.path().join("fifo.key");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Opened as a file is, it would wait for a writer for ever.
        let e = Identity::load_or_create(&fifo).unwrap_err().to_string();
        assert!(e.contains("fifo.key: it is a FIFO, not a regular file") && !e.contains("chmod"), "{e}");
        // Neither followed nor replaced, and no endless retry.
        let dangling = dir.path().join("dangling.key");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let e = Identity::load_or_create(&dangling).unwrap_err().to_string();
        assert!(e.contains("dangling.key: it is a symbolic link to nothing"), "{e}");
        assert!(!dir.path().join("nowhere").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        let created = Identity::load_or_create(&path).unwrap();
        let secret = hex(&created.secret.secret_bytes());
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Identity::load_or_create(&path).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "mode {mode:o}: {e}");
            assert!(e.to_string().contains("chmod 600") && !e.to_string().contains(&secret), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(Identity::load_or_create(&path).unwrap(), created, "owner-only modes are fine");
    }

    #[test]
    fn processes_creating_one_key_file_at_once_get_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("peer{round}.key"));
            let barrier = std::sync::Barrier::new(4);
            let keys: Vec<io::Result<Identity>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Identity::load_or_create(&path)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let first = keys[0].as_ref().unwrap();
            for key in &keys {
                assert_eq!(key.as_ref().unwrap(), first, "round {round}");
            }
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 20, "{names:?}");
    }

    #[test]
    fn bitcoin_varint_lengths() {
        // A known value: the signed-message hash of "" (double SHA-256 of the prefix and a zero length).
        let mut data = b"\x18Bitcoin Signed Message:\n".to_vec();
        data.push(0);
        assert_eq!(message_hash(b""), sha256(&sha256(&data)));
        let long = vec![b'a'; 300];
        let mut data = b"\x18Bitcoin Signed Message:\n".to_vec();
        data.extend_from_slice(&[0xfd, 0x2c, 0x01]);
        data.extend_from_slice(&long);
        assert_eq!(message_hash(&long), sha256(&sha256(&data)));
    }
}
