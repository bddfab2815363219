//! Differential checks of the fast paths against their references, shared by the proptests
//! (`tests/fast_paths.rs`) and the fuzz target `fast_paths`. Not part of the API.
//!
//! Every check panics when the fast path and the reference give different results: the
//! `Result` of [`crate::cbor::decode_strict`] and [`crate::cbor::decode_strict_reference`],
//! of [`Event::decode`] and [`Event::decode_reference`], and of [`Unverified::parse`] and
//! [`Unverified::parse_reference`] (followed by `verify` with the kid's key and with a wrong
//! key, and by the rest of `open_event`).

use crate::cbor::{decode_strict, decode_strict_reference};
use crate::envelope::{seal_payload, EnvelopeError, Unverified};
use crate::event::{Event, MAX_EVENT_SIZE};
use crate::ids::Kid;
use crate::keys::Key;
use crate::vectors::{root, sample_events};
use coset::{CoseMac0, MacContext, TaggedCborSerializable};

fn key_of(kid: &Kid) -> Key {
    root().derive(kid)
}

/// Compares the strict CBOR decoders and the event decoders on `data`, under the normal limit
/// and under one a byte too small.
pub fn check_payload(data: &[u8]) {
    for limit in [MAX_EVENT_SIZE, data.len().saturating_sub(1)] {
        assert_eq!(
            decode_strict(data, limit),
            decode_strict_reference(data, limit),
            "decode_strict differs, limit {limit}, input {data:02x?}"
        );
        assert_eq!(
            Event::decode(data, limit),
            Event::decode_reference(data, limit),
            "Event::decode differs, limit {limit}, input {data:02x?}"
        );
    }
}

/// What a parsed envelope gives: its kid, then `verify` with the kid's key, then `verify` with
/// another key (each on its own copy: `verify` consumes).
type Opened = (Kid, Result<(Kid, Vec<u8>), EnvelopeError>);

fn summary(
    data: &[u8],
    limit: usize,
    parse: fn(&[u8], usize) -> Result<Unverified, EnvelopeError>,
) -> Result<(Opened, Opened), EnvelopeError> {
    let right = parse(data, limit)?;
    let kid = right.kid().clone();
    let key = key_of(&kid);
    let wrong_key = root().derive(&Kid::broker());
    let wrong = parse(data, limit).expect("parsing twice gives the same result");
    Ok((
        (right.kid().clone(), right.verify(&key)),
        (wrong.kid().clone(), wrong.verify(&wrong_key)),
    ))
}

/// `open_event` with the reference parser and decoder.
fn open_reference(data: &[u8]) -> Result<Event, EnvelopeError> {
    let u = Unverified::parse_reference(data, MAX_EVENT_SIZE)?;
    let key = key_of(u.kid());
    let (kid, payload) = u.verify(&key)?;
    let event = Event::decode_reference(&payload, MAX_EVENT_SIZE)?;
    if event.src != kid {
        return Err(EnvelopeError::KidMismatch {
            kid,
            src: event.src,
        });
    }
    event.check_signer()?;
    Ok(event)
}

/// Compares the envelope parsers on `data` (and on `data` re-tagged with the right MAC when
/// it is structurally a COSE_Mac0 ending in its 32-byte tag).
pub fn check_envelope(data: &[u8]) {
    check_envelope_once(data);
    if let Some(fixed) = retagged(data) {
        check_envelope_once(&fixed);
    }
}

fn check_envelope_once(data: &[u8]) {
    for limit in [MAX_EVENT_SIZE, data.len().saturating_sub(1)] {
        assert_eq!(
            summary(data, limit, Unverified::parse),
            summary(data, limit, Unverified::parse_reference),
            "Unverified::parse differs, limit {limit}, input {data:02x?}"
        );
    }
    assert_eq!(
        crate::open_event(data, MAX_EVENT_SIZE, |k| Some(key_of(k))),
        open_reference(data),
        "open_event differs, input {data:02x?}"
    );
}

/// `data` with its last 32 bytes replaced by the right tag for its kid, when coset reads it as
/// a COSE_Mac0 with a kid, a payload and a 32-byte tag at the end.
fn retagged(data: &[u8]) -> Option<Vec<u8>> {
    let mac0 = CoseMac0::from_tagged_slice(data).ok()?;
    if mac0.tag.len() != 32 || !data.ends_with(&mac0.tag) {
        return None;
    }
    let kid = Kid::parse(std::str::from_utf8(&mac0.protected.header.key_id).ok()?).ok()?;
    let tbm = coset::mac_structure_data(
        MacContext::CoseMac0,
        mac0.protected.clone(),
        &[],
        mac0.payload.as_deref()?,
    );
    let tag = key_of(&kid).mac(&[&tbm]);
    let mut fixed = data.to_vec();
    let n = fixed.len();
    fixed[n - 32..].copy_from_slice(&tag);
    Some(fixed)
}

/// Applies edits read three bytes at a time from `ops` (operation, position, byte): replace,
/// insert, delete or XOR one byte.
pub fn mutate(mut bytes: Vec<u8>, ops: &[u8]) -> Vec<u8> {
    for op in ops.chunks_exact(3) {
        let (what, at, val) = (op[0], op[1] as usize, op[2]);
        if bytes.is_empty() {
            bytes.push(val);
            continue;
        }
        let i = at % bytes.len();
        match what % 4 {
            0 => bytes[i] = val,
            1 => bytes.insert(i, val),
            2 => {
                bytes.remove(i);
            }
            _ => bytes[i] ^= val,
        }
    }
    bytes
}

/// Everything on `data` as it is, then on mutations of a valid sample (chosen by the first
/// byte, mutated by the rest): its payload, the payload sealed with the right key (so that the
/// MAC verifies and the payload decoders run), and the sealed envelope itself (re-tagged).
pub fn check_all(data: &[u8]) {
    check_payload(data);
    check_envelope(data);
    let Some((&pick, ops)) = data.split_first() else {
        return;
    };
    static SAMPLES: std::sync::OnceLock<Vec<Event>> = std::sync::OnceLock::new();
    let samples = SAMPLES.get_or_init(sample_events);
    let event = &samples[pick as usize % samples.len()];
    check_mutated_event(event, ops);
}

/// The mutated payload of `event`, sealed; and the mutated envelope of `event`.
pub fn check_mutated_event(event: &Event, ops: &[u8]) {
    let key = key_of(&event.src);
    let payload = mutate(event.encode(), ops);
    check_payload(&payload);
    check_envelope(&seal_payload(&event.src, &key, payload));
    check_envelope(&mutate(crate::seal(event, &key), ops));
}
