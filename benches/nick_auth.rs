//! What nick authentication (JMP-0005) costs the hub's I/O thread per
//! client, and a client per proof:
//!
//! - `nick_auth/parse_and_verify`: [`auth::parse_proof`] and
//!   [`auth::verify_hashed`] of one valid proof, as the hub does on an 805
//!   (SHA-256 of the nick, DER and base64 checks, one libsecp256k1 ECDSA
//!   verification).
//! - `nick_auth/refuse_bad_signature`: the same with the last signature
//!   byte changed: a forger costs as much as an honest client.
//! - `nick_auth/sign`: [`Identity::sign`] of one challenge (the client).
//! - `nick_auth/challenge`: [`auth::random_challenge`] (32 bytes from
//!   `/dev/urandom`).

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use criterion::{Criterion, criterion_group, criterion_main};
use heartbeat::peer::auth::{self, Identity};
use heartbeat::peer::wire::{self, Location};

fn bench(c: &mut Criterion) {
    let me = Identity::generate().unwrap();
    let hello = wire::client_handshake_with(me.nick(), "regtest", &Location::Taker, true, true);
    let line_hash = auth::line_hash(&hello);
    let challenge = auth::random_challenge().unwrap();
    let id = "fnsmnwnp3cru5ug36npx3ylrvcbfuugz6qxql2mp4ky23xyavnclopad.onion:5222";
    let proof = me.sign(&challenge, id, &hello);
    let line = auth::encode_proof(&proof);
    // The last byte of S changed, re-encoded canonically: well-formed, and wrong.
    let mut der = BASE64.decode(&proof.signature).unwrap();
    *der.last_mut().unwrap() ^= 1;
    let forged = auth::Proof { signature: BASE64.encode(&der), ..proof.clone() };
    let refusal = auth::verify_hashed(&challenge, id, &line_hash, me.nick(), &forged).unwrap_err();
    assert_eq!(refusal.code, auth::Code::Invalid, "{refusal}");
    let forged_line = auth::encode_proof(&forged);

    let mut group = c.benchmark_group("nick_auth");
    group.bench_function("parse_and_verify", |b| {
        b.iter(|| {
            let proof = auth::parse_proof(black_box(&line)).unwrap();
            auth::verify_hashed(&challenge, id, &line_hash, me.nick(), &proof).unwrap();
        })
    });
    group.bench_function("refuse_bad_signature", |b| {
        b.iter(|| {
            let proof = auth::parse_proof(black_box(&forged_line)).unwrap();
            assert!(auth::verify_hashed(&challenge, id, &line_hash, me.nick(), &proof).is_err());
        })
    });
    group.bench_function("sign", |b| b.iter(|| me.sign(black_box(&challenge), id, &hello)));
    group.bench_function("challenge", |b| b.iter(|| auth::random_challenge().unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
