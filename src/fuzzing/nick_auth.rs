//! The `nick_auth` target: JMP-0005 payloads (803 challenge, 805 proof, 807
//! result) as a peer or a directory sends them, and proofs checked against
//! keys drawn from the input.

use super::input::Input;
use crate::peer::auth::{
    self, Identity, MAX_PAYLOAD, Proof, encode_challenge, encode_proof, encode_result, parse_challenge,
    parse_proof, parse_result, verify,
};

/// Longest explanation a refusal may carry: it quotes no input at length.
const MAX_WHY: usize = 200;

/// The first byte picks the payload; the rest is it.
pub(crate) fn check(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 4 {
        0 => challenge(&lossy(input.rest())),
        1 => proof(&lossy(input.rest())),
        2 => result(&lossy(input.rest())),
        _ => signed(&mut input),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn refusal_is_short(why: &str) {
    assert!(why.len() <= MAX_WHY, "a refusal quotes too much: {} bytes", why.len());
}

/// An 803: what parses encodes to a line that parses back the same, with a
/// 64-character lowercase hex challenge and a valid directory id.
fn challenge(line: &str) {
    match parse_challenge(line) {
        Ok(c) => {
            assert!(line.len() <= MAX_PAYLOAD);
            assert!(
                c.challenge.len() == 64
                    && c.challenge.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert!(auth::check_directory_id(&c.directory_id).is_ok());
            assert_eq!(parse_challenge(&encode_challenge(&c)).as_ref(), Ok(&c));
        }
        Err(r) => refusal_is_short(&r.why),
    }
}

/// An 805: what parses encodes and parses back the same, and never
/// verifies (for its own key's nick) a challenge it was not made for.
fn proof(line: &str) {
    match parse_proof(line) {
        Ok(p) => {
            assert!(line.len() <= MAX_PAYLOAD);
            assert_eq!(parse_proof(&encode_proof(&p)).as_ref(), Ok(&p));
            let nick = auth::nick_from_pubkey(&p.pubkey);
            if verify(&"0".repeat(64), "dir", "{}", &nick, &p).is_ok() {
                panic!("a proof from the input verified a challenge it never saw: {p:?}");
            }
        }
        Err(r) => refusal_is_short(&r.why),
    }
}

/// An 807: what parses encodes and parses back the same.
fn result(line: &str) {
    match parse_result(line) {
        Ok(code) => assert_eq!(parse_result(&encode_result(code)), Ok(code)),
        Err(r) => refusal_is_short(&r.why),
    }
}

/// A key from the input signs a challenge from the input: the proof
/// verifies for exactly that challenge, directory id, 793 line and nick,
/// and changing any one byte of the transcript or the proof is refused.
fn signed(input: &mut Input<'_>) {
    let secret: [u8; 32] = input.array();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let Ok(identity) = Identity::from_hex(&hex) else { return }; // zero or past the group order
    let challenge: String = input.array::<32>().iter().map(|b| format!("{b:02x}")).collect();
    let directory_id = {
        let id: String = input.string(40).chars().filter(|c| c.is_ascii_graphic() && *c != '|').collect();
        if id.is_empty() { "dir.example:5222".to_owned() } else { id }
    };
    let line = input.string(200);
    let which = input.u16();
    let flip = input.u8() | 1; // never zero: the byte really changes
    let proof = identity.sign(&challenge, &directory_id, &line);
    assert_eq!(parse_proof(&encode_proof(&proof)).as_ref(), Ok(&proof));
    verify(&challenge, &directory_id, &line, identity.nick(), &proof).expect("our own proof verifies");

    // One byte changed anywhere: refused. ASCII stays ASCII (the hex and
    // base64 fields, the challenge); the line may become any bytes.
    let mutate = |s: &str| -> Option<String> {
        if s.is_empty() {
            return None;
        }
        let mut bytes = s.as_bytes().to_vec();
        let i = usize::from(which) % bytes.len();
        bytes[i] = (bytes[i] ^ flip) & 0x7f;
        if bytes[i] == 0 || bytes == s.as_bytes() {
            return None;
        }
        String::from_utf8(bytes).ok()
    };
    let nick = identity.nick();
    let refused = |c: &str, d: &str, l: &str, n: &str, p: &Proof| assert!(verify(c, d, l, n, p).is_err());
    if let Some(c) = mutate(&challenge) {
        refused(&c, &directory_id, &line, nick, &proof);
    }
    if let Some(d) = mutate(&directory_id) {
        refused(&challenge, &d, &line, nick, &proof);
    }
    if let Some(l) = mutate(&line) {
        refused(&challenge, &directory_id, &l, nick, &proof);
    }
    if let Some(n) = mutate(nick) {
        refused(&challenge, &directory_id, &line, &n, &proof);
    }
    if let Some(pubkey) = mutate(&proof.pubkey) {
        refused(
            &challenge,
            &directory_id,
            &line,
            nick,
            &Proof { pubkey, signature: proof.signature.clone() },
        );
    }
    if let Some(signature) = mutate(&proof.signature) {
        refused(&challenge, &directory_id, &line, nick, &Proof { pubkey: proof.pubkey.clone(), signature });
    }
}
