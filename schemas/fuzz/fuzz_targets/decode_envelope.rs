//! Feeds arbitrary bytes to every decoder of pairbus-schemas that reads network input and checks
//! the "one encoding only" invariants: whatever a decoder accepts, the matching encoder gives
//! back byte for byte. Any panic (in the decoders or in the checks below) is a finding.
//!
//! A random input almost never carries a valid MAC, so when the bytes parse as a COSE_Mac0 the
//! target also recomputes the tag with the kid's key and opens the re-tagged envelope: that
//! takes the fuzzer past the MAC into payload decoding and the signer rules.

#![no_main]

use coset::{CoseMac0, MacContext, TaggedCborSerializable};
use libfuzzer_sys::fuzz_target;
use pairbus_schemas::envelope::seal_payload;
use pairbus_schemas::messages::{Checkpoint, Committed, Rejection, ReplayEnd, ReplayRequest};
use pairbus_schemas::qr::{encode_qr, verify_qr, QR_PREFIX};
use pairbus_schemas::record::MAX_RECORD_SIZE;
use pairbus_schemas::vectors::{root, T0_MS};
use pairbus_schemas::{
    open_event, seal, EnvelopeError, Event, Key, Kid, Record, Topic, Unverified, MAX_EVENT_SIZE,
};

/// The key of any kid, derived from the vectors' root secret.
fn key_of(kid: &Kid) -> Key {
    root().derive(kid)
}

fn key_for(kid: &Kid) -> Option<Key> {
    Some(key_of(kid))
}

/// "Now" for QR expiry checks: the vectors' time.
const NOW_S: u64 = T0_MS / 1000;

/// An opened event must be exactly what `seal` makes of it.
fn check_opened(event: &Event, input: &[u8]) {
    event
        .check_signer()
        .expect("open_event returned an event its signer may not make");
    let again = seal(event, &key_of(&event.src));
    assert!(
        again == input,
        "open_event accepted an envelope that seal does not reproduce:\n input {}\n seal  {}",
        hex(input),
        hex(&again)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The input with its tag replaced by the right one for its kid, when it is structurally a
/// pairbus envelope whose 32-byte tag is its last 32 bytes.
fn retagged(data: &[u8], kid: &Kid) -> Option<Vec<u8>> {
    let mac0 = CoseMac0::from_tagged_slice(data).ok()?;
    if mac0.tag.len() != 32 || !data.ends_with(&mac0.tag) {
        return None;
    }
    let tbm = coset::mac_structure_data(
        MacContext::CoseMac0,
        mac0.protected.clone(),
        &[],
        mac0.payload.as_deref()?,
    );
    let tag = key_of(kid).mac(&[&tbm]);
    let mut fixed = data.to_vec();
    let n = fixed.len();
    fixed[n - 32..].copy_from_slice(&tag);
    Some(fixed)
}

fn envelope(data: &[u8]) {
    match open_event(data, MAX_EVENT_SIZE, key_for) {
        Ok(event) => check_opened(&event, data),
        Err(e) => {
            let _ = (e.to_string(), e.reason());
        }
    }

    let Ok(unverified) = Unverified::parse(data, MAX_EVENT_SIZE) else {
        return;
    };
    let kid = unverified.kid().clone();
    let Some(fixed) = retagged(data, &kid) else {
        return;
    };
    // A structurally valid envelope with the right tag: it must verify, and the envelope alone
    // (whatever the payload) must be the one encoding `seal_payload` makes.
    let (kid2, payload) = Unverified::parse(&fixed, MAX_EVENT_SIZE)
        .expect("re-tagging broke the structure")
        .verify(&key_of(&kid))
        .expect("the recomputed tag does not verify");
    assert_eq!(kid, kid2);
    let again = seal_payload(&kid, &key_of(&kid), payload);
    assert!(
        again == fixed,
        "Unverified::parse accepted an envelope that seal_payload does not reproduce:\n input {}\n seal  {}",
        hex(&fixed),
        hex(&again)
    );
    match open_event(&fixed, MAX_EVENT_SIZE, key_for) {
        Ok(event) => check_opened(&event, &fixed),
        Err(e @ (EnvelopeError::BadMac(_) | EnvelopeError::UnknownKid(_))) => {
            panic!("a correctly tagged envelope was refused: {e}")
        }
        Err(_) => {}
    }
    // The same envelope as a factory QR code.
    qr(&format!("{QR_PREFIX}{}", base45::encode(&fixed)));
}

fn qr(text: &str) {
    if let Ok(v) = verify_qr(text, NOW_S, key_for) {
        let again = encode_qr(&v.claims, &v.factory, &key_of(&v.factory));
        assert!(
            again == text,
            "verify_qr accepted a code encode_qr does not reproduce:\n input {text}\n again {again}"
        );
    }
}

fn payloads(data: &[u8]) {
    if let Ok(event) = Event::decode(data, MAX_EVENT_SIZE) {
        assert!(
            event.encode() == data,
            "Event::decode accepted a payload Event::encode does not reproduce: {}",
            hex(data)
        );
        let _ = event.check_signer();
    }
    if let Ok(record) = Record::decode(data, MAX_RECORD_SIZE) {
        assert!(record.encode() == data, "record does not round-trip");
        let _ = record.hash_is_valid();
    }
    if let Ok(c) = Committed::decode(data) {
        assert!(c.encode() == data, "committed does not round-trip");
    }
    if let Ok(c) = Checkpoint::decode(data) {
        assert!(c.encode() == data, "checkpoint does not round-trip");
    }
    if let Ok(e) = ReplayEnd::decode(data) {
        assert!(e.encode() == data, "replay end does not round-trip");
    }
    let _ = serde_json::from_slice::<Rejection>(data);
    let _ = serde_json::from_slice::<ReplayRequest>(data);
}

fn texts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    qr(text);
    if let Ok(t) = Topic::parse(text) {
        assert_eq!(t.to_string(), text, "topic does not round-trip");
    }
    let _ = Kid::parse(text).map(|k| assert_eq!(k.to_string(), text));
}

fuzz_target!(|data: &[u8]| {
    envelope(data);
    payloads(data);
    texts(data);
});
